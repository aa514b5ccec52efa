"""Batched frame augmentation: shapes, range, flips, crop boxes, determinism, both resamplers."""
import pytest
import torch

from dyncim.data.sets import augment as A

MEAN = torch.tensor(A.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(A.IMAGENET_STD).view(3, 1, 1)


def norm(v):
    """A uint8 value v, normalised, per channel (3, 1, 1)."""
    return (v / 255.0 - MEAN) / STD


def frames(B=4, T=3, H=32, W=32, seed=0):
    return torch.randint(0, 256, (B, T, 3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["pixels", "grid"])
def test_shapes_dtype_range(method):
    x = frames()
    y = A.train_frames(x, size=24, generator=torch.Generator().manual_seed(0), method=method)
    assert y.shape == (4, 3, 3, 24, 24) and y.dtype == torch.float32 and y.is_contiguous()
    assert y.min() >= norm(0).min() - 1e-5 and y.max() <= norm(255).max() + 1e-5
    e = A.eval_frames(x, size=24)
    assert e.shape == (4, 3, 3, 24, 24)
    four = A.train_frames(x[:, 0], size=24, squeeze=True, method=method)
    assert four.shape == (4, 3, 24, 24)
    half = A.eval_frames(x, size=32, dtype=torch.float16)
    assert half.dtype == torch.float16 and x.dtype == torch.uint8  # the input is never modified


def test_eval_is_normalisation_at_stored_size():
    x = frames()
    y = A.eval_frames(x, size=32)
    torch.testing.assert_close(y, (x.float() / 255 - MEAN) / STD)
    z = A.eval_frames(x.float(), size=32)  # a float input is left untouched too
    torch.testing.assert_close(z, y)


@pytest.mark.parametrize("method", ["pixels", "grid"])
def test_flip(method):
    """Left half black, right half white: a full-picture crop, always flipped, swaps them."""
    x = torch.zeros(2, 1, 3, 16, 16, dtype=torch.uint8)
    x[..., 8:] = 255
    kw = dict(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), method=method)
    flipped = A.train_frames(x, flip_p=1.0, **kw)
    torch.testing.assert_close(flipped[..., :8], norm(255).expand(2, 1, 3, 16, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped[..., 8:], norm(0).expand(2, 1, 3, 16, 8), atol=1e-5, rtol=0)
    # never flipped, whole picture, same size: the identity (= evaluation)
    torch.testing.assert_close(A.train_frames(x, flip_p=0.0, **kw), A.eval_frames(x, 16), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["pixels", "grid"])
def test_a_known_crop(method):
    """Quadrants of four values: the top-right quarter box, enlarged, is that quarter's value only
    (no bleeding from its neighbours)."""
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    x[..., :4, :4], x[..., :4, 4:], x[..., 4:, :4], x[..., 4:, 4:] = 10, 20, 30, 40
    box = torch.tensor([[4, 0, 4, 4]])
    if method == "pixels":
        out = A.resample_pixel_boxes(x, box, None, (16, 16)).float()
    else:
        out = A.resample_boxes(x.float(), box.float() / 8, None, (16, 16))
    assert torch.all(out == 20)


def test_resamplers_agree():
    x = frames(B=6, T=2, H=40, W=40)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = A.train_frames(x, size=40, generator=g(), method="pixels")
    b = A.train_frames(x, size=40, generator=g(), method="grid")
    # same boxes and flips; they differ only by the uint8 kernel's fixed-point weights and
    # rounding to uint8: at most one grey level
    assert (a - b).abs().max() <= 1.01 / 255 / min(A.IMAGENET_STD)


def test_crop_boxes_follow_torchvision_bounds():
    g = torch.Generator().manual_seed(0)
    aspect = 4 / 3  # the source picture's width / height (CREMA-D: 480 x 360)
    b = A.crop_boxes(20000, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), aspect=aspect, generator=g)
    x0, y0, w, h = b.unbind(1)
    area, r = w * h, w / h * aspect  # aspect ratio in the source's geometry
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    assert r.min() >= 3 / 4 - 1e-5 and r.max() <= 4 / 3 + 1e-5
    assert x0.min() >= 0 and y0.min() >= 0 and (x0 + w).max() <= 1 + 1e-6 and (y0 + h).max() <= 1 + 1e-6
    assert area.mean() > 0.3 and (area < 0.2).any() and (area > 0.9).any()  # the range is used
    # on a square source, the log-uniform aspect ratio gives as many wide crops as narrow ones
    w1, h1 = A.crop_boxes(20000, aspect=1.0, generator=g)[:, 2:].unbind(1)
    assert abs((w1 > h1).float().mean().item() - 0.5) < 0.02
    # torchvision's fallback (no draw fits): the whole picture cut to the nearest allowed ratio
    f = A.crop_boxes(5, scale=(1.0, 1.0), ratio=(1.0, 1.0), aspect=aspect, generator=g)
    torch.testing.assert_close(f, torch.tensor([[0.125, 0.0, 0.75, 1.0]]).expand(5, 4))


def test_pixel_boxes_stay_inside():
    b = torch.tensor([[0.99, 0.0, 0.5, 1.0], [0.0, 0.3, 0.001, 0.2]])
    p = A.pixel_boxes(b, 10, 20)
    assert p.tolist() == [[10, 0, 10, 10], [0, 3, 1, 2]]


def test_deterministic_given_a_generator():
    x = frames()
    y1 = A.train_frames(x, 24, torch.Generator().manual_seed(7))
    y2 = A.train_frames(x, 24, torch.Generator().manual_seed(7))
    y3 = A.train_frames(x, 24, torch.Generator().manual_seed(8))
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    # frames of a clip get their own crops, as the peers' per-image transforms give them
    assert not torch.equal(y1[:, 0], y1[:, 1])


def test_per_sample_aspect_and_wrapper():
    x = frames(B=3, T=2)
    aug = A.FrameAugment(size=24, generator=torch.Generator().manual_seed(0))
    y = aug(x, train=True, aspect=torch.tensor([4 / 3, 16 / 9, 1.0]))
    assert y.shape == (3, 2, 3, 24, 24) and torch.isfinite(y).all()
    assert aug(x, train=False).shape == (3, 2, 3, 24, 24)
    with pytest.raises(ValueError, match="expected"):
        A.train_frames(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
