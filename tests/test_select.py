"""Method settings chosen on validation (`select`, dyncim.train.select): the rule, the training
job that applies it, its record in the evaluation and the report, and the params errors."""
import copy
import json
import shutil

import pytest
import torch
import yaml

from dyncim import config as C
from dyncim import paths
from dyncim.report import markdown as report_md
from dyncim.atomic import torch_save
from dyncim.evaluation.evaluate import evaluate_run
from dyncim.train import select
from dyncim.train.job import train_job
from tests.conftest import REPO, tiny_features

CANDIDATES = [{"fusion": "concat"}, {"fusion": "sum", "fused_weight": 0.5, "aux_weight": 0.5},
              {"fusion": "sum"}]


def test_the_rule_takes_the_highest_score_and_the_first_listed_on_a_tie():
    assert select.choose([0.5, 0.7, 0.6]) == 1
    assert select.choose([0.7, 0.5, 0.7]) == 0
    assert select.choose([0.2]) == 0
    # a run's score: its best validation figure, averaged over its parts (unimodal trains two)
    assert select.part_score([{"best_val_acc": 0.5, "best_epoch": 3}, {"best_val_acc": 0.7}]) == pytest.approx(0.6)
    assert select.part_score([{"best_val_micro_f1": 0.4}]) == 0.4
    mcfg = {"type": "joint", "fusion": "concat", "aux_weight": 0.0, "select": [{"aux_weight": 1.0}, {"fusion": "sum"}],
            "select_seeds": 2}
    assert select.candidates(mcfg) == [{"type": "joint", "fusion": "concat", "aux_weight": 1.0},
                                       {"type": "joint", "fusion": "sum", "aux_weight": 0.0}]
    assert select.selection_seeds(mcfg, [4, 5, 6]) == [4, 5]
    assert select.selection_seeds({"select": []}, [4, 5, 6]) == [4]


def _params(select_seeds=2):
    params = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["train"].update(epochs=3, hidden=[8])
    params["threads"] = 1
    params["methods"]["joint"].update(seeds=[0, 1, 2], select=copy.deepcopy(CANDIDATES), select_seeds=select_seeds)
    return params


def _save(feats, path):
    torch_save({"format": 1, "names": feats.names, "n_classes": feats.n_classes, "views": feats.views,
                "labels": feats.labels, "split": feats.split, "corrupted": None}, path)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """One selecting job (3 candidates on 2 of 3 seeds), and the same job on a copy of the data
    whose test labels are scrambled."""
    out = {}
    for name in ("clean", "scrambled"):
        root = tmp_path_factory.mktemp(name)
        feats = tiny_features(n=150, dims=(5, 4), n_classes=3, seed=3)
        if name == "scrambled":
            test = feats.split == 2
            feats.labels[test] = (feats.labels[test] + 1) % 3
        fpath = root / "features.pt"
        _save(feats, fpath)
        train_job(C.train_job(_params(), "mfeat-pix-zer", "joint"), "mfeat-pix-zer", "joint", [0, 1, 2], fpath, root)
        out[name] = (root, feats)
    return out


def test_the_job_keeps_the_candidate_with_the_best_validation_score(selected):
    root, feats = selected["clean"]
    record = json.loads((root / paths.manifest("mfeat-pix-zer", "joint")).read_text())["selection"]
    assert record["seeds"] == [0, 1] and [c["settings"] for c in record["candidates"]] == CANDIDATES
    # each candidate's score is read back from its own checkpoints, independently of the record
    for i, c in enumerate(record["candidates"]):
        vals = [_load(root / paths.best_model("mfeat-pix-zer", f"joint/select/candidate{i}", s))
                ["parts"][0]["best_val_acc"] for s in (0, 1)]
        assert c["val"] == pytest.approx(sum(vals) / 2)
        assert not (root / paths.model_dir("mfeat-pix-zer", f"joint/select/candidate{i}") / "seed2").exists()
    vals = [c["val"] for c in record["candidates"]]
    assert record["chosen"] == vals.index(max(vals))
    chosen = {**C.method_config(_params(), "joint", "mfeat-pix-zer"), **CANDIDATES[record["chosen"]]}
    chosen = select.base_config(chosen)
    for s in (0, 1, 2):
        ck = _load(root / paths.best_model("mfeat-pix-zer", "joint", s))
        assert ck["method_cfg"] == chosen and ck["selection"] == record and ck["method"] == "joint"
    # the selection seeds' runs are the winner's, copied (same weights), not retrained
    for s in (0, 1):
        won = _load(root / paths.best_model("mfeat-pix-zer", f"joint/select/candidate{record['chosen']}", s))
        mine = _load(root / paths.best_model("mfeat-pix-zer", "joint", s))
        assert all(torch.equal(won["parts"][0]["state"][k], v) for k, v in mine["parts"][0]["state"].items())
        assert (root / paths.runs_dir("mfeat-pix-zer", "joint", s)).is_dir()
        assert (root / paths.curves_file("mfeat-pix-zer", "joint", s)).is_file()
    # candidates' curves stay out of the DVC plots tree
    assert sorted(p.name for p in (root / "results/curves/mfeat-pix-zer/joint").iterdir()) == \
        ["seed0.csv", "seed1.csv", "seed2.csv"]
    # the evaluation carries the record, and REPORT.md prints it with the winner in bold
    res = evaluate_run(root / paths.best_model("mfeat-pix-zer", "joint", 2), feats)
    assert res["selection"] == record
    lines = report_md.selection_section("mfeat-pix-zer", {"joint": {2: res}, "joint-sum": {0: {"acc": 0.5}}})
    rows = [x for x in lines if x.startswith("| joint") or x.startswith("| **joint")]
    assert len(rows) == 3 and sum(r.startswith("| **joint**") for r in rows) == 1
    assert "chosen" in rows[record["chosen"]] and f"{vals[record['chosen']]:.3f}" in rows[record["chosen"]]


