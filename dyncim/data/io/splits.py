"""Fixed, stratified, seeded train / val / test splits stored as `index,label,split` CSV files."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ...atomic import atomic_path

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


def read_clip_splits(path: str | Path, check_row=None) -> list[tuple[str, str, str]]:
    """(clip, label, split) rows of a shipped split file (`clip,label,split`), each checked: a
    known split, no clip twice, and `check_row(clip, label)` (a data set's own rule: raise
    ValueError naming what is wrong); errors name the file and row."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != ("clip", "label", "split"):
            raise ValueError(f"{path}: expected the columns clip,label,split")
        rows, seen = [], set()
        for row_no, r in enumerate(reader, start=2):
            if check_row is not None:
                try:
                    check_row(r["clip"], r["label"])
                except ValueError as e:
                    raise ValueError(f"{path}:{row_no}: {e}") from None
            if r["split"] not in SPLITS:
                raise ValueError(f"{path}:{row_no}: split {r['split']!r}; expected one of {SPLITS}")
            if r["clip"] in seen:
                raise ValueError(f"{path}:{row_no}: {r['clip']} is listed twice")
            seen.add(r["clip"])
            rows.append((r["clip"], r["label"], r["split"]))
    return rows
