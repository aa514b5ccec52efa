"""Tiny feature stores for the store-backed training tests, written by the real writer
(dyncim.data.io.store.SplitWriter), as the extraction recipes and the MOSEI converter lay them out."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dyncim.data.io import store as S

CLASSES = ["a", "b", "c"]


def write_split(out: Path, arrays: dict[str, np.ndarray], labels: list[int], ok=None, aspect=None,
                classes=CLASSES, extra_meta=None) -> Path:
    n = len(labels)
    specs = {k: (a.shape[1:], a.dtype.str) for k, a in arrays.items()}
    plan = {"test": str(out), "n": n}
    with S.SplitWriter(out, n, specs, plan) as w:
        for i in range(n):
            good = ok is None or ok[i]
            rec = {"ok": bool(good), "n_frames": 2 if good else 0,
                   "aspect": float(aspect[i]) if aspect is not None and good else (1.0 if good else 0.0)}
            if not good:
                rec["error"] = "broken"
            w.write(i, {k: a[i] for k, a in arrays.items()} if good else None, rec)
        w.finish([f"{out.name}-{i}" for i in range(n)], [classes[k] for k in labels],
                 {"classes": list(classes), **(extra_meta or {})})
    return out


def av_store(root: Path, sizes=(24, 9, 9), audio=(32, 24), frames=(2, 16, 16, 3), seed=0,
             fail=(("train", 3),)) -> Path:
    """An audio-visual store like the CREMA-D recipe's: audio float16 (F, T), frames uint8
    (T, H, W, 3) channels-last; the class shifts both modalities so that something is learnable;
    `fail`: (split, row) of clips that failed to decode."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val", "test"), sizes):
        labels = [i % len(CLASSES) for i in range(n)]
        y = np.array(labels)
        a = (rng.standard_normal((n, *audio)) + y[:, None, None]).astype(np.float16)
        f = np.clip(rng.integers(0, 200, (n, *frames)) + 20 * y[:, None, None, None, None], 0, 255)
        ok = [(split, i) not in fail for i in range(n)]
        write_split(root / split, {"audio": a, "frames": f.astype(np.uint8)}, labels, ok=ok,
                    aspect=rng.choice([4 / 3, 16 / 9, 1.0], n), extra_meta={"channels_last": ["frames"]})
    return root


def mosei_store(root: Path, sizes=(20, 8, 8), steps=6, dims=(("text", 12), ("audio", 5), ("vision", 7)), seed=0):
    """A store laid out as dyncim.data.sources.mosei.write_mosei_store writes it: float32 (N, T, d)."""
    rng = np.random.default_rng(seed)
    classes = ["negative", "non-negative"]
    for split, n in zip(("train", "val", "test"), sizes):
        labels = [i % 2 for i in range(n)]
        arrays = {m: (rng.standard_normal((n, steps, d)) + np.array(labels)[:, None, None]).astype(np.float32)
                  for m, d in dims}
        write_split(root / split, arrays, labels, classes=classes, extra_meta={"dataset": "cmu-mosei"})
    return root
