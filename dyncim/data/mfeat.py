"""UCI Multiple Features: 2000 handwritten digits (10 classes) described by six feature views."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
N_SAMPLES, N_CLASSES = 2000, 10


def read_view(raw_dir: str | Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Read `mfeat-<view>.csv` (a header row, then features with the label last) and check it."""
    path = Path(raw_dir) / f"mfeat-{view}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the download step first")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a numeric CSV table: {e}") from None
    want = (N_SAMPLES, DIMS[view] + 1)
    if table.shape != want:
        raise ValueError(f"{path}: shape {table.shape}, expected {want} "
                         f"({N_SAMPLES} samples, {DIMS[view]} features + label); truncated or wrong file?")
    x, y = table[:, :-1].astype(np.float32), table[:, -1]
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: non-finite feature values")
    if np.any(y != np.round(y)) or y.min() < 0 or y.max() >= N_CLASSES:
        raise ValueError(f"{path}: labels must be integers in [0, {N_CLASSES - 1}]")
    return x, y.astype(np.int64)


def read_views(raw_dir: str | Path, views) -> tuple[list[np.ndarray], np.ndarray]:
    xs, labels = [], None
    for v in views:
        x, y = read_view(raw_dir, v)
        if labels is not None and not np.array_equal(y, labels):
            raise ValueError(f"{raw_dir}/mfeat-{v}.csv: labels disagree with mfeat-{views[0]}.csv")
        xs.append(x)
        labels = y
    return xs, labels
