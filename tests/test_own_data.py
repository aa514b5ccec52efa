"""A user's own data set (source `files`, dyncim.data.sources.files; docs/own-data.md): the formats
it reads, the one-line errors it gives before any job runs (config resolution, `python -m dyncim
validate`, `snakemake -n` and a real `snakemake` that starts no job), and the real `snakemake`
end to end with every method of params.yaml, single- and multi-label."""
import copy
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from dyncim import config as C
from dyncim import paths
from dyncim.data.io import store as S
from dyncim.data.sources import files as F
from dyncim.data.io.splits import stratified_split
from tests.conftest import REPO, copy_repo, venv_env
from tests.test_pipeline import dry_counts, edited, run

PROFILE = REPO / "configs" / "own-data.yaml"


def params_with(datasets: dict, **top) -> dict:
    """params.yaml with these data sets, and only them in the run list."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["datasets"].update(datasets)
    raw["run"]["datasets"] = list(datasets)
    raw["run"]["methods"] = runnable(raw)   # greedy aside: these files have a sequence modality
    raw.update(top)
    return raw


def write_set(folder, n_per_class=12, classes=("a", "b", "c"), seed=0, split_column=True):
    """Files in every format: table.csv (id, label, split, two feature columns), vec.npy (N, 5),
    seq.npz (key x: (N, 4, 2), and a second array)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(len(classes)), n_per_class))
    n = len(y)
    np.save(folder / "vec.npy", (rng.normal(size=(len(classes), 5))[y] + rng.normal(size=(n, 5))).astype(np.float32))
    np.savez(folder / "seq.npz", x=(y[:, None, None] * 0.5 + rng.normal(size=(n, 4, 2))).astype(np.float32),
             other=np.zeros(3))
    split = stratified_split(y, 0.6, 0.2, 1)
    with open(folder / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", *(["split"] if split_column else []), "t0", "t1"])
        for i in range(n):
            w.writerow([f"id{i}", classes[y[i]], *([split[i]] if split_column else []),
                        f"{y[i] + rng.normal():.4f}", f"{rng.normal():.4f}"])
    return y


def entry(folder, **over) -> dict:
    files = {"modalities": [{"name": "vec", "path": str(folder / "vec.npy")},
                            {"name": "seq", "path": str(folder / "seq.npz"), "key": "x"},
                            {"name": "tab", "path": str(folder / "table.csv"), "columns": "t*"}],
             "labels": {"path": str(folder / "table.csv"), "column": "label"},
             "split": {"path": str(folder / "table.csv"), "column": "split"},
             "id": {"path": str(folder / "table.csv"), "column": "id"}}
    files.update(over)
    return {"source": "files", "files": {k: v for k, v in files.items() if v is not None}}


def resolved(ds) -> dict:
    raw = params_with({"mine": ds})
    if ds["files"].get("multilabel"):
        raw["run"]["methods"] = ["joint", "unimodal"]   # the methods that run on multi-label sets
    return C.resolve(raw)["datasets"]["mine"]


# ---- reading -----------------------------------------------------------------------------------

def test_the_profile_reads_every_format_of_its_example():
    p = C.merge(yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(PROFILE.read_text()))
    p = C.resolve(p, "params.yaml + configs/own-data.yaml")
    every = runnable(yaml.safe_load((REPO / "params.yaml").read_text()))   # greedy aside: a sequence modality
    assert p["run"]["datasets"] == ["own-example"] and p["run"]["methods"] == every
    d = F.load(p["datasets"]["own-example"])
    assert d.names == ["audio", "motion", "meta"] and d.classes == ["calm", "busy", "alarm"]
    assert [x.shape for x in d.views] == [(90, 8), (90, 6, 3), (90, 4)]
    assert {s: int((d.split == s).sum()) for s in ("train", "val", "test")} == {"train": 54, "val": 18, "test": 18}
    assert d.ids[:2] == ["s000", "s001"] and C.n_modalities(p["datasets"]["own-example"]) == 3
    assert C.data_info(p, "own-example")["split"] == "given: resources/examples/own-data/table.csv column split"
    # the shipped example is what its documented command writes
    fresh = REPO / "resources/examples/own-data"
    with tempfile.TemporaryDirectory() as tmp:
        F.write_example(tmp)
        assert (Path(tmp) / "table.csv").read_text() == (fresh / "table.csv").read_text()
        assert np.array_equal(np.load(Path(tmp) / "audio.npy"), np.load(fresh / "audio.npy"))
        assert np.array_equal(np.load(Path(tmp) / "motion.npz")["x"], np.load(fresh / "motion.npz")["x"])


def test_labels_as_names_indices_and_multi_hot(tmp_path):
    y = write_set(tmp_path)
    d = F.load(resolved(entry(tmp_path)))
    assert d.classes == ["a", "b", "c"] and np.array_equal(d.labels, y)
    assert [x.shape for x in d.views] == [(36, 5), (36, 4, 2), (36, 2)]
    # integer indices into the classes given; names in an array; sorted numerically without classes
    np.save(tmp_path / "y.npy", y)
    d = F.load(resolved(entry(tmp_path, labels={"path": str(tmp_path / "y.npy")}, classes=["x", "y", "z"])))
    assert d.classes == ["x", "y", "z"] and np.array_equal(d.labels, y)
    np.save(tmp_path / "y.npy", y + 8)   # 8, 9, 10: sorted as numbers, not as text
    d = F.load(resolved(entry(tmp_path, labels={"path": str(tmp_path / "y.npy")})))
    assert d.classes == ["8", "9", "10"] and np.array_equal(d.labels, y)
    np.savez(tmp_path / "names.npz", y=np.array(["b", "a", "c"])[y])
    d = F.load(resolved(entry(tmp_path, labels={"path": str(tmp_path / "names.npz")})))
    assert d.classes == ["a", "b", "c"] and np.array_equal(d.labels, np.array([1, 0, 2])[y])
    (tmp_path / "classes.txt").write_text("c\nb\na\n")
    d = F.load(resolved(entry(tmp_path, classes=str(tmp_path / "classes.txt"))))
    assert d.classes == ["c", "b", "a"] and np.array_equal(d.labels, 2 - y)
    # multi-label: a multi-hot array, or names joined by |
    hot = np.eye(3, dtype=np.int8)[y]
    hot[::4, 0] = 1
    np.save(tmp_path / "hot.npy", hot)
    d = F.load(resolved(entry(tmp_path, labels={"path": str(tmp_path / "hot.npy")}, multilabel=True)))
    assert d.multilabel and d.classes == ["0", "1", "2"] and np.array_equal(d.labels, hot)
    with open(tmp_path / "ml.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["genres"])
        w.writerows([["|".join(n for n, on in zip("abc", row) if on)] for row in hot])
    d = F.load(resolved(entry(tmp_path, labels={"path": str(tmp_path / "ml.csv"), "column": "genres"},
                              multilabel=True)))
    assert d.classes == ["a", "b", "c"] and np.array_equal(d.labels, hot)


def test_without_a_split_column_the_split_is_stratified_seeded_and_said(tmp_path):
    y = write_set(tmp_path, split_column=False)
    raw = params_with({"mine": entry(tmp_path, split=None)})
    p = C.resolve(raw)
    assert p["datasets"]["mine"]["files"]["split"] == {"train": 0.6, "val": 0.2, "seed": 0}   # filled in
    d = F.load(p["datasets"]["mine"])
    assert (d.split == stratified_split(y, 0.6, 0.2, 0)).all() and d.split_rule == "stratified 60/20/20 seed 0"
    assert C.data_info(p, "mine")["split"] == "stratified 60/20/20 seed 0"
    raw["datasets"]["mine"]["files"]["split"] = {"train": 0.5, "val": 0.25, "seed": 3}   # its own
    d = F.load(C.resolve(raw)["datasets"]["mine"])
    assert (d.split == stratified_split(y, 0.5, 0.25, 3)).all()


def test_the_media_and_extract_steps_record_and_standardise(tmp_path):
    y = write_set(tmp_path / "in")
    ds = resolved(entry(tmp_path / "in"))
    rec = F.bring_in(ds, tmp_path / "raw", log=None)
    assert rec["samples"] == 36 and rec["classes"] == ["a", "b", "c"] and set(rec["files"]) == set(F.inputs(ds))
    with open(tmp_path / "raw" / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows][:2] == ["id0", "id1"]
    out = F.build(ds, tmp_path / "raw", rec, tmp_path / "store", log=None)
    assert out["standardized"] and out["modalities"] == ["vec", "seq", "tab"]
    tr = S.open_split(tmp_path / "store" / "train")
    assert tr.arrays["vec"].dtype == np.float32 and tr.arrays["seq"].shape[1:] == (4, 2)
    assert np.allclose(tr.arrays["vec"].mean(0), 0, atol=1e-5) and np.allclose(tr.arrays["vec"].std(0), 1, atol=1e-4)
    assert np.allclose(tr.arrays["seq"].reshape(-1, 2).mean(0), 0, atol=1e-5)
    assert tr.classes == ["a", "b", "c"] and tr.clips == [r["id"] for r in rows if r["split"] == "train"]
    want = y[[int(r["row"]) for r in rows if r["split"] == "train"]]
    assert np.array_equal(tr.labels, want)
    # a file edited after the media step is not read as if it were the one recorded
    np.save(tmp_path / "in" / "vec.npy", np.ones((36, 5), dtype=np.float32) * np.arange(36)[:, None])
    with pytest.raises(ValueError, match=r"vec.npy: changed since the media step recorded it"):
        F.build(ds, tmp_path / "raw", rec, tmp_path / "store2", log=None)


# ---- bad input: one line each, before any job runs ---------------------------------------------

def _nan(folder):
    a = np.load(folder / "vec.npy")
    a[7, 3] = np.nan
    np.save(folder / "vec.npy", a)


def _short(folder):
    np.save(folder / "vec.npy", np.load(folder / "vec.npy")[:-1])


def _flat(folder):
    np.save(folder / "vec.npy", np.full((36, 5), 0.5, dtype=np.float32))


def _table(folder, col, row, value):
    with open(folder / "table.csv", newline="") as f:
        rows = list(csv.reader(f))
    rows[row + 1][rows[0].index(col)] = value
    with open(folder / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _inf_cell(folder):
    _table(folder, "t1", 4, "inf")


def _word_cell(folder):
    _table(folder, "t0", 2, "n/a")


def _dog(folder):
    _table(folder, "label", 3, "dog")


def _dev(folder):
    _table(folder, "split", 5, "dev")


def _no_test(folder):
    with open(folder / "table.csv", newline="") as f:
        rows = list(csv.reader(f))
    j = rows[0].index("split")
    for r in rows[1:]:
        r[j] = "val" if r[j] == "test" else r[j]
    with open(folder / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _twice(folder):
    _table(folder, "id", 6, "id0")


# (how the files are spoiled, how the entry changes, what the one line says)
BAD = {
    "rows": (_short, {}, ["vec.npy: 35 rows; expected 36, one per sample, as the labels", "table.csv) have"]),
    "nan": (_nan, {}, ["vec.npy: row 7 (counted from 0), feature 3: nan; expected finite values"]),
    "inf": (_inf_cell, {}, ["table.csv: line 6, column 't1': inf; expected a finite number"]),
    "not-a-number": (_word_cell, {}, ["table.csv: line 4, column 't0': 'n/a'; expected a number"]),
    "label": (_dog, {"classes": ["a", "b", "c"]}, ["table.csv: line 5, column 'label': label 'dog'; expected one of the classes ['a', 'b', 'c']"]),
    "index": (None, {"classes": ["x", "y"], "labels": "y.npy"},
              ["y.npy: row ", "expected a class index in [0, 1] (2 classes)"]),
    "split": (_dev, {}, ["table.csv: line 7, column 'split': split 'dev'; expected train, val or test"]),
    "empty-split": (_no_test, {}, ["table.csv: column 'split': no sample in the test split"]),
    "constant": (_flat, {}, ["vec.npy: modality 'vec' has one value everywhere (0.5 in every row and feature); "
                             "expected features that vary between samples"]),
    "id": (_twice, {}, ["table.csv: line 8, column 'id': id 'id0' again (first at line 2); expected unique ids"]),
    "npz-key": (None, {"seq-key": None}, ["seq.npz: holds the arrays ['x', 'other']; expected `key` to say which"]),
    "column": (None, {"label-column": "kind"}, ["table.csv: has no column 'kind' (the labels); its columns:"]),
    "missing-file": (None, {"vec-path": "gone.npy"}, ["gone.npy: no such file"]),
    "format": (None, {"vec-path": "vec.parquet"}, ["vec.parquet: a .parquet; expected one of .npy, .npz, .csv"]),
    "multi-hot": (None, {"labels": "hot.npy"}, ["hot.npy: labels of shape (36, 3) (multi-hot); expected one label "
                                                "per sample, or `multilabel: true`"]),
}


def spoil(folder, case) -> dict:
    """Write a good set into folder, spoil it as BAD[case] says; the data set entry."""
    y = write_set(folder)
    how, change, _ = BAD[case]
    if how:
        how(folder)
    ds = entry(folder)
    f = ds["files"]
    if "classes" in change:
        f["classes"] = change["classes"]
    if change.get("labels") == "y.npy":
        np.save(folder / "y.npy", y)
        f["labels"] = {"path": str(folder / "y.npy")}
    if change.get("labels") == "hot.npy":
        np.save(folder / "hot.npy", np.eye(3, dtype=np.int8)[y])
        f["labels"] = {"path": str(folder / "hot.npy")}
    if "seq-key" in change:
        del f["modalities"][1]["key"]
    if "label-column" in change:
        f["labels"]["column"] = change["label-column"]
    if "vec-path" in change:
        f["modalities"][0]["path"] = str(folder / change["vec-path"])
    return ds


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_are_one_line_errors_at_config_resolution(tmp_path, case):
    ds = spoil(tmp_path, case)
    with pytest.raises(C.ParamsError) as e:
        C.resolve(params_with({"mine": ds}), "mine.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("mine.yaml: datasets.mine: "), msg
    for text in BAD[case][2]:
        assert text in msg, (text, msg)


def test_validate_merges_profiles_and_prints_one_line(tmp_path, capsys, monkeypatch):
    from dyncim import cli
    monkeypatch.chdir(REPO)
    assert cli.main(["validate", "--configfile", str(PROFILE)]) == 0
    assert "configs/own-data.yaml: valid; 1 data sets x" in capsys.readouterr().out
    ds = spoil(tmp_path, "nan")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"datasets": {"mine": ds}, "run": {"datasets": ["mine"],
                                                                                     "methods": ["joint", "dyncim"]}}))
    assert cli.main(["validate", "--configfile", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("dyncim validate: error: params.yaml + ") and BAD["nan"][2][0] in err


def test_bad_settings_are_named_by_the_schema(tmp_path):
    write_set(tmp_path)
    ds = entry(tmp_path)
    ds["files"]["modalities"][2]["name"] = "vec"
    with pytest.raises(C.ParamsError, match=r"datasets.mine.files.modalities: the name\(s\) \['vec'\] are given twice"):
        C.resolve(params_with({"mine": ds}))
    ds = entry(tmp_path, split={"train": 0.9, "val": 0.2, "seed": 0})
    with pytest.raises(C.ParamsError, match=r"datasets.mine.files.split: train \+ val must be below 1"):
        C.resolve(params_with({"mine": ds}))
    ds = entry(tmp_path)
    ds["files"]["modalities"] = ds["files"]["modalities"][:1]
    with pytest.raises(C.ParamsError, match=r"datasets.mine.files.modalities"):
        C.resolve(params_with({"mine": ds}))
    ds = entry(tmp_path, multilabel=True)   # a multi-label set runs only the methods that support it
    with pytest.raises(C.ParamsError, match=r"'ogm-ge' \(ogm-ge\) does not support multi-label data sets \(mine\)"):
        C.resolve(params_with({"mine": ds}))
    # a data set that is not in the run list is not read (its files need not exist)
    raw = params_with({"mine": entry(tmp_path / "nowhere")})
    raw["run"]["datasets"] = ["synthetic-bi"]
    assert C.resolve(raw)["datasets"]["mine"]["source"] == "files"


def _profile(repo, ds, name="bad.yaml"):
    # two methods that run on any set: the error must come from the file, not the run list
    cfg = {"datasets": {"mine": ds}, "run": {"datasets": ["mine"], "methods": ["joint", "dyncim"]}}
    (repo / name).write_text(yaml.safe_dump(cfg))
    return name


@pytest.fixture(scope="module")
def bare_repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("bad") / "repo")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["rows", "nan", "label", "split", "constant"])
def test_snakemake_and_validate_stop_on_bad_files_before_any_job(bare_repo, tmp_path, case):
    repo = bare_repo
    ds = spoil(tmp_path, case)
    cfg = _profile(repo, ds)
    for cmd in (["snakemake", "-n", "--configfile", cfg],
                [sys.executable, "-m", "dyncim", "validate", "--configfile", cfg]):
        r = run(cmd, repo, ok=False)
        assert r.returncode != 0
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if "error:" in ln]
        assert len(errors) == 1 and all(t in errors[0] for t in BAD[case][2]), (cmd, r.stdout, r.stderr)
        assert "datasets.mine: " in errors[0] and "Traceback" not in r.stderr
    # a real run starts no job: nothing is written
    r = run(["snakemake", "--cores", "1", "--configfile", cfg], repo, ok=False)
    assert r.returncode != 0 and not (repo / "data").exists() and not (repo / "logs").exists()


# ---- end to end --------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_profile_plans_its_dag():
    r = subprocess.run(["snakemake", "-n", "--forceall", "--configfile", str(PROFILE)], cwd=REPO, env=venv_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    from tests.test_pipeline import job_counts
    counts = job_counts(r.stdout + r.stderr)
    methods = runnable(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert counts["media"] == counts["extract"] == 1 and counts["train"] == len(methods), counts


def runnable(params: dict, n_modalities: int = 3) -> list[str]:
    """params.yaml's run list but the methods that need encoder stages (Greedy) or are defined for
    fewer modalities (InfoReg, ARM): these files have three modalities, one a sequence, and the
    params check refuses those methods there."""
    from dyncim.methods.catalog import CATALOG
    def kind(m):   # a method's type, through its `extends` chain
        cfg = params["methods"][m]
        return cfg["type"] if "type" in cfg else kind(cfg["extends"])
    return [m for m in params["run"]["methods"] if not CATALOG[kind(m)].needs_stages
            and (CATALOG[kind(m)].max_modalities or n_modalities) >= n_modalities]


def quick_config(ds, methods=None, params=None) -> dict:
    """One seed, two epochs, small networks; every method of params.yaml unless `methods`."""
    params = params or yaml.safe_load((REPO / "params.yaml").read_text())
    methods = methods or runnable(params)
    own_seeds = {m: {"seeds": [0]} for m, cfg in params["methods"].items() if "seeds" in cfg}
    ds = copy.deepcopy(ds)
    ds["train"] = {"epochs": 2, "batch_size": 8, "hidden": [8], "seq_dim": 8}
    return {"seeds": [0], "datasets": {"mine": ds}, "methods": own_seeds, "run": {"datasets": ["mine"], "methods": methods},
            "robustness": {"levels": [0.0, 1.0]}}


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    repo = copy_repo(base / "repo")
    write_set(repo / "mine", split_column=False)     # the files, inside the project: relative paths
    ds = entry(repo / "mine", split=None)
    for m in ds["files"]["modalities"] + [ds["files"]["labels"], ds["files"]["id"]]:
        m["path"] = str(m["path"]).replace(str(repo) + "/", "")
    (repo / "mine.yaml").write_text(yaml.safe_dump(quick_config(ds)))
    r = run(["snakemake", "--cores", "2", "--configfile", "mine.yaml"], repo)
    return repo, r


@pytest.mark.slow
def test_every_method_end_to_end_on_own_files(own_run):
    repo, _ = own_run
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    methods = runnable(params)
    for m in methods:
        res = json.loads((repo / paths.eval_file("mine", m, 0)).read_text())
        assert set(res["modalities"]) == {"vec", "seq", "tab"}, m
        assert m == "unimodal" or 0 <= res["acc"] <= 1, m    # unimodal: per modality only
    ready = json.loads((repo / paths.media_ready("mine")).read_text())
    assert ready["source"] == "files" and ready["split"] == "stratified 60/20/20 seed 0"
    assert set(ready["files"]) == {"mine/vec.npy", "mine/seq.npz", "mine/table.csv"}
    assert (repo / "data/raw/mine/split.csv").is_file() and (repo / "data/features/mine/standardize.npz").is_file()
    store = json.loads((repo / paths.store_ready("mine")).read_text())
    assert {k: v["samples"] for k, v in store["splits"].items()} == {"train": 21, "val": 6, "test": 9}
    summary = (repo / paths.SUMMARY["md"]).read_text()
    assert "## mine" in summary and "split: stratified 60/20/20 seed 0" in summary
    assert all(f"| {m} |" in summary for m in methods)
    assert (repo / paths.REPORT).is_file() and json.loads((repo / paths.robustness_file("mine")).read_text())["runs"]
    # nothing to redo; an edit to one of the user's files reruns from the media step on
    assert dry_counts(repo, configfiles=("mine.yaml",)) == {}
    with edited(repo / "mine" / "table.csv", lambda t: t.replace("id0,", "id0x,", 1)):
        counts = dry_counts(repo, configfiles=("mine.yaml",))
    assert counts["media"] == 1 and counts["extract"] == 1 and counts["train"] == len(methods), counts


@pytest.mark.slow
def test_a_multi_label_set_end_to_end(own_run, tmp_path):
    repo, _ = own_run
    y = write_set(repo / "ml", seed=1)
    hot = np.eye(3, dtype=np.int8)[y]
    hot[::3, 2] = 1
    with open(repo / "ml" / "genres.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["genres"])
        w.writerows([["|".join(n for n, on in zip(("drama", "comedy", "news"), row) if on)] for row in hot])
    ds = entry(repo / "ml", labels={"path": "ml/genres.csv", "column": "genres"}, multilabel=True, split=None, id=None)
    ds["files"]["modalities"] = [{"name": "vec", "path": "ml/vec.npy"}, {"name": "seq", "path": "ml/seq.npz", "key": "x"}]
    (repo / "ml.yaml").write_text(yaml.safe_dump(quick_config(ds, methods=["joint", "unimodal"])))
    run(["snakemake", "--cores", "2", "--configfile", "ml.yaml"], repo)
    res = json.loads((repo / paths.eval_file("mine", "joint", 0)).read_text())
    assert 0 <= res["micro_f1"] <= 1 and set(res["modalities"]) == {"vec", "seq"}
    tr = S.open_split(repo / paths.store_dir("mine") / "train")
    assert tr.meta["multilabel"] and tr.classes == ["comedy", "drama", "news"] and tr.labels.shape[1] == 3


def test_a_method_that_needs_encoder_stages_is_refused_on_sequence_files_before_any_job(tmp_path):
    write_set(tmp_path / "mine")
    cfg = quick_config(entry(tmp_path / "mine"), methods=["joint", "greedy"])
    from snakemake.utils import update_config
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    update_config(p, cfg)
    with pytest.raises(C.ParamsError, match="'greedy' .* data set 'mine' has sequence modalities"):
        C.resolve(p)
