"""The real `snakemake` and `dvc` commands on a tiny configuration in a temp copy of the repo."""
import json
import subprocess

import numpy as np
import pytest
import yaml

from dyncim.data.mfeat import DIMS
from tests.conftest import copy_repo, venv_env


def tiny_params(repo):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["seeds"] = [0, 1]
    p["train"].update(epochs=2, hidden=[8])
    p["datasets"] = {
        "mfeat-fou-mor": {"source": "mfeat", "views": ["fou", "mor"]},
        "synthetic-bi": {"source": "synthetic", "synthetic": {
            "modalities": ["dominant", "xor"], "per_class": 20, "dominant": {"dim": 16},
            "corrupt": [{"modality": 0, "kind": "misleading", "fraction": 0.2}]}},
    }
    p["methods"] = {"joint": {"type": "joint"}, "unimodal": {"type": "unimodal"}}
    p["run"] = {"datasets": ["mfeat-fou-mor", "synthetic-bi"], "methods": ["joint", "unimodal"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return p


def user_given_mfeat(repo):
    """Raw mfeat files in their real layout, as a user who brings them would place them."""
    raw = repo / "data" / "raw" / "mfeat"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 200)
    for view, d in DIMS.items():
        x = rng.normal(size=(2000, d)) + labels[:, None] * 0.3
        np.savetxt(raw / f"mfeat-{view}.csv", np.column_stack([x, labels]), delimiter=",", fmt="%.4g",
                   header=",".join(map(str, range(d + 1))), comments="")


def run(cmd, repo, ok=True):
    r = subprocess.run(cmd, cwd=repo, env=venv_env(), capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def job_counts(output: str) -> dict:
    """The 'Job stats' table of a snakemake dry run, as {rule: count}."""
    lines = output.split("Job stats:")[1].splitlines()
    counts = {}
    for line in lines[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture
def repo(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    tiny_params(repo)
    user_given_mfeat(repo)
    return repo


@pytest.mark.slow
def test_snakemake_end_to_end_incremental(repo):
    run(["snakemake", "--cores", "2"], repo)
    summary = (repo / "results" / "summary.md").read_text()
    assert "## mfeat-fou-mor" in summary and "## synthetic-bi" in summary and "| joint |" in summary
    evals = sorted((repo / "results" / "eval").rglob("*.json"))
    assert len(evals) == 2 * 2 * 2
    res = json.loads((repo / "results/eval/synthetic-bi/joint/seed1.json").read_text())
    assert 0 <= res["acc"] <= 1 and set(res["modalities"]) == {"dominant", "xor"}
    assert list((repo / "runs/mfeat-fou-mor/joint/seed0").glob("events.out.tfevents.*"))
    assert list((repo / "runs/mfeat-fou-mor/unimodal/seed1/fou").glob("events.out.tfevents.*"))
    assert (repo / "models/mfeat-fou-mor/joint/seed1/best.pt").exists()
    assert (repo / "models/mfeat-fou-mor/joint/seed1/last.pt").exists()

    again = run(["snakemake", "--cores", "2"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr

    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"]["lr"] = 0.02
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    dry = run(["snakemake", "-n", "--cores", "2"], repo)
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts == {"all": 1, "evaluate": 2, "report": 1, "train": 4}, counts

    p["methods"]["joint"]["train"] = {"lr": 0.02}  # only joint's own change: only joint retrains
    p["train"]["lr"] = 0.05
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    dry = run(["snakemake", "-n", "--cores", "2"], repo)
    assert job_counts(dry.stdout + dry.stderr)["train"] == 2


@pytest.mark.slow
def test_bad_params_stop_snakemake_before_any_job(repo):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"]["epochz"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(p))
    r = run(["snakemake", "--cores", "2"], repo, ok=False)
    assert r.returncode != 0 and "epochz" in r.stdout + r.stderr
    assert not (repo / "data" / "features").exists()
    p["train"].pop("epochz")
    p["run"]["methods"].append("ghost")
    (repo / "params.yaml").write_text(yaml.safe_dump(p))
    r = run(["snakemake", "--cores", "2"], repo, ok=False)
    assert r.returncode != 0 and "run.methods: 'ghost' is not defined" in r.stdout + r.stderr


@pytest.mark.slow
def test_dvc_repro_end_to_end(repo):
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, repo)
    run(["dvc", "repro"], repo)
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    metrics = json.loads(shown)
    flat = json.dumps(metrics)
    assert "results/summary.json" in flat and "acc_mean" in flat and "mfeat-fou-mor" in flat
    plots = run(["dvc", "plots", "show", "-o", "plots"], repo)
    assert "failed to load" not in plots.stdout + plots.stderr
    assert "val_acc" in (repo / "plots" / "index.html").read_text()
    again = run(["dvc", "repro"], repo)
    assert "Running stage" not in again.stdout
    status = run(["dvc", "status"], repo)
    assert "up to date" in status.stdout
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"]["epochs"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    diff = run(["dvc", "params", "diff"], repo).stdout
    assert "train.epochs" in diff
    status = run(["dvc", "status"], repo).stdout
    assert "train:" in status and "features:" not in status
    (repo / "params.yaml").write_text(run(["git", "show", "HEAD:params.yaml"], repo).stdout)
    exp = run(["dvc", "exp", "run", "-S", "train.epochs=3"], repo)
    out = exp.stdout + exp.stderr
    assert "Running stage 'train'" in out and "Running stage 'features'" not in out
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 3
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "train.epochs" in shown or '"epochs": 3' in shown
