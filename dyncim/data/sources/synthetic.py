"""A synthetic multimodal data set with known modality- and sample-level imbalance.

Kinds of modality (docs/synthetic.md says what the sets must show, and what they show):
- dominant: a random class-mean vector x scale + unit noise: weak per dimension but
  high-dimensional, so an MLP memorises the training set fast (it dominates joint training),
  without being sufficient alone.
- xor: the class index as a 3-bit code; bit k is the sign of u*v for a coordinate pair (u, v)
  with half-normal magnitudes: invisible to a linear model, learned slowly; plus noise dimensions.
- linear: a second, weaker class-mean view (for the trimodal sets).
Sample-level corruption replaces a modality's input on a fraction of samples with noise (noisy:
uninformative; `scale` widens it), with an input drawn for another class (misleading: confidently
wrong) or with zeros (missing: visible without labels); which samples were corrupted, and how, is
saved (CORRUPTION_CODES).
"""
from __future__ import annotations

import numpy as np

CLEAN, NOISY, MISLEADING, MISSING = 0, 1, 2, 3
CORRUPTION_CODES = {"noisy": NOISY, "misleading": MISLEADING, "missing": MISSING}


def _dominant(cfg, means, labels, rng):
    return cfg["scale"] * means[labels] + rng.standard_normal((len(labels), means.shape[1]))


def _xor(cfg, labels, rng):
    n = len(labels)
    bits = (labels[:, None] >> np.arange(3)) & 1                   # n x 3
    mag = np.abs(rng.standard_normal((n, 3, 2)))
    su = rng.choice([-1.0, 1.0], size=(n, 3))
    sv = su * np.where(bits == 1, 1.0, -1.0)                        # sign(u*v) = +1 iff bit set
    pairs = mag * np.stack([su, sv], axis=2) + cfg["noise"] * rng.standard_normal((n, 3, 2))
    return np.concatenate([pairs.reshape(n, 6), rng.standard_normal((n, cfg["noise_dims"]))], axis=1)


def generate(cfg: dict) -> dict:
    """Return views (float32), labels, corruption codes (n x M) and the modality kinds."""
    rng = np.random.default_rng(cfg["seed"])
    C, per = cfg["classes"], cfg["per_class"]
    labels = np.repeat(np.arange(C), per)
    kinds = cfg["modalities"]
    means = {k: rng.standard_normal((C, cfg[k]["dim"])) for k in ("dominant", "linear")}

    def draw(kind, ys):
        if kind == "xor":
            return _xor(cfg["xor"], ys, rng)
        return _dominant(cfg[kind], means[kind], ys, rng)

    views = [draw(k, labels) for k in kinds]
    codes = np.zeros((len(labels), len(kinds)), dtype=np.int8)
    for c in cfg["corrupt"]:
        m = c["modality"]
        candidates = np.flatnonzero(codes[:, m] == CLEAN)
        chosen = rng.choice(candidates, size=int(round(c["fraction"] * len(labels))), replace=False)
        if c["kind"] == "noisy":   # `scale` x the view's own per-coordinate spread (default 1)
            spread = views[m].std(0) * c.get("scale", 1.0)
            views[m][chosen] = rng.standard_normal((len(chosen), views[m].shape[1])) * spread
        elif c["kind"] == "missing":
            views[m][chosen] = 0.0
        else:
            other = (labels[chosen] + rng.integers(1, C, size=len(chosen))) % C
            views[m][chosen] = draw(kinds[m], other)
        codes[chosen, m] = CORRUPTION_CODES[c["kind"]]
    perm = rng.permutation(len(labels))  # no class-ordered files
    return {"views": [v[perm].astype(np.float32) for v in views], "labels": labels[perm],
            "corrupted": codes[perm], "kinds": list(kinds)}


# ---- the source's steps (dyncim.data.sources) ----------------------------------------------------

def read(ds: dict, raw_dir=None):
    """The configuration's set, generated (no raw files); modalities named by kind, numbered where
    a kind repeats."""
    gen = generate(ds["synthetic"])
    names = [f"{k}{i}" if gen["kinds"].count(k) > 1 else k for i, k in enumerate(gen["kinds"])]
    return gen["views"], gen["labels"], gen["corrupted"], names, ds["synthetic"]["classes"]
