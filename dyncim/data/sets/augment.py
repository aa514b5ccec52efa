"""Batched image augmentation on the training device: random resized crop, horizontal flip and
ImageNet normalisation of a whole batch of stored uint8 frames at once (torchvision's transforms
would work per PIL image on the CPU, and torchvision cannot be installed beside the pinned torch).

Input: uint8 (B, T, 3, H, W) or (B, 3, H, W), any strides (`dyncim.data.io.store` hands out the
stored (..., H, W, 3) frames as channels-last views; each is the whole source picture resized to
H x W). Output: float (B, T, 3, size, size), contiguous, normalised.

- `train_frames`: per frame (the peers apply their transform to each frame independently) a crop
  box drawn as torchvision's `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` draws it
  (area fraction uniform in `scale`, log aspect ratio uniform in log `ratio`, up to 10 tries for a
  box that fits, else the whole picture clamped to `ratio`), where the aspect ratio is measured in
  the *source* picture's geometry (`aspect`: width / height of the source, per sample, from the
  store's index; the stored picture is the source squeezed to H x W), then a flip with
  probability `flip_p`. All boxes are drawn with one `torch.rand` call and rounded to whole pixels
  (torchvision rounds them too); they are applied, on an accelerator, with one `grid_sample`
  (bilinear, samples clamped inside each box: exactly crop-then-resize), and on the CPU frame by
  frame with torch's uint8 channels-last bilinear resize (the kernel torchvision's v2 transforms
  use), each frame converted and normalised while in cache: 2.7-3.9 ms of one CPU core per
  3-frame 224 x 224 sample, against 13-15 ms for the float `grid_sample` path. Both give the same
  crops (to uint8 rounding). Deterministic given a `torch.Generator`.
- `eval_frames`: the whole picture resized to size x size (the peers' `Resize((224, 224))`; the
  identity when the store holds that size already), normalised.

Crops are only ever enlarged when the stored size is the output size (224, the extraction
default); when a larger stored picture is shrunk, the CPU path anti-aliases and `grid_sample` does
not (it would alias when shrinking by more than about 2x).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _scale_shift(mean, std, device, dtype=torch.float32):
    """x_uint8 * a + b == (x / 255 - mean) / std, per channel, shaped (3, 1, 1)."""
    mean = torch.as_tensor(mean, dtype=dtype, device=device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=dtype, device=device).view(-1, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def crop_boxes(n: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), aspect=1.0,
               generator: torch.Generator | None = None, attempts: int = 10,
               device=None) -> torch.Tensor:
    """(n, 4) crop boxes (x0, y0, w, h) as fractions of the stored picture's width and height,
    drawn as torchvision's RandomResizedCrop.get_params draws them on a picture of display
    aspect `aspect` (float or (n,) tensor): area w * h uniform in `scale`, w / h * aspect
    log-uniform in `ratio`, the first of `attempts` draws that fits, else the whole picture
    clamped to `ratio`, centred."""
    gdev = generator.device if generator is not None else device
    u = torch.rand(n, attempts, 4, generator=generator, device=gdev).to(device)
    a = torch.as_tensor(aspect, dtype=torch.float32, device=device).expand(n).unsqueeze(1)
    area = scale[0] + (scale[1] - scale[0]) * u[..., 0]
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(lo + (hi - lo) * u[..., 1])
    w = torch.sqrt(area * r / a)
    h = torch.sqrt(area * a / r)
    fits = (w <= 1.0) & (h <= 1.0)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # index of the first draw that fits
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    ux, uy = u[..., 2].gather(1, first).squeeze(1), u[..., 3].gather(1, first).squeeze(1)
    ok = fits.any(1)
    a = a.squeeze(1)
    # torchvision's fallback: the whole picture, cut to the nearest allowed aspect ratio, centred
    fw = torch.where(a > ratio[1], ratio[1] / a, torch.ones_like(a))
    fh = torch.where(a < ratio[0], a / ratio[0], torch.ones_like(a))
    w, h = torch.where(ok, w, fw), torch.where(ok, h, fh)
    x0 = torch.where(ok, ux * (1 - w), (1 - w) / 2)
    y0 = torch.where(ok, uy * (1 - h), (1 - h) / 2)
    return torch.stack([x0, y0, w, h], 1)


def pixel_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fractional boxes (x0, y0, w, h) -> whole-pixel boxes (int64 x0, y0, w, h) inside the picture:
    sizes rounded (at least 1 pixel), offsets rounded and kept inside."""
    x0, y0, w, h = boxes.unbind(1)
    pw = torch.round(w * width).clamp(1, width)
    ph = torch.round(h * height).clamp(1, height)
    px = torch.minimum(torch.round(x0 * width), width - pw).clamp(min=0)
    py = torch.minimum(torch.round(y0 * height), height - ph).clamp(min=0)
    return torch.stack([px, py, pw, ph], 1).long()


