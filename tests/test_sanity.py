"""Sanity ranges (dyncim.report.sanity, resources/sanity/ranges.yaml): the range check with published
numbers, which protocols it applies to, and, on real runs through training, evaluation and the
report, that a broken loader (features all zeros: the modality trained alone at chance) is
flagged in summary.md, REPORT.md, sanity.json and the log, while a working one is not."""
import copy
import json

import pytest
import torch
import yaml

from dyncim import config as C
from dyncim import paths
from dyncim.report import summary as report, markdown as report_md, sanity
from dyncim.data.sets import feature_set as features
from dyncim.evaluation.evaluate import evaluate_data
from dyncim.train.job import train_job
from tests.conftest import REPO

CREMA = {"source": "crema-d", "split": "standard", "protocol": {"split": "standard", "task": "binary"}}


def runs_of(**by_method):
    """{method: {seed: evaluation JSON}} with the given own-head / fused accuracies."""
    out = {}
    for method, seeds in by_method.items():
        out[method] = {s: ({"modalities": {n: {"own": v} for n, v in r["own"].items()}, "acc": r.get("acc")})
                       for s, r in enumerate(seeds)}
    return out


def test_range_check_with_published_numbers():
    # CREMA-D audio alone: BalanceBenchmark's 59.38 % is inside the shipped [45, 70]; chance (1/6) is below
    r = sanity.load_ranges()["sets"]["crema-d"]
    low, high = r["unimodal"]["audio"]["range"]
    assert (low, high) == (45, 70)
    assert sanity.status(0.5938, low, high) == "ok"
    assert sanity.status(1 / 6, low, high) == "below"
    assert sanity.status(0.45, low, high) == "ok" and sanity.status(0.70, low, high) == "ok"   # inclusive
    assert sanity.status(0.4499, low, high) == "below" and sanity.status(0.93, low, high) == "above"
    # Kinetics-Sounds joint: 65.63 % inside, 3.2 % (chance over 31 classes) below
    low, high = sanity.load_ranges()["sets"]["kinetics-sounds"]["joint"]["range"]
    assert sanity.status(0.6563, low, high) == "ok" and sanity.status(1 / 31, low, high) == "below"


def test_the_shipped_ranges_name_each_sets_modalities():
    sets = sanity.load_ranges()["sets"]
    names = {"crema-d": {"audio", "visual"}, "kinetics-sounds": {"audio", "visual"}, "ave": {"audio", "visual"},
             "vggsound": {"audio", "visual"}, "cmu-mosei": {"text", "audio", "vision"}}
    for source, want in names.items():
        assert set(sets[source]["unimodal"]) == want, source
        assert "joint" in sets[source]
    for entry in sets.values():   # every range is reasoned: a note, and a source where a number is given
        for e in [*(entry.get("unimodal") or {}).values(), *([entry["joint"]] if "joint" in entry else [])]:
            assert e.get("note") and all(r.get("source") for r in e.get("reported", []))
            assert all(e["range"][0] <= r["value"] <= e["range"][1] for r in e.get("reported", []))


def test_a_bad_ranges_file_names_the_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text(yaml.safe_dump({"unit": "percent", "sets": {"x": {"joint": {"range": [70, 45]}}}}))
    with pytest.raises(ValueError, match=r"r.yaml: sets.x.joint.range: expected \[low, high\]"):
        sanity.load_ranges(bad)
    bad.write_text(yaml.safe_dump({"unit": "fraction", "sets": {}}))
    with pytest.raises(ValueError, match="unit: percent"):
        sanity.load_ranges(bad)


