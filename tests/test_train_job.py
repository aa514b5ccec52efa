"""The train job uses the configuration the rule resolved (`--job`, dyncim.config.train_job) as it
is: its training and method configuration and the run's fingerprint come from the job, never
from resolving the params again."""
import json

import pytest
import torch
import yaml

from dyncim import config as C
from dyncim import paths
from dyncim.atomic import torch_save
from dyncim.train import job as J
from tests.conftest import REPO, tiny_features


def _params():
    params = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["train"].update(epochs=2, hidden=[8])
    params["datasets"]["tiny"] = {"source": "synthetic", "synthetic": C._fill_defaults(
        C.load_schema()["$defs"]["synthetic"], {"modalities": ["dominant", "xor"], "per_class": 20})}
    params["threads"] = 1
    return params


def _features(path):
    feats = tiny_features(n=60, dims=(5, 4), n_classes=4)
    torch_save({"format": 1, "names": ["dominant", "xor"], "n_classes": feats.n_classes, "views": feats.views,
                "labels": feats.labels, "split": feats.split, "corrupted": None}, path)
    return path


def test_the_jobs_configuration_is_the_params_resolved_once():
    p = _params()
    for data in p["datasets"]:
        for method in p["methods"]:
            job = json.loads(C.job_json(C.train_job(p, data, method)))   # as --job carries it
            mcfg = J.method_config(job, method)
            assert mcfg == C.method_config(p, method, data)
            assert job["train"] == C.train_config(p, data, method)
            assert J.run_fingerprint(job, data, mcfg) == C.run_fingerprint(p, data, method)


def test_train_job_reads_the_job_as_it_is_and_resolves_nothing(tmp_path, monkeypatch):
    job = json.loads(C.job_json(C.train_job(_params(), "tiny", "dyncim")))
    job["train"]["epochs"] = 1                           # what the job says is what is trained
    job["methods"]["dyncim"]["alpha"] = 0.25

    def refuse(*args, **kwargs):
        raise AssertionError("the train job resolved the params again")
    for name in ("train_config", "method_config", "run_fingerprint", "dataset_config", "train_job", "resolve"):
        monkeypatch.setattr(C, name, refuse)
    [best] = J.train_job(job, "tiny", "dyncim", [0], _features(tmp_path / "f.pt"), tmp_path)
    ck = torch.load(best, weights_only=False)
    assert ck["train_cfg"] == job["train"] and ck["method_cfg"] == J.method_config(job, "dyncim")
    last = torch.load(tmp_path / paths.last_checkpoint("tiny", "dyncim", 0), weights_only=False)
    assert len(last["history"]) == 1
    assert last["fingerprint"] == (J.run_fingerprint(job, "tiny", J.method_config(job, "dyncim")) + J.code_version()
                                   + "data:" + J.data_fingerprint(tmp_path / "f.pt"))


def test_train_job_refuses_params_that_are_not_the_jobs(tmp_path):
    p = _params()
    fpath = _features(tmp_path / "f.pt")
    with pytest.raises(ValueError, match="expected that job's configuration"):
        J.train_job(p, "tiny", "joint", [0], fpath, tmp_path)
    with pytest.raises(ValueError, match="expected that job's configuration"):
        J.train_job(C.train_job(p, "tiny", "dyncim"), "tiny", "joint", [0], fpath, tmp_path)


def _features_n(path, n):
    feats = tiny_features(n=n, dims=(5, 4), n_classes=4, seed=n)
    torch_save({"format": 1, "names": ["dominant", "xor"], "n_classes": feats.n_classes, "views": feats.views,
                "labels": feats.labels, "split": feats.split, "corrupted": None}, path)
    return path


@pytest.mark.parametrize("method", ["joint", "dyncim"])
def test_changed_data_starts_a_fresh_run_instead_of_resuming(tmp_path, method):
    job = json.loads(C.job_json(C.train_job(_params(), "tiny", method)))
    fpath = _features_n(tmp_path / "f.pt", 60)
    [best] = J.train_job(job, "tiny", method, [0], fpath, tmp_path)
    old = best.read_bytes()
    _features_n(fpath, 65)                               # the data set was rebuilt: more training rows
    [best] = J.train_job(job, "tiny", method, [0], fpath, tmp_path)   # dyncim crashed here on its memory
    assert best.read_bytes() != old
    fresh = tmp_path / "fresh"
    [ref] = J.train_job(job, "tiny", method, [0], fpath, fresh)
    a, b = torch.load(best, weights_only=False), torch.load(ref, weights_only=False)
    for pa, pb in zip(a["parts"], b["parts"]):       # exactly what a run on the new data alone gives
        assert all(torch.equal(pa["state"][k], pb["state"][k]) for k in pa["state"])


def test_a_checkpoint_that_does_not_fit_its_data_is_refused_by_name(tmp_path, monkeypatch):
    job = json.loads(C.job_json(C.train_job(_params(), "tiny", "dyncim")))
    monkeypatch.setattr(J, "data_fingerprint", lambda path: "same")   # a fingerprint that missed the change
    fpath = _features_n(tmp_path / "f.pt", 60)
    J.train_job(job, "tiny", "dyncim", [0], fpath, tmp_path)
    from dyncim.train.loop import CheckpointMismatch
    ckpt = tmp_path / paths.last_checkpoint("tiny", "dyncim", 0)
    with pytest.raises(CheckpointMismatch) as err:
        J.train_job(job, "tiny", "dyncim", [0], _features_n(fpath, 65), tmp_path)
    assert str(ckpt) in str(err.value) and "train samples: 36 in the checkpoint, 39 in the data" in str(err.value)