def resample_pixel_boxes(img: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor | None,
                         size: tuple[int, int], scale_shift=None) -> torch.Tensor:
    """The CPU path of `resample_boxes` for uint8 img (N, C, H, W) and whole-pixel boxes (N, 4):
    per frame, the box is cut out (a view) and resized by torch's uint8 bilinear kernel
    (anti-aliased when shrinking), then mirrored where `flip`. Returns uint8 (N, C, *size)
    (channels-last), or, with `scale_shift` = (a, b) (C, 1, 1), float32 a * x + b (contiguous),
    converted and normalised frame by frame while the frame is in cache."""
    N, C = img.shape[:2]
    src = img.contiguous(memory_format=torch.channels_last)
    if scale_shift is None:
        out = torch.empty((N, C, *size), dtype=img.dtype, device=img.device).contiguous(
            memory_format=torch.channels_last)
    else:
        out = torch.empty((N, C, *size), dtype=torch.float32, device=img.device)
    flips = [False] * N if flip is None else flip.tolist()
    for i, (x0, y0, w, h) in enumerate(boxes.tolist()):
        r = F.interpolate(src[i:i + 1, :, y0:y0 + h, x0:x0 + w], size=size, mode="bilinear",
                          align_corners=False, antialias=True)[0]
        o = out[i]
        o.copy_(r.flip(-1) if flips[i] else r)
        if scale_shift is not None:
            o.mul_(scale_shift[0]).add_(scale_shift[1])
    return out


def resample_boxes(img: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor | None,
                   size: tuple[int, int]) -> torch.Tensor:
    """Crop each of img (N, C, H, W) (float) to its box (N, 4) (fractions, see `crop_boxes`),
    resize it to `size` (bilinear), mirror it where `flip` (N,) is true: one grid_sample."""
    N, _, H, W = img.shape
    x0, y0, w, h = boxes.to(img.dtype).unbind(1)
    cx, cy = 2 * x0 + w - 1, 2 * y0 + h - 1  # box centre in grid_sample's [-1, 1] (align_corners=False)
    sx = w if flip is None else torch.where(flip, -w, w)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, [N, 1, *size], align_corners=False)
    # keep samples within the box's outer pixel centres (half a pixel = 1/W in grid units), so
    # that no pixel outside the box bleeds in: the result of cropping first, then resizing
    gx = torch.clamp(grid[..., 0], min=(cx - w + 1.0 / W).view(N, 1, 1), max=(cx + w - 1.0 / W).view(N, 1, 1))
    gy = torch.clamp(grid[..., 1], min=(cy - h + 1.0 / H).view(N, 1, 1), max=(cy + h - 1.0 / H).view(N, 1, 1))
    return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border",
                         align_corners=False)