def test_which_runs_are_checked_and_flagged():
    types = {"unimodal": "unimodal", "joint": "joint", "ogm-ge": "ogm-ge"}
    ok = runs_of(unimodal=[{"own": {"audio": 0.60, "visual": 0.52}}, {"own": {"audio": 0.58, "visual": 0.50}}],
                 joint=[{"own": {"audio": 0.3, "visual": 0.2}, "acc": 0.64}],
                 **{"ogm-ge": [{"own": {"audio": 0.1, "visual": 0.1}, "acc": 0.10}]})  # not a checked type
    rec = sanity.check_data(CREMA, ok, types)
    got = {(c["method"], c["what"]): (c["status"], round(c["mean"], 4)) for c in rec["checks"]}
    assert got == {("unimodal", "audio alone"): ("ok", 0.59), ("unimodal", "visual alone"): ("ok", 0.51),
                   ("joint", "fused"): ("ok", 0.64)}
    assert rec["flagged"] is False and rec["split"] == "standard"
    # one modality's loader broken: visual alone at chance on both seeds
    broken = copy.deepcopy(ok)
    for r in broken["unimodal"].values():
        r["modalities"]["visual"]["own"] = 1 / 6
    rec = sanity.check_data(CREMA, broken, types)
    assert rec["flagged"] is True
    (bad,) = [c for c in rec["checks"] if c["status"] != "ok"]
    assert (bad["what"], bad["status"], bad["seeds_outside"]) == ("visual alone", "below", ["0", "1"])
    assert "visual alone: 16.7 % vs published [30, 80] % — **OUTSIDE: below" in "\n".join(sanity.lines(rec))
    assert sanity.warnings({"crema-d": rec}) == [
        "warning: crema-d: unimodal visual alone accuracy 16.7 % is below the published range [30, 80] % "
        "(a broken loader?; resources/sanity/ranges.yaml)"]
    # another protocol (CREMA-D's actor-disjoint split), or a set without ranges: never flagged
    other = {**CREMA, "split": "actor-disjoint", "protocol": {"split": "actor-disjoint"}}
    assert sanity.check_data(other, broken, types)["flagged"] is False
    assert "protocol" in sanity.check_data(other, broken, types)["skipped"]
    embedded = {"source": "synthetic", "split": "stratified 60/20/20 seed 0", "protocol": {}}
    rec = sanity.check_data(embedded, broken, types)
    assert (rec["flagged"], rec["ranged"], rec["checks"]) == (False, False, [])
    # a modality the ranges name but the results lack is reported, not skipped silently
    renamed = runs_of(unimodal=[{"own": {"audio": 0.6, "frames": 0.5}}])
    (c,) = [c for c in sanity.check_data(CREMA, renamed, types)["checks"] if c["status"] == "unchecked"]
    assert "no modality 'visual'" in c["why"]


# --- real runs: train, evaluate, report ------------------------------------------------------

RANGES = {"unit": "percent", "sets": {"synthetic": {"protocol": {}, "unimodal": {
    "dominant": {"range": [80, 100], "note": "this test's own range: the dominant modality is learned fast"}}}}}


def tiny_run(root, broken: bool):
    """`unimodal` and `joint` trained and evaluated on a small synthetic set (4 classes); with
    `broken`, the feature file's views are all zeros, as a loader that returns nothing would give."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(seeds=[0], train={**raw["train"], "epochs": 5, "hidden": [16], "batch_size": 16},
               run={"datasets": ["syn"], "methods": ["unimodal", "joint"]})
    raw["datasets"] = {"syn": {"source": "synthetic", "synthetic": {
        "modalities": ["dominant", "xor"], "classes": 4, "per_class": 40, "dominant": {"dim": 16, "scale": 1.0}}}}
    p = C.resolve(raw)
    feats = root / "syn.pt"
    features.make_split(p["datasets"]["syn"], p["split"], None, root / "split.csv")
    features.build(p["datasets"]["syn"], None, root / "split.csv", feats)
    if broken:
        d = torch.load(feats, weights_only=True)
        d["views"] = [torch.zeros_like(v) for v in d["views"]]
        torch.save(d, feats)
    for m in ("unimodal", "joint"):
        train_job(C.train_job(p, "syn", m), "syn", m, [0], feats, root)
    evaluate_data(C.evaluate_job(p, "syn"), "syn", feats, root)
    return C.report_job(p)


@pytest.mark.parametrize("broken", [False, True], ids=["working-loader", "broken-loader"])
def test_the_report_flags_a_broken_loader_and_only_it(tmp_path, capsys, broken):
    job = tiny_run(tmp_path, broken)
    report.write(job, tmp_path, ranges=RANGES)
    rec = json.loads((tmp_path / paths.SUMMARY["sanity"]).read_text())["syn"]
    (check,) = rec["checks"]
    assert rec["split"] == "stratified 60/20/20 seed 0"
    assert (check["method"], check["what"]) == ("unimodal", "dominant alone")
    own = json.loads((tmp_path / paths.eval_file("syn", "unimodal", 0)).read_text())["modalities"]["dominant"]["own"]
    assert check["mean"] == pytest.approx(own)
    summary = (tmp_path / paths.SUMMARY["md"]).read_text()
    text = report_md.build(job, tmp_path / paths.REPORT, tmp_path, ranges=RANGES)
    warned = capsys.readouterr().err
    assert "split: stratified 60/20/20 seed 0" in summary and "Split: stratified 60/20/20 seed 0." in text
    if broken:   # zeros carry no class: the modality alone is at chance (1/4) at best
        assert own <= 0.4 and check["status"] == "below" and rec["flagged"] is True
        assert "OUTSIDE: below the published range" in summary and "OUTSIDE: below the published range" in text
        assert "warning: syn: unimodal dominant alone accuracy" in warned and "below the published range" in warned
    else:
        assert own >= 0.8 and check["status"] == "ok" and rec["flagged"] is False
        assert "OUTSIDE" not in summary + text and "warning" not in warned
