"""MediaSet: a feature store read as one data set: indexing, shapes and dtypes, evaluation batches
fixed, training batches augmented from the trainer's generator; FeatureSet.batch is the old indexing."""
import numpy as np
import pytest
import torch

from dyncim.data.io import store as S
from dyncim.data.sets.media_set import MediaSet, load_data, open_media
from dyncim.data.sets.augment import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import tiny_features
from tests.media_store import av_store, mosei_store


@pytest.fixture(scope="module")
def av(tmp_path_factory):
    return av_store(tmp_path_factory.mktemp("store") / "av")


def test_one_index_space_over_the_splits_without_failed_clips(av):
    m = open_media(av)
    assert isinstance(load_data(av), MediaSet)
    assert m.names == ["audio", "visual"] and m.n_classes == 3 and m.corrupted is None
    assert m.shapes == [(1, 32, 24), (2, 3, 16, 16)]
    assert len(m) == 24 - 1 + 9 + 9 and "train-3" not in m.clips  # the failed clip is left out
    assert [len(m.index(s)) for s in ("train", "val", "test")] == [23, 9, 9]
    assert m.split.dtype == torch.int8 and m.labels.dtype == torch.int64
    store = S.open_store(av)
    i = 30  # a val sample
    sp, row = store["val"], i - 23
    assert m.split[i] == 1 and m.labels[i] == sp.labels[row] and m.clips[i] == sp.clips[row]
    audio, frames = m.raw(torch.tensor([i]))
    assert audio.dtype == torch.float16 and frames.dtype == torch.uint8
    np.testing.assert_array_equal(frames[0].numpy(), sp.frames[row])
    with pytest.raises(AttributeError, match="batch"):
        m.views


def test_batch_dtypes_shapes_and_order_across_splits(av):
    m = open_media(av)
    idx = torch.tensor([40, 0, 25, 4])  # test, train, val, train: order kept
    audio, frames = m.batch(idx)
    assert audio.shape == (4, 1, 32, 24) and audio.dtype == torch.float32
    assert frames.shape == (4, 2, 3, 16, 16) and frames.dtype == torch.float32 and frames.is_contiguous()
    one = [m.batch(idx[k:k + 1]) for k in range(4)]
    assert torch.equal(audio, torch.cat([b[0] for b in one]))
    assert torch.equal(frames, torch.cat([b[1] for b in one]))
    stored = m.raw(idx)
    assert torch.equal(audio, stored[0].float().unsqueeze(1))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expect = (stored[1].movedim(-1, -3).float() / 255 - mean) / std  # evaluation: the whole picture
    torch.testing.assert_close(frames, expect, rtol=0, atol=1e-5)


def test_eval_batches_are_fixed_and_train_batches_augmented_reproducibly(av):
    m = open_media(av)
    idx = m.index("train")[:6]
    e1, e2 = m.batch(idx), m.batch(idx)
    assert all(torch.equal(a, b) for a, b in zip(e1, e2))
    g = torch.Generator().manual_seed(3)
    t1 = m.batch(idx, train=True, generator=g)
    t2 = m.batch(idx, train=True, generator=g)  # the next epoch's draw
    again = m.batch(idx, train=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1[1], again[1])  # reproducible from the seed
    assert not torch.equal(t1[1], t2[1]) and not torch.equal(t1[1], e1[1])  # frames augmented
    assert torch.equal(t1[0], e1[0])  # the spectrogram is not
    state = g.get_state()
    m.subset([0]).batch(idx, train=True, generator=g)  # no frames: no draw
    assert torch.equal(state, g.get_state())


def test_subset_and_device_moves_share_the_data(av):
    m = open_media(av)
    assert m.to("cpu") is m
    v = m.subset([1])
    assert v.names == ["visual"] and v.shapes == [(2, 3, 16, 16)] and v.labels is m.labels
    assert torch.equal(v.batch(torch.arange(3))[0], m.batch(torch.arange(3))[1])


def test_a_mosei_store_reads_as_three_sequences(tmp_path):
    m = open_media(mosei_store(tmp_path / "mosei"))
    assert m.names == ["text", "audio", "vision"] and m.n_classes == 2
    assert m.shapes == [(6, 12), (6, 5), (6, 7)]
    xs = m.batch(torch.tensor([21, 2]))
    store = S.open_store(tmp_path / "mosei")
    assert all(x.dtype == torch.float32 for x in xs)
    np.testing.assert_array_equal(xs[0][0].numpy(), store["val"].text[1])
    np.testing.assert_array_equal(xs[2][1].numpy(), store["train"].vision[2])


def test_stores_that_do_not_fit_are_refused(tmp_path):
    from tests.media_store import write_split
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        write_split(tmp_path / split, {"x": np.zeros((n, 3), np.int32)}, [0, 1] * (n // 2))
    with pytest.raises(ValueError, match="array 'x'"):
        open_media(tmp_path)


def test_feature_set_batch_is_the_old_indexing_and_draws_nothing():
    fs = tiny_features()
    idx = torch.tensor([5, 1, 70])
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    got = fs.batch(idx, train=True, generator=g)
    assert all(torch.equal(a, v[idx]) for a, v in zip(got, fs.views)) and len(got) == len(fs.views)
    assert torch.equal(state, g.get_state())
    assert fs.shapes == [5, 4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fraction", [0.5, 0.0])
def test_on_cuda_batches_equal_the_cpu_ones_resident_or_not(av, fraction):
    m = open_media(av, resident_fraction=fraction)
    g = m.to("cuda")
    assert all(g.resident) == (fraction > 0) and g.labels.is_cuda
    idx = torch.tensor([40, 0, 25, 4])
    for a, b in zip(m.batch(idx), g.batch(idx.cuda())):
        torch.testing.assert_close(a, b.cpu(), rtol=0, atol=1e-5)
    t = g.batch(idx.cuda(), train=True, generator=torch.Generator().manual_seed(0))
    assert t[1].is_cuda and torch.isfinite(t[1]).all()