def test_the_test_split_plays_no_part(selected):
    clean = json.loads((selected["clean"][0] / paths.manifest("mfeat-pix-zer", "joint")).read_text())
    scrambled = json.loads((selected["scrambled"][0] / paths.manifest("mfeat-pix-zer", "joint")).read_text())
    assert clean["selection"] == scrambled["selection"]


def test_a_rerun_resumes_every_run_instead_of_retraining(selected, tmp_path):
    root, _ = selected["clean"]
    work = tmp_path / "again"
    shutil.copytree(root, work)
    lasts = sorted(work.rglob("last*.pt"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in lasts}
    train_job(C.train_job(_params(), "mfeat-pix-zer", "joint"), "mfeat-pix-zer", "joint", [0, 1, 2],
              work / "features.pt", work)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in lasts}
    # the candidates' and seed 2's checkpoints untouched (nothing trained); the winner's are copied
    # again onto seeds 0 and 1, byte for byte
    copied = {work / paths.last_checkpoint("mfeat-pix-zer", "joint", s) for s in (0, 1)}
    assert len(lasts) == 3 * 2 + 3 and copied < set(lasts)
    assert all(after[p] == before[p] for p in lasts if p not in copied)
    assert all(after[p][1] == before[p][1] for p in copied)
    rec = lambda r: json.loads((r / paths.manifest("mfeat-pix-zer", "joint")).read_text())["selection"]  # noqa: E731
    assert rec(work) == rec(root)


def _resolve(raw):
    return C.resolve(raw, "p.yaml")


def _raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["methods"]["ogm-ge"].update(select=[{"alpha": 0.1}, {"alhpa": 0.8}]),
     r"methods\.ogm-ge\.select\.1: unknown key\(s\) \['alhpa'\]"),
    (lambda r: r["methods"]["ogm-ge"].update(select=[{"alpha": 0.1}, {"alpha": -1}]),
     r"methods\.ogm-ge\.select\.1\.alpha: -1 is less than the minimum"),
    (lambda r: r["methods"]["ogm-ge"].update(select=[{"alpha": 0.1}]),
     r"methods\.ogm-ge\.select: .* is too short"),
    (lambda r: r["methods"]["ogm-ge"].update(select=[{"alpha": 0.1}, {"alpha": 0.1}]),
     r"methods\.ogm-ge\.select: .* non-unique"),
    (lambda r: r["methods"]["ogm-ge"].update(select=[{"alpha": 0.1}, {"alpha": 0.8}], select_seeds=4),
     r"methods\.ogm-ge\.select_seeds: 4, but the method has 3 seeds"),
    (lambda r: r["methods"]["ogm-ge"].update(select_seeds=1),
     r"methods\.ogm-ge\.select_seeds: set without `select`"),
    (lambda r: r["datasets"]["mfeat-pix-zer"].update(method_params={"pmr": {"select": [{"alpha": 2.0}, {"mu": "x"}]}}),
     r"datasets\.mfeat-pix-zer\.method_params\.pmr\.select\.1\.mu: 'x' has the wrong type"),
    (lambda r: r["datasets"]["mfeat-pix-zer"].update(method_params={"pmr": {"select_seeds": 0}}),
     r"datasets\.mfeat-pix-zer\.method_params\.pmr\.select_seeds: 0 is less than the minimum"),
])
def test_bad_candidates_are_named_before_any_job_runs(edit, message):
    raw = _raw()
    edit(raw)
    with pytest.raises(C.ParamsError, match=message):
        _resolve(raw)


def test_a_data_set_can_select_where_the_others_keep_the_default():
    raw = _raw()
    raw["datasets"]["synthetic-bi"]["method_params"] = {"ogm-ge": {"select": [{"alpha": 0.1}, {"alpha": 0.8}]}}
    p = _resolve(raw)
    assert C.method_config(p, "ogm-ge", "synthetic-bi")["select"] == [{"alpha": 0.1}, {"alpha": 0.8}]
    assert "select" not in C.method_config(p, "ogm-ge", "mfeat-pix-zer")
    # the other data set's training job (its rerun trigger) is unchanged by the selection
    assert C.job_json(C.train_job(p, "mfeat-pix-zer", "ogm-ge")) == \
        C.job_json(C.train_job(_resolve(_raw()), "mfeat-pix-zer", "ogm-ge"))
