"""The offline GPU check's dry mode (`bash .ci/gpu-check --dry`): every part at tiny size on the
CPU, through the same front door a GPU node uses (its own python, nothing carried here since this
venv holds every package), each part's figures in the output folder."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from dyncim.bench import gpu_check
from tests.conftest import REPO, venv_env


def check(tmp_path, *args, timeout=600):
    out = tmp_path / "out"
    env = {**venv_env(), "PYTHON": sys.executable, "GPU_WHEELS": str(tmp_path / "no-wheels"),
           "GPU_CHECK_OUT": str(out)}
    r = subprocess.run(["bash", str(REPO / ".ci" / "gpu-check"), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return r, out


@pytest.mark.slow
def test_dry_mode_runs_every_part_and_leaves_its_figures(tmp_path):
    r, out = check(tmp_path, "--dry")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + (out / "check.log").read_text()[-3000:]
    summary = json.loads((out / "check.json").read_text())
    assert list(summary["parts"]) == [p for p, *_ in gpu_check.PARTS]
    assert all(p["status"] == "ok" for p in summary["parts"].values()), summary["parts"]
    assert summary["machine"]["torch"] == torch.__version__ and summary["machine"]["cuda"] is False
    assert "GPU check:" in r.stdout and '"torch"' in r.stdout          # it says what it found
    # the files a GPU node's run brings back: at most 8 (the device tool's limit)
    assert len(list(out.iterdir())) <= 8
    pre = json.loads((out / "preflight.json").read_text())
    assert pre["carried_problems"] == [] and pre["snakemake"].startswith("9.")
    assert pre["embedded_dry_run_jobs"]["train"] > 0
    tests = json.loads((out / "tests.json").read_text())
    assert tests["device"] == "cpu" and tests["failed"] == [] and tests["passed"] >= 15
    assert any("cuda" in s for s in tests["skipped"])                  # the CUDA tests exist, skipped here
    bench = json.loads((out / "bench.json").read_text())
    assert {(row["method"], row["amp"]) for row in bench["epochs"]} == \
        {("joint", "auto"), ("dyncim", "auto"), ("joint", "off"), ("dyncim", "off")}
    assert all(row["samples_per_s"] > 0 for row in bench["epochs"])
    share = json.loads((out / "share.json").read_text())
    assert [s["k"] for s in share["share"]] == [1, 2] and all("error" not in s for s in share["share"])
    assert all(s["aggregate_samples_per_s"] > 0 and len(s["jobs"]) == s["k"] for s in share["share"])
    pipe = json.loads((out / "pipeline.json").read_text())
    assert pipe["runs"]["joint"]["trained_on"] == "cpu" and pipe["report"] is True
    assert sum(pipe["clips"].values()) == 12 and 0 <= pipe["runs"]["joint"]["test_acc"] <= 1
    emb = json.loads((out / "embedded.json").read_text())
    assert emb["gpu_visible"]["dry_run_jobs"] == emb["gpu_hidden"]["dry_run_jobs"]


def test_a_part_past_its_time_box_is_stopped_and_the_later_ones_wait_for_time(tmp_path):
    t0 = time.perf_counter()
    r, out = check(tmp_path, "--dry", "--parts", "pipeline", "embedded", "--budget", "9")
    wall = time.perf_counter() - t0
    summary = json.loads((out / "check.json").read_text())
    assert r.returncode == 1
    assert summary["parts"]["pipeline"]["status"] == "timed out"
    assert summary["parts"]["embedded"]["status"] == "skipped"
    assert wall < 40, wall                         # the pipeline's snakemake did not run on
    assert "pipeline: timed out" in r.stdout


def test_a_torch_older_than_the_oldest_supported_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "__version__", "2.1.2+cu118")
    assert gpu_check.main(["--dry", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "torch 2.1.2+cu118 is older than 2.3" in err
    assert not (tmp_path / "check.json").exists()


def test_without_git_the_checkout_is_copied_without_its_outputs(tmp_path, monkeypatch):
    """A GPU node's copy of the checkout may have no git: the copy then walks the folder."""
    real = subprocess.run

    def no_git(cmd, *a, **k):
        if cmd[0] == "git":
            raise FileNotFoundError("git")
        return real(cmd, *a, **k)
    monkeypatch.setattr(subprocess, "run", no_git)
    dest = gpu_check.copy_repo(tmp_path / "copy")   # dyncim.bench.timings.copy_repo
    assert (dest / "Snakefile").is_file() and (dest / "dyncim" / "bench" / "gpu_check.py").is_file()
    for name in ("models", "results", ".venv", ".git", ".snakemake"):
        assert not (dest / name).exists(), name
    assert os.path.getsize(dest / "params.yaml") == os.path.getsize(REPO / "params.yaml")
