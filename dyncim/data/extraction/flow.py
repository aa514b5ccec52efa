"""Optical flow for the RGB + flow sets (UCF-101): OpenCV's Farneback flow between two consecutive
decoded frames, clipped to a bound and quantised to uint8, as TSN-style pipelines store flow.

Why Farneback (`cv2.calcOpticalFlowFarneback`) and not TV-L1, which TSN and I3D used:
- it is in core OpenCV (`opencv-python-headless`, the optional extra `paper`); TV-L1 lives in the
  contrib module `optflow` (`opencv-contrib-python-headless`), a different wheel that installs the
  same `cv2` package, so the two cannot sit in one environment side by side;
- it is deterministic and cheap on a CPU (9 ms per 128 x 128 pair on one core of our shared,
  busy 2-core machine: an upper bound; three pairs a clip), so extraction stays bounded by
  decoding; TV-L1 is known to be one to two orders of magnitude slower;
- the study compares training methods on a fixed pair of modalities, not flow quality.

Storage: each component is clipped to [-bound, bound] (stored pixels per frame) and quantised as
q = round(f * 127 / bound) + 128, so q is in [1, 255], zero motion is exactly 128 and a horizontal
flip is exactly q -> 256 - q. The model input is (q - 128) / 127 = f / bound, in [-1, 1]
(`dyncim.data.sets.augment.FlowAugment`). TSN's tools clip at 20 pixels of a 340 x 256 picture and
scale to [0, 255]; our default bound of 8 is that bound at our stored width (20 * 128 / 340 = 7.5,
rounded up), with a step of 8 / 127 = 0.063 pixel.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ZERO = 128  # the quantised value of zero motion
LEVELS = 127  # quantisation steps per bound on each side of zero
EXTRA = "paper"  # the optional extra that installs OpenCV (pyproject.toml)


@dataclass(frozen=True)
class FlowSpec:
    """OpenCV Farneback's parameters (its documented example values) and the storage bound."""
    bound: float = 8.0  # stored pixels per frame; larger motion is clipped
    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2

    def to_dict(self) -> dict:
        return {"algorithm": "farneback", **asdict(self)}


def require_opencv(what: str = "optical flow") -> None:
    """Raise a clear error before any long work when OpenCV is not installed."""
    import importlib.util
    if importlib.util.find_spec("cv2") is None:
        raise ModuleNotFoundError(
            f"{what} needs OpenCV (cv2), which is not installed: pip install -e '.[{EXTRA}]' "
            f"(the optional extra `{EXTRA}`: opencv-python-headless)")


def farneback(first: np.ndarray, second: np.ndarray, spec: FlowSpec = FlowSpec()) -> np.ndarray:
    """Dense flow from RGB uint8 (H, W, 3) `first` to `second`: float32 (H, W, 2), (dx, dy) in
    pixels: the content at (x, y) in `first` is at (x + dx, y + dy) in `second`."""
    require_opencv()
    import cv2
    a = cv2.cvtColor(np.ascontiguousarray(first), cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(np.ascontiguousarray(second), cv2.COLOR_RGB2GRAY)
    return cv2.calcOpticalFlowFarneback(a, b, None, spec.pyr_scale, spec.levels, spec.winsize,
                                        spec.iterations, spec.poly_n, spec.poly_sigma, 0)


def quantise(flow: np.ndarray, bound: float) -> np.ndarray:
    """float flow -> uint8: clipped to [-bound, bound], 128 + round(f * 127 / bound)."""
    q = np.rint(np.clip(flow, -bound, bound) * (LEVELS / bound)) + ZERO
    return q.astype(np.uint8)


def dequantise(q: np.ndarray, bound: float) -> np.ndarray:
    """uint8 -> float32 flow in pixels (the inverse of `quantise` up to its step)."""
    return (q.astype(np.float32) - ZERO) * (bound / LEVELS)


def flow_fields(pairs: np.ndarray, spec: FlowSpec = FlowSpec()) -> np.ndarray:
    """uint8 (T, H, W, 2) flow of each consecutive-frame pair of `pairs` (T, 2, H, W, 3)."""
    require_opencv()
    import cv2
    cv2.setNumThreads(1)  # extraction runs one process per clip: no thread pools inside
    return np.stack([quantise(farneback(a, b, spec), spec.bound) for a, b in pairs])
