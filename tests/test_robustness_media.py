"""The robustness sweep on a feature store (MediaSet): chunked in the runs' evaluation batches,
noise drawn per test sample (the same whatever the method or chunking), missing = the train mean
of the model inputs."""
import csv
import io
import json
from types import SimpleNamespace

import pytest
import torch

from dyncim import config as C
from dyncim import paths, robustness
from dyncim.data.media_set import open_media
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
    from dyncim.evaluate import evaluate_data
    from dyncim.train.job import train_job
    root = tmp_path_factory.mktemp("media-pipeline")
    store = av_store(root / "store", sizes=(12, 6, 9))
    params = {"device": "cpu", "threads": 1, "seeds": [0], "split": {"train": 0.6, "val": 0.2, "seed": 0},
              "train": {**C.TRAIN_DEFAULTS, **TCFG}, "datasets": {"av": {"source": "crema-d"}},
              "methods": {m: {**method_cfg(m), "seeds": s} for m, s in METHODS.items()},
              "run": {"datasets": ["av"], "methods": list(METHODS)}}
    for m, seeds in METHODS.items():
        train_job(params, "av", m, seeds, store, root)
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
    stats = robustness.input_stats(av)
    method = SimpleNamespace(predict=lambda model, out: out.fused)
    seen = {}
    for bs in (4, 9):
        model = Recorder()
        tr = lambda clean, pos: robustness._chunk_transforms(clean, pos, LEVELS, stats, 5, [0, 1])
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
        whole = robustness.corrupted_chunk(av, test, pos, m, 4.0, stats, seed=5)
        perm = torch.tensor([8, 2, 5, 0, 7, 1, 3, 6, 4])
        shuffled = robustness.corrupted_chunk(av, test, perm, m, 4.0, stats, seed=5)
        parts = [robustness.corrupted_chunk(av, test, pos[a:b], m, 4.0, stats, seed=5)
                 for a, b in ((0, 2), (2, 7), (7, 9))]
        for k in range(2):
            assert torch.equal(shuffled[k], whole[k][perm])
            assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])
        # the sweep's inputs are the helper's: block (m, 4.0) of the chunk-4 run
        b = robustness.blocks_of(av.names, LEVELS).index((av.names[m], 4.0))
        assert all(torch.equal(x, y) for x, y in zip(seen[4][b], whole))
        clean = av.batch(test)
        assert torch.equal(whole[1 - m], clean[1 - m])        # only modality m corrupted
        one = robustness.corrupted_chunk(av, test, pos, m, 1.0, stats, seed=5)[m] - clean[m]
        four = whole[m] - clean[m]
        assert torch.allclose(four, 4 * one, atol=1e-4)       # one draw, scaled by the level
        assert (one.std() / stats[m]["std"]).item() == pytest.approx(1.0, rel=0.1)
        other = robustness.corrupted_chunk(av, test, pos, m, 1.0, stats, seed=6)[m]
        assert not torch.equal(other, one + clean[m])         # the noise seed matters
    assert torch.equal(robustness.corrupted_chunk(av, test, pos, 0, 0.0, stats)[0], av.batch(test)[0])


@pytest.mark.parametrize("kind", ["av", "mosei"])
def test_missing_sets_the_modality_to_its_train_mean(tmp_path, kind):
    data = open_media(av_store(tmp_path / "s") if kind == "av" else mosei_store(tmp_path / "s"))
    train, test = data.index("train"), data.index("test")
    stats = robustness.input_stats(data, chunk=5)
    xs = data.batch(train)
    for m, s in enumerate(stats):
        x = xs[m].double()
        assert s["n_samples"] == len(train)
        assert s["mean"] == pytest.approx(float(x.mean()), rel=1e-9, abs=1e-9)
        assert s["std"] == pytest.approx(float(x.std()), rel=1e-9)
    assert [s["n_samples"] for s in robustness.input_stats(data, n=4)] == [4] * len(data.names)
    clean = data.batch(test)
    for m in range(len(data.names)):
        got = robustness.corrupted_chunk(data, test, torch.arange(len(test)), m, "missing", stats)
        assert got[m].shape == clean[m].shape and got[m].dtype == torch.float32
        assert (got[m] == torch.tensor(stats[m]["mean"], dtype=torch.float32)).all()
        assert all(torch.equal(got[k], clean[k]) for k in range(len(clean)) if k != m)
