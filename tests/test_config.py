import ast
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
    """The list of method types: the catalog's keys, the schema's enum and its per-type sections agree."""
    schema = C.load_schema()
    assert set(schema["$defs"]["method"]["properties"]["type"]["enum"]) == set(CATALOG)
    assert {k[len("method_"):] for k in schema["$defs"] if k.startswith("method_")} == set(CATALOG)


def test_training_defaults_live_in_the_schema_only():
    schema = C.load_schema()["$defs"]["train"]["properties"]
    assert C.TRAIN_DEFAULTS == {k: v["default"] for k, v in schema.items()}
    tree = ast.parse((REPO / "dyncim/config.py").read_text())
    literals = [n for n in ast.walk(tree) if isinstance(n, ast.Dict)
                and {"epochs", "lr"} <= {k.value for k in n.keys if isinstance(k, ast.Constant)}]
    assert not literals  # the config module writes no training default itself


def test_snakemake_reads_params_yaml_as_the_cli_does():
    """The Snakefile resolves Snakemake's `config` and passes each job its part: the same values
    (and types) as the CLI resolving params.yaml, through the JSON round trip."""
    from snakemake.common.configfile import load_configfile
    p = C.resolve(load_configfile(str(REPO / "params.yaml")))
    assert p == C.load(REPO / "params.yaml")
    for data in p["run"]["datasets"]:
        for method in p["run"]["methods"]:
            job = json.loads(C.job_json(C.train_job(p, data, method)))
            for fn in (C.train_config, lambda q, d, m: C.method_config(q, m, d)):
                got, want = fn(job, data, method), fn(p, data, method)
                assert got == want and {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
            assert C.run_fingerprint(job, data, method) == C.run_fingerprint(p, data, method)
            assert job["methods"][method]["seeds"] == p["methods"][method]["seeds"]
            assert (job["device"], job["threads"]) == (C.data_device(p, data), p["threads"])


def test_job_configurations_hold_only_what_the_job_reads(raw):
    raw["datasets"]["mfeat-pix-zer"]["method_params"] = {"unimodal": {}}
    raw["datasets"]["mfeat-pix-zer"]["method_train"] = {"unimodal": {"lr": 0.3}}
    p = C.resolve(raw)
    base = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    # another method's overrides on this data set leave joint's job (its rerun trigger) alone
    assert C.job_json(C.train_job(p, "mfeat-pix-zer", "joint")) == C.job_json(C.train_job(base, "mfeat-pix-zer", "joint"))
    assert C.job_json(C.train_job(p, "mfeat-pix-zer", "unimodal")) != C.job_json(C.train_job(base, "mfeat-pix-zer", "unimodal"))
    # every mfeat configuration shares one split, whatever its views
    assert C.split_job(p, C.split_name(p, "mfeat-pix-zer")) == C.split_job(p, C.split_name(p, "mfeat-fou-mor"))
    ev = C.evaluate_job(p, "synthetic-bi")
    assert ev["run"] == {"datasets": ["synthetic-bi"], "methods": p["run"]["methods"]}
    assert C.report_job(p)["methods"]["dyncim"] == {"type": "dyncim", "seeds": p["methods"]["dyncim"]["seeds"]}


def test_config_overrides_get_their_types_back():
    # `snakemake --config 'train={epochs: 3, lr: 0.02, hidden: [8]}'` yields strings below the top level
    assert C.retype({"train": {"epochs": "3", "lr": "0.02", "hidden": ["8"], "optimizer": "sgd"},
                     "methods": {"dyncim": {"gate": "false"}}, "device": "cuda:0", "x": "nan"}) == \
        {"train": {"epochs": 3, "lr": 0.02, "hidden": [8], "optimizer": "sgd"},
         "methods": {"dyncim": {"gate": False}}, "device": "cuda:0", "x": "nan"}


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
    raw["run"]["datasets"].append("mfeat-fou-zer-mor")
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


def test_gate_input_grad_needs_the_reference_implementation():
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["methods"]["dyncim"]["gate_input_grad"] = True
    with pytest.raises(C.ParamsError, match=r"methods.dyncim.gate_input_grad: needs impl: reference"):
        C.resolve(p)
    p["methods"]["dyncim"]["impl"] = "reference"
    assert C.resolve(p)["methods"]["dyncim"]["gate_input_grad"] is True


def test_paper_scale_data_sets(raw):
    raw["datasets"]["crema-d"] = {"source": "crema-d"}
    raw["datasets"]["ks"] = {"source": "kinetics-sounds", "media": {"from_dir": "/k400"}, "device": "cpu"}
    raw["datasets"]["mosei"] = {"source": "cmu-mosei", "media": {"from_path": "/m.pkl", "task": "7class"}}
    p = C.resolve(raw)
    assert p["datasets"]["crema-d"]["media"]["workers"] == 4 and "base_url" not in p["datasets"]["crema-d"]["media"]
    assert [C.n_modalities(p["datasets"][d]) for d in ("crema-d", "ks", "mosei")] == [2, 2, 3]
    # where jobs run: feature-vector sets on the CPU under auto, paper-scale sets on the device
    assert C.data_device(p, "mfeat-pix-zer") == "cpu" and C.data_device(p, "crema-d") == "auto"
    assert C.data_device(p, "ks") == "cpu" and C.train_job(p, "crema-d", "joint")["device"] == "auto"
    assert C.evaluate_job(p, "synthetic-bi")["device"] == "cpu"
    # what reads the store vs the feature file
    assert C.data_file(p, "crema-d") == "data/features/crema-d/store.json"
    assert C.data_file(p, "mfeat-pix-zer") == "data/features/mfeat-pix-zer.pt"
    # the extraction's configuration leaves out where the raw files came from (not a rerun trigger)
    assert C.data_job(p, "ks") == {"dataset": {"source": "kinetics-sounds", "media": {"workers": 4}}}
    assert C.data_job(p, "mosei")["dataset"]["media"] == {"workers": 4, "task": "7class"}
    assert C.media_job(p, "ks")["dataset"]["media"]["from_dir"] == "/k400"


@pytest.mark.parametrize("entry, expected", [
    ({"source": "kinetics-sounds"}, ["datasets.kinetics-sounds", "media"]),
    ({"source": "kinetics-sounds", "media": {"from_dir": "a", "clip_list": "b"}}, ["datasets.kinetics-sounds.media"]),
    ({"source": "cmu-mosei", "media": {"url": "http://x/m.pkl"}}, ["datasets.cmu-mosei.media"]),
    ({"source": "cmu-mosei", "media": {"url": "http://x", "sha256": "ab"}}, ["datasets.cmu-mosei.media"]),
    ({"source": "crema-d", "media": {"base_url": "http://x", "from_dir": "/c"}}, ["datasets.crema-d.media"]),
    ({"source": "crema-d", "views": ["pix", "zer"]}, ["datasets.crema-d"]),
    ({"source": "crema-d", "media": {"workers": 0}}, ["datasets.crema-d.media.workers", "0"]),
    ({"source": "crema-d", "media": {"split": "speakers"}}, ["datasets.crema-d.media.split", "'speakers'"]),
    ({"source": "kinetics-sounds", "media": {"from_dir": "a", "split": "actor-disjoint"}},
     ["datasets.kinetics-sounds.media.split", "has one split", "crema-d"]),
])
def test_bad_paper_scale_entries_name_the_key(raw, entry, expected):
    raw["datasets"][entry["source"]] = entry
    with pytest.raises(C.ParamsError) as e:
        C.resolve(raw)
    for text in expected:
        assert text in str(e.value), (text, str(e.value))


def test_paper_profile_is_valid():
    from snakemake.utils import update_config
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    update_config(p, yaml.safe_load((REPO / "configs" / "paper.yaml").read_text()))
    p = C.resolve(p, "params.yaml + configs/paper.yaml")
    base = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert p["run"]["datasets"] == ["crema-d"] and p["run"]["methods"] == base["run"]["methods"]
    job = C.train_job(p, "cmu-mosei", "joint")
    assert job["train"]["optimizer"] == "adamw" and job["train"]["lr_step"] == 20
    assert C.train_job(p, "crema-d", "dyncim")["train"]["lr_step"] == 70
