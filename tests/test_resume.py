"""A training run killed at any point continues from its checkpoint and ends as if never killed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from dyncim import paths
from tests.conftest import REPO, copy_repo, venv_env


def tiny(root, epochs=60):
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["seeds"] = [0]
    p["train"].update(epochs=epochs, hidden=[16], checkpoint_every=2, lr_step=0)
    p["datasets"] = {"syn": {"source": "synthetic", "synthetic": {
        "modalities": ["dominant", "xor"], "per_class": 40, "dominant": {"dim": 32},
        "corrupt": [{"modality": 0, "kind": "misleading", "fraction": 0.2}]}}}
    p["methods"] = {"dyncim": {**p["methods"]["dyncim"], "seeds": [0]}}
    p["run"] = {"datasets": ["syn"], "methods": ["dyncim"]}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def cli(*args, root):
    return [sys.executable, "-m", "dyncim", *args, "--params", str(root / "params.yaml")]


def prepare(root):
    tiny(root)
    for cmd in (cli("split", "--data", "syn", "--out", str(root / "split.csv"), root=root),
                cli("feature-file", "--data", "syn", "--split", str(root / "split.csv"), "--out",
                    str(root / "f.pt"), root=root)):
        subprocess.run(cmd, check=True, env=venv_env())


def train_cmd(root):
    return cli("train", "--data", "syn", "--method", "dyncim", "--data-file", str(root / "f.pt"),
               "--root", str(root), root=root)


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, "finished before it could be killed: make the run longer"
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    prepare(a), prepare(b)
    subprocess.run(train_cmd(a), check=True, env=venv_env(), capture_output=True)

    proc = subprocess.Popen(train_cmd(b), env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = b / "models/syn/dyncim/seed0/last.pt"
    wait_for(ckpt, proc)
    time.sleep(0.1)  # somewhere inside a later epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (b / "models/syn/dyncim/manifest.json").exists()
    killed_at = torch.load(ckpt, weights_only=False)["epoch"]  # loads: never half-written
    assert 0 < killed_at < 60
    (ckpt.parent / ".last.pt.stale.tmp").write_bytes(b"x")  # as a kill during a checkpoint write leaves

    rerun = subprocess.run(train_cmd(b), env=venv_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed from" in rerun.stderr and "at epoch" in rerun.stderr
    assert not list(ckpt.parent.glob(".*.tmp"))
    sa = torch.load(a / "models/syn/dyncim/seed0/best.pt", weights_only=False)
    sb = torch.load(b / "models/syn/dyncim/seed0/best.pt", weights_only=False)
    assert sa["parts"][0]["best_epoch"] == sb["parts"][0]["best_epoch"]
    for k, v in sa["parts"][0]["state"].items():
        assert torch.equal(v, sb["parts"][0]["state"][k]), k
    la = torch.load(a / "models/syn/dyncim/seed0/last.pt", weights_only=False)
    lb = torch.load(ckpt, weights_only=False)
    assert la["history"] == lb["history"]
    # DynCIM's per-sample memory, bit for bit (NaN marks the samples training never visits)
    torch.testing.assert_close(la["method"]["mem"], lb["method"]["mem"], rtol=0, atol=0, equal_nan=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny pipeline up to evaluation, never killed: both tools' killed runs must end like it."""
    ref = copy_repo(tmp_path_factory.mktemp("ref") / "repo")
    tiny(ref)
    subprocess.run(["snakemake", "evaluate_all", "--cores", "1"], cwd=ref, check=True, env=venv_env(),
                   capture_output=True)
    return ref


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["snakemake", "dvc"])
def test_pipeline_killed_then_rerun_finishes_with_the_same_metrics(uninterrupted, tmp_path, tool):
    ref, run = uninterrupted, copy_repo(tmp_path / "run")
    tiny(run)
    if tool == "dvc":
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
            subprocess.run(cmd, cwd=run, check=True, env=venv_env())
    # up to evaluation: what follows reads the evaluation files only
    cmd = ["snakemake", "evaluate_all", "--cores", "1"] if tool == "snakemake" else ["dvc", "repro", "evaluate"]

    proc = subprocess.Popen(cmd, cwd=run, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_for(run / "models/syn/dyncim/seed0/last.pt", proc, timeout=300)
    time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    evaluated = run / paths.eval_file("syn", "dyncim", 0)
    assert not evaluated.exists()

    again = subprocess.run(cmd, cwd=run, env=venv_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # the training job's own output goes to its log file (the rule's `log:`), which the rerun rewrote
    assert "resumed from" in (run / paths.log_file("train", "syn", "dyncim")).read_text()
    ra = json.loads((ref / paths.eval_file("syn", "dyncim", 0)).read_text())
    rb = json.loads(evaluated.read_text())
    assert ra == rb
