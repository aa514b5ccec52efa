"""The robustness sweep on a feature store (MediaSet): chunked in the runs' evaluation batches,
noise drawn per test sample (the same whatever the method or chunking), missing = the train mean
of the model inputs."""
import csv
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dyncim import config as C
from dyncim import paths
from dyncim.evaluation import robustness
from dyncim.data.sets.dataset import input_stats
from dyncim.data.sets.media_set import open_media
from tests.conftest import TRAIN_CFG
from tests.media_store import av_store, mosei_store

# eval batches of 4: the 9 test clips come in three chunks (4, 4, 1)
TCFG = {**TRAIN_CFG, "epochs": 2, "batch_size": 8, "eval_batch_size": 4, "encoder": "resnet18",
        "resnet_width": 4}
METHODS = {"joint": [0], "dyncim": [0]}
LEVELS = (0.0, 1.0, 4.0)


def method_cfg(t: str) -> dict:
    return {"type": t, **C._fill_defaults(C.load_schema()["$defs"][f"method_{t}"], {})}


@pytest.fixture(scope="module")
def store_pipeline(tmp_path_factory):
    """Two-epoch tiny-ResNet runs of joint and dyncim on a tiny audio-visual store (12 train
    clips, one failed; 9 test clips), and their evaluation JSONs: (root, params, store)."""
    from dyncim.evaluation.evaluate import evaluate_data
    from dyncim.train.job import train_job
    root = tmp_path_factory.mktemp("media-pipeline")
    store = av_store(root / "store", sizes=(12, 6, 9))
    params = {"device": "cpu", "threads": 1, "seeds": [0], "split": {"train": 0.6, "val": 0.2, "seed": 0},
              "resident_fraction": 0.5,
              "train": {**C.TRAIN_DEFAULTS, **TCFG}, "datasets": {"av": {"source": "crema-d"}},
              "methods": {m: {**method_cfg(m), "seeds": s} for m, s in METHODS.items()},
              "run": {"datasets": ["av"], "methods": list(METHODS)}}
    for m, seeds in METHODS.items():
        train_job(C.train_job(params, "av", m), "av", m, seeds, store, root)
    evaluate_data(params, "av", store, root)
    return root, params, store


@pytest.fixture(scope="module")
def av(tmp_path_factory):
    return open_media(av_store(tmp_path_factory.mktemp("store") / "av"))


def test_store_sweep_level_zero_is_the_evaluate_accuracy(store_pipeline, tmp_path):
    root, params, store = store_pipeline
    rec = robustness.write(params, "av", store, tmp_path / "r.json", tmp_path / "r.csv", root=root,
                           levels=LEVELS, seed=3, device="cpu")
    assert rec["names"] == ["audio", "visual"] and rec["levels"] == list(LEVELS) and rec["n_test"] == 9
    assert rec["noise_seed"] == 3 and rec["skipped"] == {} and rec["methods"] == list(METHODS)
    assert "log-magnitudes" in rec["unit"] and "ImageNet-normalised pixel values" in rec["unit"]
    assert set(rec["input_stats"]) == {"audio", "visual"}
    assert all(s["n_samples"] == 11 and s["std"] > 0 for s in rec["input_stats"].values())  # 12 train, 1 failed
    for m, seeds in METHODS.items():
        assert sorted(rec["runs"][m]) == [str(s) for s in seeds]
        for s in seeds:
            r = rec["runs"][m][str(s)]
            acc = json.loads((root / paths.eval_file("av", m, s)).read_text())["acc"]
            assert r["clean"] == acc                       # exactly: the evaluate step's chunks
            assert set(r["modalities"]) == {"audio", "visual"}
            for name in rec["names"]:
                got = r["modalities"][name]
                assert got["levels"][0] == acc and len(got["levels"]) == len(LEVELS)
                assert all(0 <= a <= 1 for a in got["levels"] + [got["missing"]])
                # accuracies are multiples of 1/9 (9 test clips)
                assert all(abs(a * 9 - round(a * 9)) < 1e-5 for a in got["levels"] + [got["missing"]])
    assert rec["summary"]["joint"]["audio"]["missing"]["n"] == 1
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(rec))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert len(rows) == len(METHODS) * 2 * (len(LEVELS) + 1)


