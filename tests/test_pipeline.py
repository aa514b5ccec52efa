"""The real `snakemake` and `dvc` commands on a tiny configuration in a temp copy of the repo.

The tiny configuration is a file, tests/configs/tiny.yaml, given to Snakemake with
`--configfile` (merged over params.yaml); DVC reads params.yaml only, so its tests write the
same configuration into params.yaml.
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from snakemake.utils import update_config

from dyncim import config as C
from dyncim import paths
from dyncim.data.sources.mfeat import DIMS
from tests.conftest import copy_repo, venv_env

TINY = "tests/configs/tiny.yaml"
TINY_DVC = "tests/configs/tiny-dvc.yaml"
# what a change to every training job of the tiny configuration re-runs after training
AFTER_TRAINING = {"all": 1, "evaluate": 2, "robustness": 2, "figures": 2, "report": 1, "report_md": 1}


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


def materialize(repo, *configs):
    """Write params.yaml merged with config files, as `snakemake --configfile` merges them (for DVC)."""
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for c in configs:
        update_config(p, yaml.safe_load((repo / c).read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def run(cmd, repo, ok=True):
    r = subprocess.run(cmd, cwd=repo, env=venv_env(), capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def snakemake(repo, *args, ok=True, configfiles=(TINY,)):
    """`snakemake [targets and flags] --cores 2 --configfile ...` (targets first: --config and
    --configfile take every value that follows them)."""
    return run(["snakemake", *args, "--cores", "2", "--configfile", *configfiles], repo, ok)


def job_counts(output: str) -> dict:
    """The 'Job stats' table of a snakemake dry run, as {rule: count}."""
    if "Job stats:" not in output:
        return {}
    lines = output.split("Job stats:")[1].splitlines()
    counts = {}
    for line in lines[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def dry_counts(repo, *args, **kw) -> dict:
    r = snakemake(repo, "-n", *args, **kw)
    return job_counts(r.stdout + r.stderr)


@contextlib.contextmanager
def edited(path, edit):
    """Edit a file for the block, then restore its content and modification time."""
    text, st = path.read_text(), path.stat()
    path.write_text(edit(text))
    try:
        yield
    finally:
        path.write_text(text)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def clone(repo, dest):
    """A copy of a built repo, modification times (and Snakemake's records) included."""
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def set_schema_train_default(text, key, value):
    line = next(x for x in text.splitlines() if x.strip().startswith(f"{key}: {{") and "default:" in x)
    old = line.split("default:")[1].split(",")[0].split("}")[0]
    return text.replace(line, line.replace(f"default:{old}", f"default: {value}", 1))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny configuration run once by Snakemake."""
    repo = copy_repo(tmp_path_factory.mktemp("built") / "repo")
    user_given_mfeat(repo)
    snakemake(repo)
    return repo


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    """The tiny configuration narrowed for DVC (written into params.yaml) run once by `dvc repro`
    in a git repo."""
    repo = copy_repo(tmp_path_factory.mktemp("dvc") / "repo")
    materialize(repo, TINY, TINY_DVC)
    user_given_mfeat(repo)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, repo)
    run(["dvc", "repro"], repo)
    return repo


@pytest.mark.slow
def test_snakemake_end_to_end_incremental(built):
    repo = built
    summary = (repo / "results" / "summary.md").read_text()
    assert "## mfeat-fou-mor" in summary and "## synthetic-bi" in summary and "| joint |" in summary
    evals = sorted((repo / "results" / "eval").rglob("*.json"))
    assert len(evals) == 2 * 3 * 2
    res = json.loads((repo / "results/eval/synthetic-bi/joint/seed1.json").read_text())
    assert 0 <= res["acc"] <= 1 and set(res["modalities"]) == {"dominant", "xor"}
    assert list((repo / "runs/mfeat-fou-mor/joint/seed0").glob("events.out.tfevents.*"))
    assert list((repo / "runs/mfeat-fou-mor/unimodal/seed1/fou").glob("events.out.tfevents.*"))
    assert (repo / "models/mfeat-fou-mor/joint/seed1/best.pt").exists()
    assert (repo / "models/mfeat-fou-mor/joint/seed1/last.pt").exists()
    # every job wrote its stdout and stderr to its log
    assert "models/synthetic-bi/unimodal/seed1/best.pt" in (repo / "logs/train/synthetic-bi/unimodal.log").read_text()
    for log in ("split/mfeat", "feature_file/synthetic-bi", "evaluate/mfeat-fou-mor", "report"):
        assert (repo / f"logs/{log}.log").exists(), log

    again = snakemake(repo)
    assert "Nothing to be done" in again.stdout + again.stderr

    # `--config` changes the jobs' configuration, hence their rerun trigger
    counts = dry_counts(repo, "--config", "train={lr: 0.02}")
    assert counts == {**AFTER_TRAINING, "train": 6}, counts
    counts = dry_counts(repo, "--config", "methods={joint: {train: {lr: 0.02}}}")  # only joint's own change
    assert counts == {**AFTER_TRAINING, "train": 2}, counts


def tiny_params(repo) -> dict:
    """params.yaml merged with the tiny configuration and resolved, as the Snakefile sees it."""
    p = yaml.safe_load((repo / "params.yaml").read_text())
    update_config(p, yaml.safe_load((repo / TINY).read_text()))
    return C.resolve(p)


def png_pixels(path) -> np.ndarray:
    """A PNG's pixels (H, W, channels, floats in [0, 1]), after checking its signature."""
    import matplotlib.image
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return matplotlib.image.imread(path)


def blank(pixels: np.ndarray) -> bool:
    """A page or figure with (almost) nothing drawn: under 1 % of pixels differ from the most common colour."""
    flat = (pixels[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    return counts.max() > 0.99 * len(flat) or len(colours) < 8


@pytest.mark.slow
def test_report_figures_robustness_and_metrics_of_the_run(built):
    from tests.test_report_md import check_report
    repo, p = built, tiny_params(built)
    # REPORT.md: every number recomputed from the per-run JSONs and the robustness records
    rob = {d: repo / paths.robustness_file(d) for d in p["run"]["datasets"]}
    kinds = C.figure_kinds(p)
    assert kinds == list(paths.FIGURE_KINDS)   # dyncim runs: its trajectories are drawn too
    figs = {d: {k: repo / paths.figure_file(d, k) for k in kinds} for d in p["run"]["datasets"]}
    report = repo / paths.REPORT
    found = check_report(report.read_text(), C.report_job(p), repo, report, rob, figs)
    assert all(abl is None and len(r) == 2 for _, abl, r in found.values())   # 2 modalities each
    # figures: valid PNGs of plausible size, not blank
    for d, kinds_ in figs.items():
        for kind, f in kinds_.items():
            pixels = png_pixels(f)
            assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400 and not blank(pixels), f
    # robustness: level 0 is each run's clean test accuracy, as the evaluate step measured it
    for d in p["run"]["datasets"]:
        record = json.loads(rob[d].read_text())
        assert set(record["runs"]) == {"joint", "dyncim"} and "unimodal" in record["skipped"]
        assert record["levels"] == p["robustness"]["levels"]
        for m, seeds in record["runs"].items():
            for s, r in seeds.items():
                acc = json.loads((repo / paths.eval_file(d, m, s)).read_text())["acc"]
                assert r["clean"] == acc and r["modalities"]["fou" if d.startswith("mfeat") else "dominant"]["levels"][0] == acc
        rows = (repo / paths.robustness_csv(d)).read_text().splitlines()
        assert rows[0] == "method,modality,corruption,level,acc_mean,acc_std,n" and len(rows) == 1 + 2 * 2 * (5 + 1)
    # DVC metrics: a file per method with a fused prediction, and DynCIM's margin over joint
    metrics = {f.stem: json.loads(f.read_text()) for f in (repo / paths.METRICS_DIR).glob("*.json")}
    assert set(metrics) == {"joint", "dyncim", "_dyncim-minus-joint"}
    for d in p["run"]["datasets"]:
        acc = {m: [json.loads((repo / paths.eval_file(d, m, s)).read_text())["acc"] for s in (0, 1)]
               for m in ("joint", "dyncim")}
        assert metrics["joint"][d] == round(float(np.mean(acc["joint"])), 4)
        assert metrics["_dyncim-minus-joint"][d] == round(float(np.mean(np.subtract(acc["dyncim"], acc["joint"]))), 4)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_snakemake_html_report_opens_in_a_browser(built, tmp_path):
    """`snakemake --report` (what `make report` runs) gives a self-contained HTML report with the
    figures and tables; headless Chromium renders it (a screenshot, checked to be non-blank)."""
    repo = clone(built, tmp_path / "repo")
    html = repo / paths.HTML_REPORT
    snakemake(repo, "--report", str(html))
    text = html.read_text()
    assert html.stat().st_size > 100_000
    for name in ("REPORT.md", "accuracy.png", "dyncim.png", "robustness.png", "synthetic-bi.csv"):
        assert name in text, name
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian package chromium; .ci/run installs it): "
                    "the report was built, not rendered")
    shot = tmp_path / "report.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000",
                        "--virtual-time-budget=15000", f"--screenshot={shot}", html.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    assert not blank(png_pixels(shot))


@pytest.mark.slow
def test_configfile_and_config_change_what_the_jobs_do(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    target = "models/synthetic-bi/joint/manifest.json"
    snakemake(repo, target, "--config", "train={epochs: 3}")
    ck = torch.load(repo / "models/synthetic-bi/joint/seed1/best.pt", weights_only=False)
    assert ck["train_cfg"]["epochs"] == 3 and ck["train_cfg"]["hidden"] == [8]  # tiny.yaml's, then --config's
    curves = (repo / "results/curves/synthetic-bi/joint/seed1.csv").read_text().splitlines()
    assert len(curves) == 1 + 3
    snakemake(repo, target)  # back to tiny.yaml alone: retrained with its 2 epochs
    assert len((repo / "results/curves/synthetic-bi/joint/seed1.csv").read_text().splitlines()) == 1 + 2
    assert torch.load(repo / "models/synthetic-bi/joint/seed0/best.pt", weights_only=False)["train_cfg"]["epochs"] == 2


@pytest.mark.slow
def test_quick_profile_runs_one_seed_of_few_epochs(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    user_given_mfeat(repo)
    r = snakemake(repo, "-n", "-p", configfiles=("configs/quick.yaml",))
    out = r.stdout + r.stderr
    quick = yaml.safe_load((repo / "configs/quick.yaml").read_text())
    n_train = len(quick["run"]["datasets"]) * len(quick["run"]["methods"])
    assert job_counts(out)["train"] == n_train
    commands = [line for line in out.splitlines() if "python -m dyncim train --job" in line]
    assert len(commands) == n_train
    for line in commands:
        job = json.loads(line.split("--job '")[1].split("' --data-file")[0])
        assert job["train"]["epochs"] == quick["train"]["epochs"] and job["seeds"] == [0]


@pytest.mark.slow
def test_code_and_default_edits_rerun_the_jobs_that_run_them_under_snakemake(built):
    repo = built
    assert dry_counts(repo) == {}  # nothing to be done
    full = {**AFTER_TRAINING, "train": 6}
    with edited(repo / "dyncim/config.py", lambda t: t + "\n# edited\n"):
        assert dry_counts(repo) == full  # training runs the config module; split and features do not
    with edited(repo / "workflow/schemas/params.schema.yaml",
                lambda t: set_schema_train_default(t, "eval_batch_size", 256)):
        assert dry_counts(repo) == full  # a training default the tiny configuration does not set
    with edited(repo / "dyncim/methods/joint.py", lambda t: t + "\n# edited\n"):
        r = snakemake(repo, "-n")
        out = r.stdout + r.stderr
        assert job_counts(out) == {**AFTER_TRAINING, "train": 2}
        assert out.count("method=joint") == 2 and "method=unimodal" not in out  # only joint's jobs train
    assert dry_counts(repo) == {}  # nothing to be done


@pytest.mark.slow
def test_code_and_default_edits_rerun_training_under_dvc(dvc_repo):
    repo = dvc_repo

    def stale():
        out = run(["dvc", "status"], repo).stdout
        return {line.rstrip(":") for line in out.splitlines() if line and not line.startswith((" ", "\t"))}

    assert stale() <= {"Data and pipelines are up to date."}
    with edited(repo / "dyncim/config.py", lambda t: t + "\n# edited\n"):
        assert "train" in stale() and "feature_file" not in stale()
    with edited(repo / "workflow/schemas/params.schema.yaml",
                lambda t: set_schema_train_default(t, "eval_batch_size", 256)):
        assert "train" in stale()
    with edited(repo / "dyncim/methods/joint.py", lambda t: t + "\n# edited\n"):
        assert {"train", "evaluate"} <= stale() and "feature_file" not in stale()


@pytest.mark.slow
def test_dvc_repro_end_to_end(dvc_repo):
    repo = dvc_repo
    shown = run(["dvc", "metrics", "show"], repo).stdout
    # the headline figures only: a row per method with a fused prediction and DynCIM's margin,
    # a column per data set
    rows = [line.split() for line in shown.strip().splitlines()]
    assert rows[0] == ["Path", "synthetic-bi"], shown
    assert sorted(r[0] for r in rows[1:]) == ["results/metrics/_dyncim-minus-joint.json",
                                               "results/metrics/dyncim.json", "results/metrics/joint.json"], shown
    joint = json.loads((repo / "results/metrics/joint.json").read_text())
    assert next(r for r in rows if r[0].endswith("/joint.json"))[1:] == [f"{joint['synthetic-bi']:g}"]
    plots = run(["dvc", "plots", "show", "-o", "plots"], repo)
    assert "failed to load" not in plots.stdout + plots.stderr
    page = (repo / "plots" / "index.html").read_text()
    assert "val_acc" in page and "results/robustness-curves/synthetic-bi.csv" in page and "acc_mean" in page
    # (a path on the command line would be drawn with the default template, not dvc.yaml's)
    spec = json.loads(run(["dvc", "plots", "show", "--json"],
                          repo).stdout)["data"]["results/robustness-curves/synthetic-bi.csv"][0]["content"]
    assert spec["spec"]["encoding"]["color"]["field"] == "method" and spec["facet"]["field"] == "modality"
    assert {v["method"] for v in spec["data"]["values"]} == {"joint", "dyncim"}
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
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "2 epochs"], repo)
    exp = run(["dvc", "exp", "run", "-S", "train.epochs=3"], repo)
    out = exp.stdout + exp.stderr
    assert "Running stage 'train'" in out and "Running stage 'features'" not in out
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 3
    assert torch.load(repo / "models/synthetic-bi/joint/seed0/best.pt", weights_only=False)["train_cfg"]["epochs"] == 3
    shown = run(["dvc", "exp", "show", "--json"], repo).stdout
    assert "train.epochs" in shown or '"epochs": 3' in shown
    # the metrics of two commits, side by side
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "3 epochs"], repo)
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--all", "--json"], repo).stdout)
    new = json.loads((repo / "results/metrics/joint.json").read_text())
    assert {d: (v["old"], v["new"]) for d, v in diff["results/metrics/joint.json"].items()} == \
        {d: (joint[d], new[d]) for d in joint}
    assert set(diff) == {"results/metrics/joint.json", "results/metrics/dyncim.json",
                         "results/metrics/_dyncim-minus-joint.json"}


