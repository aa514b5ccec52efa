import csv
import io
import json
import statistics

import pytest
import torch
import yaml

from dyncim import config as C
from dyncim import paths
from dyncim.evaluation import robustness
from dyncim.atomic import torch_save, write_json
from dyncim.evaluation.evaluate import evaluate_run
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
    fpath = root / paths.feature_file("tiny")
    torch_save({"format": 1, "names": feats.names, "n_classes": feats.n_classes, "views": feats.views,
                "labels": feats.labels, "split": feats.split, "corrupted": None}, fpath)
    for m, seeds in METHODS.items():
        for s in seeds:
            best = train_seed(C.train_job(params, "tiny", m), "tiny", m, s, feats, root, torch.device("cpu"))
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
    n, pos = len(idx), torch.arange(len(idx))
    levels = (0.0, 1.0, 2.0)
    blocks = robustness.blocks_of(feats.names, levels)
    assert blocks[0] == (None, "clean") and blocks[1:5] == [("m0", 0.0), ("m0", 1.0), ("m0", 2.0), ("m0", "missing")]
    assert len(blocks) == 1 + 3 * 4
    chunk = lambda data, m, level, seed=7, at=pos: robustness.corrupted_chunk(data, idx, at, m, level, seed)
    clean = [v[idx] for v in feats.views]
    for name, level in blocks[1:]:
        m = feats.names.index(name)
        a, b = chunk(feats, m, level), chunk(feats, m, level)
        assert all(torch.equal(x, y) for x, y in zip(a, b))                           # reproducible
        assert all(torch.equal(a[k], clean[k]) for k in range(3) if k != m)           # one modality at a time
        if level == "missing":
            assert (a[m] == 0).all()                                                  # zeros: the train mean
        elif level == 0:
            assert torch.equal(a[m], clean[m])
        else:
            assert (a[m] - clean[m]).std() == pytest.approx(level, rel=0.3)           # in train stds (1 here)
        # the same inputs whatever the chunking
        parts = [chunk(feats, m, level, at=pos[i:j]) for i, j in ((0, 7), (7, 8), (8, n))]
        assert torch.equal(torch.cat([p[m] for p in parts]), a[m])
    n1 = chunk(feats, 1, 1.0)[1] - clean[1]
    n2 = chunk(feats, 1, 2.0)[1] - clean[1]
    assert torch.allclose(n2, 2 * n1, atol=1e-5)                    # the same draw, scaled by the level
    # a modality's noise does not depend on the other modalities (nor, so, on the method's inputs)
    other = tiny_features(n=100, dims=(9, 4, 3), n_classes=3)
    assert torch.allclose(chunk(other, 1, 1.0)[1] - other.views[1][idx], n1, atol=1e-6)
    assert not torch.equal(chunk(feats, 1, 1.0, seed=8)[1], n1 + clean[1])   # the noise seed matters
    # the draw is the one the stacked sweep made: torch's generator seeded with seed * 1000 + m,
    # one (n, d) draw over the whole test split
    g = torch.Generator().manual_seed(7 * 1000 + 1)
    assert torch.equal(chunk(feats, 1, 1.0)[1], clean[1] + torch.randn(clean[1].shape, generator=g))


def _old_feature_sweep(built, feats, test, levels, seed, batch_size):
    """The sweep as the stacked path computed it on a feature file before the data-set protocol: the
    clean test split and, per modality, one copy per level (m + level x one torch draw seeded
    seed * 1000 + m) and one with m zeroed, stacked and passed through the model in batches of
    `batch_size` rows; one accuracy per block."""
    from dyncim.data.sets.feature_set import FeatureSet
    from dyncim.train.inference import evaluate_split
    n = len(test)
    clean = [v[test] for v in feats.views]
    stacked, n_blocks = [[x] for x in clean], 1
    for m in range(len(feats.names)):
        noise = torch.randn(clean[m].shape, generator=torch.Generator().manual_seed(seed * 1000 + m))
        variants = [clean[m] + level * noise for level in levels] + [torch.zeros_like(clean[m])]
        n_blocks += len(variants)
        for k, x in enumerate(clean):
            stacked[k] += variants if k == m else [x] * len(variants)
    big = FeatureSet(list(feats.names), feats.n_classes, [torch.cat(s) for s in stacked],
                     feats.labels[test].repeat(n_blocks), torch.full((n * n_blocks,), 2, dtype=torch.int8), None)
    part, _, method, model = built[0]
    fused, _, _ = evaluate_split(model, method, big, torch.arange(n * n_blocks), batch_size)
    return (fused.argmax(1) == big.labels).view(n_blocks, n).float().mean(1).tolist()


def test_the_one_sweep_gives_the_stacked_sweeps_numbers_on_a_feature_file(pipeline, tmp_path):
    from dyncim.data.sets.feature_set import load
    from dyncim.evaluation.evaluate import load_run
    root, params, fpath = pipeline
    levels = (0.0, 0.5, 3.0)
    rec = robustness.sweep(params, "tiny", fpath, root=root, levels=levels, seed=4)
    assert rec["unit"] == "noise std in units of the modality's train feature std; missing = zeros (train mean)"
    assert set(rec) == {"data", "names", "methods", "levels", "noise_seed", "n_test", "unit", "runs", "skipped",
                        "summary"}
    feats = load(fpath)
    test = feats.index("test")
    for method, seeds in rec["runs"].items():
        for s, r in seeds.items():
            ck, built = load_run(root / paths.best_model("tiny", method, int(s)), feats, "cpu")
            for bs in (ck["train_cfg"]["eval_batch_size"], 10):    # batches across the blocks, or not
                old = _old_feature_sweep(built, feats, test, levels, 4, bs)
                new = [r["clean"]] + [x for name in rec["names"]
                                      for x in r["modalities"][name]["levels"] + [r["modalities"][name]["missing"]]]
                assert new == old, (method, s, bs)