def _as_frames(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    if x.dim() == 4:
        x = x.unsqueeze(1)
    if x.dim() != 5 or x.shape[2] != 3:
        raise ValueError(f"frames of shape {tuple(x.shape)}: expected (B, T, 3, H, W) or (B, 3, H, W)")
    return x.flatten(0, 1), tuple(x.shape[:2])


def train_frames(x: torch.Tensor, size: int = 224, generator: torch.Generator | None = None,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5,
                 aspect: torch.Tensor | float = 1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 dtype: torch.dtype = torch.float32, squeeze: bool = False,
                 method: str = "auto") -> torch.Tensor:
    """Random resized crop + horizontal flip + normalisation of uint8 frames (B, T, 3, H, W) (or
    (B, 3, H, W)) on their device -> `dtype` (B, T, 3, size, size). `aspect`: each sample's source
    display aspect (float or (B,)), so that crop shapes are drawn in the source's geometry; 1.0
    draws them in the stored picture's. `squeeze`: return (B, 3, size, size) for 4-D input.
    `method`: "pixels" (per-frame uint8 resize, the CPU default), "grid" (one grid_sample, the
    default elsewhere), "auto"."""
    four_d = x.dim() == 4
    flat, (B, T) = _as_frames(x)
    N = flat.shape[0]
    a = torch.as_tensor(aspect, dtype=torch.float32, device=x.device)
    if a.dim() == 1:
        a = a.repeat_interleave(T)
    H, W = flat.shape[-2:]
    boxes = pixel_boxes(crop_boxes(N, scale, ratio, a, generator, device=x.device), H, W)
    gdev = generator.device if generator is not None else x.device
    flip = (torch.rand(N, generator=generator, device=gdev) < flip_p).to(x.device)
    if method == "auto":
        method = "pixels" if x.device.type == "cpu" and x.dtype == torch.uint8 else "grid"
    if method == "pixels":
        out = resample_pixel_boxes(flat, boxes, flip, (size, size), _scale_shift(mean, std, x.device))
        out = out.to(dtype).view(B, T, *out.shape[1:])
        return out.squeeze(1) if four_d and squeeze else out
    if method != "grid":
        raise ValueError(f"method {method!r}: expected auto, pixels or grid")
    frac = boxes.to(torch.float32) / torch.tensor([W, H, W, H], dtype=torch.float32, device=x.device)
    out = resample_boxes(flat.float(), frac, flip, (size, size))
    return _finish(out, B, T, mean, std, dtype, four_d and squeeze)


def _finish(out, B, T, mean, std, dtype, squeeze, fresh=True):
    """Normalise and restore (B, T, ...); in place only on a tensor made here (`fresh`)."""
    k, b = _scale_shift(mean, std, out.device)
    out = out.to(torch.float32, memory_format=torch.contiguous_format, copy=not fresh)
    out = out.mul_(k).add_(b).to(dtype)
    out = out.view(B, T, *out.shape[1:])
    return out.squeeze(1) if squeeze else out


def eval_frames(x: torch.Tensor, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                dtype: torch.dtype = torch.float32, squeeze: bool = False) -> torch.Tensor:
    """The whole picture resized to size x size (bilinear, anti-aliased when shrinking) and
    normalised: uint8 (B, T, 3, H, W) -> `dtype` (B, T, 3, size, size)."""
    four_d = x.dim() == 4
    flat, (B, T) = _as_frames(x)
    out, fresh = flat, tuple(flat.shape[-2:]) != (size, size)
    if fresh:
        if out.device.type == "cpu" and out.dtype == torch.uint8:
            out = out.contiguous(memory_format=torch.channels_last)
        else:
            out = out.float()
        out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return _finish(out, B, T, mean, std, dtype, four_d and squeeze, fresh)


class FrameAugment:
    """The two transforms with fixed settings: `aug(frames, train=True, aspect=...)`; a
    `generator` given to the call draws that batch's crops and flips instead of `self.generator`
    (the trainer owns the generator, so that its state is saved with the run)."""

    def __init__(self, size: int = 224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype: torch.dtype = torch.float32,
                 generator: torch.Generator | None = None):
        self.size, self.scale, self.ratio, self.flip_p = size, scale, ratio, flip_p
        self.mean, self.std, self.dtype, self.generator = mean, std, dtype, generator

    def __call__(self, frames: torch.Tensor, train: bool, aspect=1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if train:
            gen = self.generator if generator is None else generator
            return train_frames(frames, self.size, gen, self.scale, self.ratio, self.flip_p, aspect,
                                self.mean, self.std, self.dtype)
        return eval_frames(frames, self.size, self.mean, self.std, self.dtype)


# ---- optical flow ------------------------------------------------------------------------------

FLOW_ZERO, FLOW_LEVELS = 128, 127  # dyncim.data.extraction.flow's quantisation: f = (q - 128) / 127 * bound


class FlowAugment:
    """Optical flow stored as uint8 (B, T, 2, H, W) (`dyncim.data.extraction.flow`: x and y components,
    128 = no motion) -> float (B, T, 2, size, size) = flow / bound, in [-1, 1].

    Training: per flow field, a crop box drawn as for the frames (`crop_boxes`, the same scale and
    ratio ranges, in the source's aspect), resized, and a horizontal flip with probability `flip_p`
    that also negates the x component (mirrored motion points the other way). As TSN's flow
    augmentation, the values are not rescaled with the crop's zoom. Evaluation: the whole field."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p: float = 0.5,
                 dtype: torch.dtype = torch.float32):
        self.size, self.scale, self.ratio, self.flip_p, self.dtype = size, scale, ratio, flip_p, dtype

    def __call__(self, flow: torch.Tensor, train: bool, aspect=1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if flow.dim() != 5 or flow.shape[2] != 2:
            raise ValueError(f"flow of shape {tuple(flow.shape)}: expected (B, T, 2, H, W)")
        B, T = flow.shape[:2]
        flat = flow.flatten(0, 1)
        N, (H, W) = flat.shape[0], flat.shape[-2:]
        a = torch.full((2, 1, 1), 1.0 / FLOW_LEVELS, device=flow.device)
        b = torch.full((2, 1, 1), -FLOW_ZERO / FLOW_LEVELS, device=flow.device)
        if not train:
            out = flat.float()
            if (H, W) != (self.size, self.size):
                out = F.interpolate(out, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                    antialias=True)
            out = out * a + b
            return out.to(self.dtype).view(B, T, 2, self.size, self.size)
        asp = torch.as_tensor(aspect, dtype=torch.float32, device=flow.device)
        if asp.dim() == 1:
            asp = asp.repeat_interleave(T)
        boxes = pixel_boxes(crop_boxes(N, self.scale, self.ratio, asp, generator, device=flow.device), H, W)
        gdev = generator.device if generator is not None else flow.device
        flip = (torch.rand(N, generator=generator, device=gdev) < self.flip_p).to(flow.device)
        if flow.device.type == "cpu" and flow.dtype == torch.uint8:
            out = resample_pixel_boxes(flat, boxes, flip, (self.size, self.size), (a, b))
        else:
            frac = boxes.to(torch.float32) / torch.tensor([W, H, W, H], dtype=torch.float32, device=flow.device)
            out = resample_boxes(flat.float(), frac, flip, (self.size, self.size)).mul_(a).add_(b)
        out[:, 0] = torch.where(flip.view(N, 1, 1), -out[:, 0], out[:, 0])  # mirrored motion: dx -> -dx
        return out.to(self.dtype).view(B, T, 2, self.size, self.size)
