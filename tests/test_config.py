import copy
import json

import pytest
import yaml

from dyncim import config as C
from dyncim.methods.catalog import CATALOG
from tests.conftest import REPO


@pytest.fixture
def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_are_valid(raw):
    p = C.resolve(raw)
    assert set(p["run"]["methods"]) <= set(p["methods"])
    # defaults are filled in for each method type
    assert p["methods"]["joint"]["aux_weight"] == 0.0


def test_schema_method_types_match_catalog():
    schema = C.load_schema()
    assert set(schema["$defs"]["method"]["properties"]["type"]["enum"]) == set(CATALOG)
    for t in CATALOG:
        assert f"method_{t}" in schema["$defs"], t


@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p["train"].__setitem__("epoch", 3), ["train", "'epoch'", "allowed"]),
    (lambda p: p["train"].__setitem__("epochs", "ten"), ["train.epochs", "'ten'", "integer"]),
    (lambda p: p["train"].__setitem__("optimizer", "adam"), ["train.optimizer", "'adam'", "sgd"]),
    (lambda p: p["methods"]["joint"].__setitem__("type", "nope"), ["methods.joint.type", "'nope'"]),
    (lambda p: p["methods"]["joint"].__setitem__("fusionn", "sum"), ["methods.joint", "fusionn", "fusion"]),
    (lambda p: p["run"]["methods"].append("missing"), ["run.methods", "'missing'", "not defined"]),
    (lambda p: p["run"]["datasets"].append("nope"), ["run.datasets", "'nope'"]),
    (lambda p: p["datasets"]["mfeat-pix-zer"].__setitem__("views", ["pix", "xyz"]), ["datasets.mfeat-pix-zer.views.1", "'xyz'"]),
    (lambda p: p["datasets"]["synthetic-bi"]["synthetic"]["corrupt"][0].__setitem__("modality", 5),
     ["datasets.synthetic-bi.synthetic.corrupt.0.modality", "out of range"]),
    (lambda p: p["methods"].__setitem__("ablation", {"extends": "nothere"}), ["methods.ablation.extends", "'nothere'"]),
    (lambda p: p.__setitem__("device", "gpu"), ["device", "'gpu'"]),
    (lambda p: p.__setitem__("split", {"train": 0.9, "val": 0.2}), ["split", "below 1"]),
])
def test_bad_params_name_the_key(raw, mutate, expected):
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(C.ParamsError) as e:
        C.resolve(bad)
    for text in expected:
        assert text in str(e.value), (text, str(e.value))


def test_extends_inherits_and_overrides(raw):
    raw["methods"]["base"] = {"type": "joint", "fusion": "sum", "aux_weight": 0.5, "train": {"lr": 0.01}}
    raw["methods"]["child"] = {"extends": "base", "aux_weight": 1.0, "train": {"epochs": 7}}
    p = C.resolve(raw)
    child = p["methods"]["child"]
    assert (child["type"], child["fusion"], child["aux_weight"]) == ("joint", "sum", 1.0)
    assert child["train"] == {"lr": 0.01, "epochs": 7}


def test_train_config_precedence(raw):
    raw["train"]["lr"] = 0.1
    raw["datasets"]["mfeat-pix-zer"]["train"] = {"lr": 0.2, "epochs": 5}
    raw["methods"]["joint"]["train"] = {"lr": 0.3}
    raw["datasets"]["mfeat-pix-zer"]["method_train"] = {"joint": {"batch_size": 8}}
    p = C.resolve(raw)
    cfg = C.train_config(p, "mfeat-pix-zer", "joint")
    assert (cfg["lr"], cfg["epochs"], cfg["batch_size"]) == (0.3, 5, 8)
    assert C.train_config(p, "mfeat-pix-zer", "unimodal")["lr"] == 0.2
    assert C.train_config(p, "mfeat-fou-mor", "unimodal")["lr"] == 0.1
    # the fingerprint (Snakemake's params trigger) changes with the training config only where it applies
    before = C.run_fingerprint(p, "mfeat-fou-mor", "joint")
    raw["datasets"]["mfeat-pix-zer"]["train"]["epochs"] = 6
    p2 = C.resolve(raw)
    assert C.run_fingerprint(p2, "mfeat-fou-mor", "joint") == before
    assert C.run_fingerprint(p2, "mfeat-pix-zer", "joint") != C.run_fingerprint(p, "mfeat-pix-zer", "joint")


def test_two_modality_methods_rejected_on_trimodal_sets(raw, monkeypatch):
    monkeypatch.setitem(CATALOG, "joint", CATALOG["joint"].__class__("joint", "Joint", max_modalities=2))
    with pytest.raises(C.ParamsError, match="at most 2 modalities.*mfeat-fou-zer-mor"):
        C.resolve(raw)


def test_load_reports_missing_and_broken_files(tmp_path):
    with pytest.raises(C.ParamsError, match="no such params file"):
        C.load(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("train: [unclosed")
    with pytest.raises(C.ParamsError, match="not valid YAML"):
        C.load(tmp_path / "p.yaml")


def test_method_params_per_data_set(raw):
    raw["datasets"]["mfeat-pix-zer"]["method_params"] = {"joint": {"aux_weight": 0.3, "fusion": "sum"}}
    p = C.resolve(raw)
    assert C.method_config(p, "joint", "mfeat-pix-zer")["aux_weight"] == 0.3
    assert C.method_config(p, "joint", "mfeat-fou-mor")["aux_weight"] == 0.0
    assert json.loads(C.run_fingerprint(p, "mfeat-pix-zer", "joint"))["method"]["aux_weight"] == 0.3  # retrains
    raw["datasets"]["mfeat-pix-zer"]["method_params"] = {"joint": {"aux_wieght": 0.3}}
    with pytest.raises(C.ParamsError, match="datasets.mfeat-pix-zer.method_params.joint.*aux_wieght"):
        C.resolve(raw)
    raw["datasets"]["mfeat-pix-zer"]["method_params"] = {"ghost": {}}
    with pytest.raises(C.ParamsError, match="method_params.ghost: unknown method"):
        C.resolve(raw)
