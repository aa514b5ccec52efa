"""The warm worker (dyncim.warm): a step run in a child forked from it writes exactly what a fresh
`python -m dyncim` writes; Snakemake's way of killing a job still kills the step; wherever the
worker cannot stand in for a fresh process, the step runs in its own, as before."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dyncim import cli, warm
from tests.conftest import REPO


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small synthetic set (split and features made in this process) and its params."""
    root = tmp_path_factory.mktemp("warm")
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["seeds"] = [0]
    p["train"].update(epochs=3, hidden=[8])
    p["datasets"]["bi"] = {"source": "synthetic", "synthetic": {
        "modalities": ["dominant", "xor"], "per_class": 10, "dominant": {"dim": 12}}}
    for m in p["methods"].values():
        m.pop("seeds", None)
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    common = ["--data", "bi", "--params", str(root / "params.yaml")]
    assert cli.main(["split", *common, "--out", str(root / "s.csv")]) == 0
    assert cli.main(["feature-file", *common, "--split", str(root / "s.csv"), "--out", str(root / "f.pt")]) == 0
    return root


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A worker serving this module's tests; its socket path and log."""
    folder = tmp_path_factory.mktemp("sock")
    path, log = str(folder / "s"), folder / "warm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dyncim.warm", "--socket", path, "--idle", "300"],
                                cwd=REPO, stdout=out, stderr=out, env=_env())
    for _ in range(600):
        if os.path.exists(path) or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert os.path.exists(path), log.read_text()
    yield path, log
    proc.terminate()
    proc.wait(30)
    assert not os.path.exists(path)   # it removes its socket


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != warm.ENV}
    env.update(extra)
    return env


def _train(tiny, tag, *, sock=None, epochs=None, wait=True, **env):
    cmd = [sys.executable, "-m", "dyncim", "train", "--data", "bi", "--method", "dyncim",
           "--data-file", str(tiny / "f.pt"), "--root", str(tiny / tag), "--params", str(tiny / "params.yaml")]
    if epochs is not None:
        p = yaml.safe_load((tiny / "params.yaml").read_text())
        p["train"]["epochs"] = epochs
        (tiny / f"{tag}.yaml").write_text(yaml.safe_dump(p))
        cmd[-1] = str(tiny / f"{tag}.yaml")
    log = open(tiny / f"{tag}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log,
                            env=_env(**({warm.ENV: sock} if sock else {}), **env))
    if wait:
        proc.wait(300)
    return proc


def _served(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if ": train in " in line]


def _same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)   # bit for bit
    else:
        assert a == b, where


def test_a_step_run_by_the_worker_equals_a_fresh_process(tiny, worker):
    sock, log = worker
    before = len(_served(log))
    fresh = _train(tiny, "fresh")
    warm_ = _train(tiny, "warm", sock=sock)
    assert fresh.returncode == 0 and warm_.returncode == 0, (tiny / "warm.log").read_text()[-2000:]
    assert len(_served(log)) == before + 1   # the worker ran it
    # the step's own output reached the file its stdout/stderr were redirected to
    assert "best.pt" in (tiny / "warm.log").read_text()
    run = Path("models/bi/dyncim/seed0")
    for name in ("best.pt", "last.pt"):
        a = torch.load(tiny / "fresh" / run / name, weights_only=False, map_location="cpu")
        b = torch.load(tiny / "warm" / run / name, weights_only=False, map_location="cpu")
        _same(a, b, name)


def test_signals_reach_the_step_and_a_vanished_client_takes_it_along(tiny, worker):
    sock, log = worker
    for sig in (signal.SIGTERM, signal.SIGKILL):
        tag = f"killed-{sig.name}"
        n = len(_served(log))
        proc = _train(tiny, tag, sock=sock, epochs=100000, wait=False)
        for _ in range(300):   # until the worker has forked the step
            if len(_served(log)) > n:
                break
            time.sleep(0.1)
        child = int(_served(log)[-1].split("pid ")[1].split(":")[0])
        time.sleep(0.5)
        proc.send_signal(sig)
        proc.wait(30)
        assert proc.returncode == -sig   # the client dies as the step did (SIGTERM) or was killed
        for _ in range(100):
            if f"pid {child}: exit status" in log.read_text():
                break
            time.sleep(0.1)
        assert f"pid {child}: exit status -{int(signal.SIGTERM)}" in log.read_text()
        if sig == signal.SIGKILL:
            assert f"pid {child}: its client went away" in log.read_text()


def _usage(**env):
    """`python -m dyncim report-md --help` (a step the worker serves; cheap where it does not)."""
    return subprocess.run([sys.executable, "-m", "dyncim", "report-md", "--help"], cwd=REPO,
                          capture_output=True, text=True, env=_env(**env), timeout=120)


def test_where_the_worker_cannot_stand_in_the_step_runs_in_its_own_process(tmp_path, worker):
    sock, log = worker
    served = _usage(**{warm.ENV: sock})
    assert served.returncode == 0 and "usage: dyncim report-md" in served.stdout
    assert log.read_text().count(": report-md in ") == 1
    # another value of a variable torch reads when imported: refused, run by the client itself
    other = _usage(**{warm.ENV: sock, "OMP_NUM_THREADS": "3"})
    assert other.returncode == 0 and "usage: dyncim report-md" in other.stdout
    assert "refused ['report-md']: differs in ['env OMP_NUM_THREADS']" in log.read_text()
    # no worker at that path, or the worker switched off
    for where in (str(tmp_path / "nothing-here"), "0"):
        alone = _usage(**{warm.ENV: where})
        assert alone.returncode == 0 and "usage: dyncim report-md" in alone.stdout
    assert log.read_text().count(": report-md in ") == 1
    # steps that start process pools of their own are never offered
    assert warm.delegate(["extract", "--help"]) is None and warm.delegate(["media"]) is None


def test_the_worker_leaves_when_its_parent_has_gone(tmp_path):
    parent = subprocess.Popen(["sleep", "600"])
    path = str(tmp_path / "sock" / "s")
    (tmp_path / "sock").mkdir()
    w = subprocess.Popen([sys.executable, "-m", "dyncim.warm", "--socket", path, "--parent", str(parent.pid),
                          "--preload", "json"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    for _ in range(600):
        if os.path.exists(path):
            break
        time.sleep(0.2)
    parent.kill()
    parent.wait()
    # the worker's own parent is this test process, not `parent`: it watches the pid it was given
    out, _ = w.communicate(timeout=60)
    assert w.returncode == 0 and b"has gone: exiting" in out
    assert not (tmp_path / "sock").exists()
