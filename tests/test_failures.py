"""Bad inputs and failing steps: clear errors, and no output a rerun would take as done."""
import re
import subprocess
import sys

import pytest
import torch
import yaml

from dyncim.evaluation.evaluate import load_run
from dyncim.train.job import train_seed
from tests.conftest import REPO, copy_repo, tiny_features, venv_env
from tests.test_pipeline import job_counts, snakemake, user_given_mfeat


def test_evaluating_a_checkpoint_with_other_features_is_a_clear_error(tmp_path):
    from dyncim import config as C
    params = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["train"].update(epochs=1, hidden=[8])
    feats = tiny_features(n=60, dims=(5, 4))
    path = train_seed(C.train_job(params, "mfeat-pix-zer", "joint"), "mfeat-pix-zer", "joint", 0, feats, tmp_path,
                      torch.device("cpu"))
    with pytest.raises(ValueError, match=r"input sizes \[5, 4\].*\[6, 4\]"):
        load_run(path, tiny_features(n=60, dims=(6, 4)), "cpu")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        load_run(path, feats, "cpu")


def test_cli_reports_bad_inputs_with_exit_code_2(tmp_path):
    bad = tmp_path / "f.pt"
    bad.write_bytes(b"not a torch file")
    r = subprocess.run([sys.executable, "-m", "dyncim", "train", "--data", "mfeat-pix-zer", "--method", "joint",
                        "--data-file", str(bad), "--params", str(REPO / "params.yaml")],
                       capture_output=True, text=True, env=venv_env())
    assert r.returncode == 2 and "f.pt: not a readable feature file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dyncim", "train", "--data", "nope", "--method", "joint",
                        "--data-file", str(bad), "--params", str(REPO / "params.yaml")],
                       capture_output=True, text=True, env=venv_env())
    assert r.returncode == 2 and "--data 'nope': not defined" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dyncim", "train", "--job", "{not json", "--data-file", str(bad)],
                       capture_output=True, text=True, env=venv_env())
    assert r.returncode == 2 and "dyncim train: error: --job: not valid JSON" in r.stderr


@pytest.mark.slow
def test_failing_steps_leave_no_output_and_name_the_run(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    user_given_mfeat(repo)
    # a truncated raw file: the split and feature-file steps fail, naming the file, and leave no output
    csv = repo / "data/raw/mfeat/mfeat-mor.csv"
    good = csv.read_bytes()
    csv.write_bytes(b"".join(good.splitlines(keepends=True)[:1001]))  # the header and 1000 rows
    r = snakemake(repo, "data/features/mfeat-fou-mor.pt", ok=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "mfeat-mor.csv: shape (1000, 7), expected (2000, 7)" in out
    assert "log: logs/split/mfeat.log" in out  # the failed job's message points at its log
    assert "mfeat-mor.csv: shape (1000, 7)" in (repo / "logs/split/mfeat.log").read_text()
    assert not (repo / "data/features/mfeat-fou-mor.pt").exists()
    assert not (repo / "data/splits/mfeat.csv").exists()
    assert not [p for p in (repo / "data").rglob("*") if p.name.endswith(".tmp")]
    csv.write_bytes(good)
    # a diverging run: stopped with data set, method, seed, epoch and step; no manifest left
    target = "models/synthetic-bi/joint/manifest.json"
    r = snakemake(repo, target, "--config", "methods={joint: {train: {lr: 1.0e12}}}", ok=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "log: logs/train/synthetic-bi/joint.log" in out
    assert re.search(r"data=synthetic-bi method=joint seed=0: non-finite loss at epoch \d+, step \d+", out)
    assert not (repo / "models/synthetic-bi/joint/manifest.json").exists()
    dry = snakemake(repo, target, "-n", "--config", "methods={joint: {train: {lr: 1.0e12}}}")
    assert job_counts(dry.stdout + dry.stderr).get("train") == 1  # not taken as done