@pytest.mark.slow
def test_bad_params_one_message_from_every_entry_point(tmp_path, monkeypatch):
    """A typo under `train`: Snakemake, `dvc repro` (which runs Snakemake) and the CLI print the
    package's one paragraph naming the key and the allowed keys, and nothing runs."""
    repo = copy_repo(tmp_path / "repo")
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("\n  lr: ", "\n  lrr: ", 1))
    monkeypatch.chdir(repo)
    with pytest.raises(C.ParamsError) as e:
        C.load("params.yaml")
    message = C.error_text(e.value)
    assert "train: unknown key(s) ['lrr']; allowed: [" in message and len(message.splitlines()) == 2

    r = run(["snakemake", "-n"], repo, ok=False)
    lines = [x for x in (r.stdout + r.stderr).splitlines() if not x.startswith("Using workflow specific profile")]
    assert r.returncode != 0 and "\n".join(lines) == message
    r = run([sys.executable, "-m", "dyncim", "validate"], repo, ok=False)
    assert r.returncode == 2 and r.stderr.strip() == f"dyncim validate: {message}"
    run(["git", "init", "-q"], repo)
    r = run(["dvc", "repro"], repo, ok=False)
    assert r.returncode != 0 and message in r.stdout + r.stderr
    assert not (repo / "data").exists()

    # a configuration file or --config entry is named in the message too
    (repo / "params.yaml").write_text(text)
    (repo / "bad.yaml").write_text("train: {epochz: 3}\n")
    r = snakemake(repo, "-n", ok=False, configfiles=("bad.yaml",))
    assert r.returncode != 0 and "error: params.yaml + bad.yaml: invalid parameters:\n  train: unknown key(s) ['epochz']" in r.stderr
    r = snakemake(repo, "-n", "--config", "run={methods: [joint, ghost]}", ok=False)
    assert r.returncode != 0 and f"error: params.yaml + {TINY} + --config: run.methods: 'ghost' is not defined" in r.stderr


@pytest.mark.slow
def test_dvc_push_to_a_folder_remote_then_a_fresh_clone_pulls_a_clean_pipeline(tmp_path):
    """Data versioned for a team: `dvc push` to a local folder remote, a fresh clone, `dvc pull`:
    nothing to reproduce under either tool, and the features byte-identical."""
    repo = copy_repo(tmp_path / "repo")
    materialize(repo, TINY, TINY_DVC)
    user_given_mfeat(repo)
    commit = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], commit + ["init"]):
        run(cmd, repo)
    run(["dvc", "repro"], repo)
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "team", str(remote)], repo)
    run(["git", "add", "-A"], repo)
    run(commit + ["results and the remote"], repo)
    run(["dvc", "push"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)                              # what `make pull` runs
    run(["snakemake", "--touch", "--cores", "1"], clone)     # the checkout's mtimes in Snakemake's order
    assert "up to date" in run(["dvc", "status"], clone).stdout
    dry = run(["snakemake", "-n", "--cores", "1"], clone)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    feats = sorted(p.relative_to(repo) for p in (repo / "data" / "features").rglob("*") if p.is_file())
    assert feats and all((clone / p).read_bytes() == (repo / p).read_bytes() for p in feats)
