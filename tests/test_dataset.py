"""The data-set protocol (dyncim.data.sets.dataset.DataSet): a feature file's FeatureSet and a store's
MediaSet both implement it, and what the robustness sweep asks of them."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dyncim.data.sets.dataset import DataSet, corrupt_modality, input_stats
from dyncim.data.sets.feature_set import FeatureSet
from dyncim.data.sets.media_set import MediaSet, open_media
from tests.conftest import tiny_features
from tests.media_store import av_store, mosei_store


@pytest.fixture(scope="module")
def av(tmp_path_factory):
    return open_media(av_store(tmp_path_factory.mktemp("store") / "av"))


def test_both_kinds_of_data_set_are_data_sets(av):
    feats = tiny_features()
    for data in (feats, av):
        assert isinstance(data, DataSet)
        assert isinstance(data.to("cpu"), DataSet) and isinstance(data.subset([1]), DataSet)
        assert data.subset([1]).names == [data.names[1]]
        assert not data.multilabel and data.labels.dim() == 1
    assert isinstance(feats, FeatureSet) and isinstance(av, MediaSet)
    # something with only some of the members is not one
    assert not isinstance(SimpleNamespace(names=["a"], n_classes=2, index=lambda part: None), DataSet)
    multi = tiny_features()
    multi.labels = torch.nn.functional.one_hot(multi.labels).float()
    assert multi.multilabel


def test_a_feature_files_unit_is_its_train_std_and_its_noise_one_draw_per_modality():
    feats = tiny_features(n=100, dims=(5, 4))
    assert feats.corruption_stats() == [{"mean": 0.0, "std": 1.0}] * 2   # standardised on train
    assert feats.corruption_record() == {
        "unit": "noise std in units of the modality's train feature std; missing = zeros (train mean)"}
    n = 20
    whole = torch.randn((n, 4), generator=torch.Generator().manual_seed(3 * 1000 + 1))
    assert torch.equal(feats.corruption_noise(1, torch.arange(n), n, 3), whole)
    assert torch.equal(feats.corruption_noise(1, torch.tensor([4, 2, 19]), n, 3), whole[[4, 2, 19]])
    xs = feats.batch(torch.arange(n))
    got = feats.corrupt(xs, 1, 2.0, whole)
    assert torch.equal(got[0], xs[0]) and torch.equal(got[1], xs[1] + 2.0 * whole)
    assert (feats.corrupt(xs, 0, "missing")[0] == 0).all()
    assert feats.corrupt(xs, 0, 0.0)[0] is xs[0]


@pytest.mark.parametrize("kind", ["av", "mosei"])
def test_a_stores_unit_is_its_train_input_std_and_its_noise_drawn_per_sample(tmp_path, kind):
    data = open_media(av_store(tmp_path / "s") if kind == "av" else mosei_store(tmp_path / "s"))
    stats = data.corruption_stats()
    assert stats == input_stats(data) and data.corruption_stats() is stats   # computed once
    rec = data.corruption_record()
    assert rec["input_stats"] == dict(zip(data.names, stats)) and "train input std" in rec["unit"]
    test = data.index("test")
    xs = data.batch(test)
    for m, x in enumerate(xs):
        pos = torch.arange(len(test))
        noise = data.corruption_noise(m, pos, len(test), 5)
        assert noise.shape == x.shape and noise.dtype == torch.float32
        want = np.random.default_rng([5, m, 3]).standard_normal(tuple(x.shape[1:]), dtype=np.float32)
        assert np.array_equal(noise[3].numpy(), want)                     # (seed, modality, position)
        assert torch.equal(data.corruption_noise(m, pos[3:5], 99, 5), noise[3:5])   # n plays no part
        got = data.corrupt(xs, m, 2.0, noise)
        assert torch.equal(got[m], x + 2.0 * stats[m]["std"] * noise)
        assert (data.corrupt(xs, m, "missing")[m] == torch.tensor(stats[m]["mean"], dtype=torch.float32)).all()
        assert all(got[k] is xs[k] for k in range(len(xs)) if k != m)


def test_corrupt_modality_replaces_one_modality():
    xs = [torch.ones(2, 3), torch.zeros(2, 4)]
    noise = torch.full((2, 4), 0.5)
    out = corrupt_modality(xs, 1, 4.0, {"mean": -1.0, "std": 2.0}, noise)
    assert out[0] is xs[0] and torch.equal(out[1], torch.full((2, 4), 4.0))
    assert torch.equal(corrupt_modality(xs, 0, "missing", {"mean": -1.0, "std": 2.0})[0], torch.full((2, 3), -1.0))
    assert corrupt_modality(xs, 1, 0, {"mean": -1.0, "std": 2.0}, noise)[1] is xs[1]
