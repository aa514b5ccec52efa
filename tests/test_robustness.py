import csv
import io
import json
import statistics

import pytest
import torch
import yaml

from dyncim import config as C
from dyncim import paths, robustness
from dyncim.atomic import torch_save, write_json
from dyncim.evaluate import evaluate_run
from dyncim.train.job import train_seed
from tests.conftest import REPO, tiny_features

METHODS = {"joint": [0, 1], "unimodal": [0, 1], "dyncim": [0, 1, 2], "dyncim-no-gate": [0, 1]}


def tiny_pipeline(root, epochs=2):
    """What the train and evaluate steps leave for a tiny data set `tiny` (two modalities, four
    classes): models, curves, TensorBoard logs and evaluation JSONs under `root`, the features
    file, and the resolved params restricted to it. Seeds: dyncim 3, the others 2."""
    params = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["train"].update(epochs=epochs, hidden=[8])
    params["datasets"]["tiny"] = {"source": "synthetic", "synthetic": C._fill_defaults(
        C.load_schema()["$defs"]["synthetic"], {"modalities": ["dominant", "xor"], "per_class": 20})}
    params["run"] = {"datasets": ["tiny"], "methods": list(METHODS)}
    for m, seeds in METHODS.items():
        params["methods"][m]["seeds"] = seeds
    params["threads"] = 1
    feats = tiny_features(n=120, dims=(5, 4), n_classes=4)
    feats.names = ["dominant", "xor"]
    fpath = root / paths.features_file("tiny")
    torch_save({"format": 1, "names": feats.names, "n_classes": feats.n_classes, "views": feats.views,
                "labels": feats.labels, "split": feats.split, "corrupted": None}, fpath)
    for m, seeds in METHODS.items():
        for s in seeds:
            best = train_seed(params, "tiny", m, s, feats, root, torch.device("cpu"))
            write_json(root / paths.eval_file("tiny", m, s), evaluate_run(best, feats))
    return params, fpath


def shared_pipeline(tmp_path_factory):
    """One tiny pipeline per test session, shared by the test modules that read its outputs
    (read-only): (root, params, features path)."""
    root = tmp_path_factory.getbasetemp() / "tiny-pipeline"
    done = root / "params.json"
    if not done.exists():
        params, fpath = tiny_pipeline(root)
        write_json(done, {"params": params, "features": str(fpath)})
    d = json.loads(done.read_text())
    return root, d["params"], d["features"]


@pytest.fixture
def pipeline(tmp_path_factory):
    return shared_pipeline(tmp_path_factory)


def test_level_zero_is_the_clean_test_accuracy_of_every_run(pipeline, tmp_path):
    root, params, fpath = pipeline
    rec = robustness.write(params, "tiny", fpath, tmp_path / "r.json", tmp_path / "r.csv", root=root)
    assert rec["levels"][0] == 0.0 and rec["names"] == ["dominant", "xor"]
    assert set(rec["runs"]) == set(METHODS) - {"unimodal"} and "unimodal" in rec["skipped"]
    for m, seeds in rec["runs"].items():
        assert sorted(seeds) == [str(s) for s in METHODS[m]]
        for s, r in seeds.items():
            acc = json.loads((root / paths.eval_file("tiny", m, s)).read_text())["acc"]
            assert r["clean"] == acc
            for name in rec["names"]:
                assert r["modalities"][name]["levels"][0] == acc
                assert len(r["modalities"][name]["levels"]) == len(robustness.LEVELS)
    # corruption reaches the models: the heaviest noise or a missing modality changes some accuracy
    changed = [r["modalities"][n]["levels"][-1] != r["clean"] or r["modalities"][n]["missing"] != r["clean"]
               for seeds in rec["runs"].values() for r in seeds.values() for n in rec["names"]]
    assert any(changed)
    # the JSON on disk is the record; summary = mean ± sample std of the per-run numbers
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(rec))
    runs = rec["runs"]["dyncim"].values()
    got = rec["summary"]["dyncim"]["xor"]["levels"][2]
    vals = [r["modalities"]["xor"]["levels"][2] for r in runs]
    assert got == {"mean": statistics.fmean(vals), "std": statistics.stdev(vals), "n": 3}
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert len(rows) == 3 * 2 * (len(robustness.LEVELS) + 1)
    row = next(r for r in rows if r["method"] == "dyncim" and r["modality"] == "xor" and r["level"] == "1")
    assert float(row["acc_mean"]) == pytest.approx(got["mean"], abs=1e-6) and row["n"] == "3"
    assert {r["corruption"] for r in rows} == {"noise", "missing"}


def test_every_method_sees_the_same_corrupted_inputs():
    feats = tiny_features(n=100, dims=(5, 4, 3), n_classes=3)
    idx = feats.index("test")
    a, blocks = robustness.corrupted_copies(feats, idx, levels=(0.0, 1.0, 2.0), seed=7)
    b, _ = robustness.corrupted_copies(feats, idx, levels=(0.0, 1.0, 2.0), seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))   # reproducible
    n = len(idx)
    assert blocks[0] == (None, "clean") and blocks[1:5] == [("m0", 0.0), ("m0", 1.0), ("m0", 2.0), ("m0", "missing")]
    assert len(a.labels) == n * len(blocks) == n * (1 + 3 * 4)
    block = lambda v, k: a.views[v][k * n:(k + 1) * n]
    clean = [v[idx] for v in feats.views]
    for k, (name, level) in enumerate(blocks):
        for v in range(3):
            if name == feats.names[v] and level == "missing":
                assert (block(v, k) == 0).all()
            elif name == feats.names[v]:
                noise = block(v, k) - clean[v]
                if level == 0:
                    assert torch.equal(block(v, k), clean[v])
                else:   # the same draw, scaled: noise at 2 = 2 x noise at 1
                    assert noise.std() == pytest.approx(level, rel=0.3)
            else:
                assert torch.equal(block(v, k), clean[v])   # only one modality corrupted at a time
    n1 = a.views[1][6 * n:7 * n] - clean[1]        # m1 at level 1
    n2 = a.views[1][7 * n:8 * n] - clean[1]        # m1 at level 2
    assert torch.allclose(n2, 2 * n1, atol=1e-5)
    # a modality's noise does not depend on the other modalities (nor, so, on the method's inputs)
    other = tiny_features(n=100, dims=(9, 4, 3), n_classes=3)
    d, _ = robustness.corrupted_copies(other, idx, levels=(0.0, 1.0, 2.0), seed=7)
    assert torch.allclose(d.views[1][6 * n:7 * n] - other.views[1][idx], n1, atol=1e-6)
    e, _ = robustness.corrupted_copies(feats, idx, levels=(0.0, 1.0, 2.0), seed=8)
    assert not torch.equal(e.views[1][6 * n:7 * n], a.views[1][6 * n:7 * n])