class Recorder(torch.nn.Module):
    """A stand-in model that keeps every input it is given and predicts class 0."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, xs):
        self.seen.append([x.clone() for x in xs])
        return SimpleNamespace(fused=torch.zeros(len(xs[0]), 3))


def _blocks_seen(rec: Recorder, n_blocks: int, run_per_chunk: list[list[int]]) -> list[list[torch.Tensor]]:
    """Per block, the inputs the model was given, concatenated over chunks (`run_per_chunk`: the
    blocks the model ran on, per chunk, in order; none for a block: [])."""
    per_block = [[] for _ in range(n_blocks)]
    calls = iter(rec.seen)
    for run in run_per_chunk:
        for b in run:
            per_block[b].append(next(calls))
    return [[torch.cat([c[k] for c in chunks]) for k in range(len(chunks[0]))] if chunks else []
            for chunks in per_block]


def test_every_method_sees_the_same_noise_whatever_the_chunking(av):
    test = av.index("test")
    stats = av.corruption_stats()
    method = SimpleNamespace(predict=lambda model, out: out.fused)
    seen = {}
    for bs in (4, 9):
        model = Recorder()
        tr = lambda clean, pos: robustness._chunk_transforms(av, clean, pos, len(test), LEVELS, 5, [0, 1])
        preds = robustness.predict_chunks(model, method, av, test, bs, tr)
        blocks = robustness.blocks_of(av.names, LEVELS)
        assert len(preds) == len(blocks) and all(p.shape == (9,) for p in preds)
        # the model runs once per block and chunk, except at level 0 (the clean inputs' predictions)
        run = [b for b, (_, level) in enumerate(blocks) if level != 0.0]
        n_chunks = -(-len(test) // bs)
        assert len(model.seen) == n_chunks * len(run)
        seen[bs] = _blocks_seen(model, len(blocks), [run] * n_chunks)
    for b, (a, c) in enumerate(zip(seen[4], seen[9])):
        if a:
            assert all(torch.equal(x, y) for x, y in zip(a, c)), b
    # the helper gives the same inputs for any chunking or order of the test samples
    pos = torch.arange(len(test))
    for m in range(2):
        whole = robustness.corrupted_chunk(av, test, pos, m, 4.0, seed=5)
        perm = torch.tensor([8, 2, 5, 0, 7, 1, 3, 6, 4])
        shuffled = robustness.corrupted_chunk(av, test, perm, m, 4.0, seed=5)
        parts = [robustness.corrupted_chunk(av, test, pos[a:b], m, 4.0, seed=5)
                 for a, b in ((0, 2), (2, 7), (7, 9))]
        for k in range(2):
            assert torch.equal(shuffled[k], whole[k][perm])
            assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])
        # the sweep's inputs are the helper's: block (m, 4.0) of the chunk-4 run
        b = robustness.blocks_of(av.names, LEVELS).index((av.names[m], 4.0))
        assert all(torch.equal(x, y) for x, y in zip(seen[4][b], whole))
        clean = av.batch(test)
        assert torch.equal(whole[1 - m], clean[1 - m])        # only modality m corrupted
        one = robustness.corrupted_chunk(av, test, pos, m, 1.0, seed=5)[m] - clean[m]
        four = whole[m] - clean[m]
        assert torch.allclose(four, 4 * one, atol=1e-4)       # one draw, scaled by the level
        assert (one.std() / stats[m]["std"]).item() == pytest.approx(1.0, rel=0.1)
        other = robustness.corrupted_chunk(av, test, pos, m, 1.0, seed=6)[m]
        assert not torch.equal(other, one + clean[m])         # the noise seed matters
    assert torch.equal(robustness.corrupted_chunk(av, test, pos, 0, 0.0)[0], av.batch(test)[0])


@pytest.mark.parametrize("kind", ["av", "mosei"])
def test_missing_sets_the_modality_to_its_train_mean(tmp_path, kind):
    data = open_media(av_store(tmp_path / "s") if kind == "av" else mosei_store(tmp_path / "s"))
    train, test = data.index("train"), data.index("test")
    stats = input_stats(data, chunk=5)
    xs = data.batch(train)
    for m, s in enumerate(stats):
        x = xs[m].double()
        assert s["n_samples"] == len(train)
        assert s["mean"] == pytest.approx(float(x.mean()), rel=1e-9, abs=1e-9)
        assert s["std"] == pytest.approx(float(x.std()), rel=1e-9)
    assert [s["n_samples"] for s in input_stats(data, n=4)] == [4] * len(data.names)
    assert data.corruption_stats() == input_stats(data)      # the set's unit: over (up to) 512 samples
    clean = data.batch(test)
    for m in range(len(data.names)):
        got = robustness.corrupted_chunk(data, test, torch.arange(len(test)), m, "missing")
        assert got[m].shape == clean[m].shape and got[m].dtype == torch.float32
        assert (got[m] == torch.tensor(stats[m]["mean"], dtype=torch.float32)).all()
        assert all(torch.equal(got[k], clean[k]) for k in range(len(clean)) if k != m)


def _old_store_sweep(built, data, test, levels, stats, seed, batch_size):
    """The sweep as the store path computed it before the data-set protocol: the test split in
    chunks of `batch_size`; per chunk and block the inputs with modality m replaced (level: + level
    x std x a unit draw per sample from numpy's generator seeded (seed, m, position in the test
    split); missing: the train mean) and the fused prediction's arg-max; one accuracy per block."""
    part, _, method, model = built[0]
    M = len(data.names)
    n_blocks = 1 + M * (len(levels) + 1)
    preds = [[] for _ in range(n_blocks)]
    with torch.no_grad():
        for a in range(0, len(test), batch_size):
            pos = list(range(a, min(len(test), a + batch_size)))
            clean = data.batch(test[pos])
            inputs = [clean]
            for m in range(M):
                noise = torch.from_numpy(np.stack([np.random.default_rng([seed, m, p]).standard_normal(
                    tuple(clean[m].shape[1:]), dtype=np.float32) for p in pos]))
                for level in levels:
                    x = clean[m] + level * stats[m]["std"] * noise
                    inputs.append([x if k == m else c for k, c in enumerate(clean)])
                x = torch.full_like(clean[m], stats[m]["mean"])
                inputs.append([x if k == m else c for k, c in enumerate(clean)])
            for b, xs in enumerate(inputs):
                preds[b].append(method.predict(model, model(xs)).argmax(1))
    y = data.labels[test]
    return [float((torch.cat(p) == y).float().mean()) for p in preds]


def test_the_one_sweep_gives_the_store_sweeps_numbers(store_pipeline, tmp_path):
    from dyncim.evaluation.evaluate import load_run
    root, params, store = store_pipeline
    rec = robustness.sweep(params, "av", store, root=root, levels=LEVELS, seed=3, device="cpu")
    data = open_media(store)
    stats = [rec["input_stats"][name] for name in data.names]
    assert stats == input_stats(data)
    test = data.index("test")
    for method, seeds in rec["runs"].items():
        for s, r in seeds.items():
            ck, built = load_run(root / paths.best_model("av", method, int(s)), data, "cpu")
            old = _old_store_sweep(built, data, test, LEVELS, stats, 3, ck["train_cfg"]["eval_batch_size"])
            new = [r["clean"]] + [x for name in rec["names"]
                                  for x in r["modalities"][name]["levels"] + [r["modalities"][name]["missing"]]]
            assert new == old, (method, s)
