"""Fixed, stratified, seeded train / val / test splits stored as `index,label,split` CSV files."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

SPLITS = ("train", "val", "test")


def stratified_split(labels: np.ndarray, train: float, val: float, seed: int) -> np.ndarray:
    """Return an array of split names; every class is divided in the same proportions."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_tr, n_va = int(round(train * len(idx))), int(round(val * len(idx)))
        out[idx[:n_tr]], out[idx[n_tr:n_tr + n_va]], out[idx[n_tr + n_va:]] = "train", "val", "test"
    return out


def write_split(path: str | Path, labels: np.ndarray, split: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "split"])
        for i, (y, s) in enumerate(zip(labels, split)):
            w.writerow([i, int(y), s])


def read_split(path: str | Path, labels: np.ndarray) -> np.ndarray:
    """Read a split file and check it against the data it describes."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"index", "label", "split"}:
        raise ValueError(f"{path}: expected columns index,label,split")
    if len(rows) != len(labels):
        raise ValueError(f"{path}: {len(rows)} rows, but the data set has {len(labels)} samples")
    split = np.empty(len(labels), dtype=object)
    for r in rows:
        i = int(r["index"])
        if not 0 <= i < len(labels):
            raise ValueError(f"{path}: index {i} does not exist (data set has {len(labels)} samples)")
        if int(r["label"]) != labels[i]:
            raise ValueError(f"{path}: sample {i} has label {r['label']} here but {labels[i]} in the data")
        if r["split"] not in SPLITS:
            raise ValueError(f"{path}: sample {i}: split {r['split']!r}; expected one of {SPLITS}")
        split[i] = r["split"]
    return split
