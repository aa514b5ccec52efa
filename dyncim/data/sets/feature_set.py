"""The compact feature file of one data configuration, and its loader.

One `.pt` file holds every modality's standardised features (train statistics only), the
labels, the split and, for the synthetic set, the per-sample corruption record. The trainer
loads it whole onto the training device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...atomic import torch_save
from .. import sources
from ..sources import synthetic
from ..io.splits import SPLITS, read_split, stratified_split, write_split

FORMAT = 1


def raw_views(ds: dict, raw_dir: str | Path | None):
    """(views, labels, corrupted or None, names, n_classes) of a data configuration, before
    standardising: its source's `read` (dyncim.data.sources)."""
    return sources.module(ds["source"]).read(ds, raw_dir)


def make_split(ds: dict, split_cfg: dict, raw_dir, out: str | Path) -> None:
    _, labels, _, _, _ = raw_views(ds, raw_dir)
    write_split(out, labels, stratified_split(labels, split_cfg["train"], split_cfg["val"], split_cfg["seed"]))


def build(ds: dict, raw_dir, split_path: str | Path, out: str | Path) -> None:
    views, labels, corrupted, names, n_classes = raw_views(ds, raw_dir)
    split = read_split(split_path, labels)
    code = np.array([SPLITS.index(s) for s in split], dtype=np.int8)
    train = code == 0
    std_views = []
    for x in views:
        mu, sd = x[train].mean(0), x[train].std(0)
        sd[sd < 1e-8] = 1.0  # constant features stay constant (zero) instead of dividing by 0
        std_views.append(torch.from_numpy(((x - mu) / sd).astype(np.float32)))
    torch_save({"format": FORMAT, "names": names, "n_classes": n_classes, "views": std_views,
                "labels": torch.from_numpy(labels.astype(np.int64)), "split": torch.from_numpy(code),
                "corrupted": None if corrupted is None else torch.from_numpy(corrupted),
                "redraw": redraw_spec(ds, std_views, corrupted, train)}, out)


def redraw_spec(ds: dict, views: list[torch.Tensor], corrupted, train) -> dict | None:
    """{modality: {"mean", "std"}} of the standardised noise rows of the training split, for each
    modality whose noisy corruption is drawn afresh at every training read (a failing sensor);
    None when there is none."""
    if ds["source"] != "synthetic":
        return None
    spec = {}
    for c in ds["synthetic"]["corrupt"]:
        if c.get("redraw"):
            m = c["modality"]
            rows = views[m][torch.from_numpy(train & (corrupted[:, m] == synthetic.NOISY))]
            spec[m] = {"mean": rows.mean(0), "std": rows.std(0)}
    return spec or None


@dataclass
class FeatureSet:
    """A feature file's samples in memory: a `dyncim.data.sets.dataset.DataSet`."""
    names: list[str]
    n_classes: int
    views: list[torch.Tensor]
    labels: torch.Tensor
    split: torch.Tensor
    corrupted: torch.Tensor | None
    # a failing sensor's modalities (features.redraw_spec): {modality: {"mean", "std"}}
    redraw: dict | None = None

    @property
    def multilabel(self) -> bool:
        return self.labels.dim() == 2

    def index(self, part: str) -> torch.Tensor:
        return torch.nonzero(self.split == SPLITS.index(part)).squeeze(1)

    def batch(self, idx: torch.Tensor, train: bool = False, generator=None) -> list[torch.Tensor]:
        """Each modality's model input for the samples `idx`: its feature rows. (`train` and
        `generator` serve sets that augment training batches (`dyncim.data.sets.media_set`); features
        are not augmented and no random number is drawn, except for a failing sensor's modality
        (`redraw`): in a training batch its noisy samples get a fresh noise reading from `generator`.)"""
        xs = [v[idx] for v in self.views]
        if train and self.redraw:
            for m, spec in self.redraw.items():
                # one draw per row, corrupted or not: the count never depends on the data (no sync)
                noise = torch.randn(len(idx), xs[m].shape[1], generator=generator).to(xs[m].device)
                fresh = spec["mean"] + spec["std"] * noise
                xs[m] = torch.where((self.corrupted[idx, m] == synthetic.NOISY)[:, None], fresh, xs[m])
        return xs

    @property
    def shapes(self) -> list:
        """Each modality's per-sample input: an int for vectors, the shape for images / frame stacks."""
        return [v.shape[1] if v.dim() == 2 else tuple(v.shape[1:]) for v in self.views]

    def to(self, device) -> "FeatureSet":
        return FeatureSet(self.names, self.n_classes, [v.to(device) for v in self.views],
                          self.labels.to(device), self.split.to(device),
                          None if self.corrupted is None else self.corrupted.to(device),
                          None if self.redraw is None else
                          {m: {k: t.to(device) for k, t in s.items()} for m, s in self.redraw.items()})

    def subset(self, modalities: list[int]) -> "FeatureSet":
        redraw = {i: self.redraw[m] for i, m in enumerate(modalities) if self.redraw and m in self.redraw}
        return FeatureSet([self.names[m] for m in modalities], self.n_classes,
                          [self.views[m] for m in modalities], self.labels, self.split,
                          None if self.corrupted is None else self.corrupted[:, modalities],
                          redraw or None)

    # --- the robustness sweep (dyncim.data.sets.dataset) ---------------------------------------------
    def corruption_stats(self) -> list[dict]:
        """The features are standardised with train statistics: one unit of noise is one train
        std per feature (1), and a missing modality is every feature at its train mean (0)."""
        return [{"mean": 0.0, "std": 1.0} for _ in self.names]

    def corruption_noise(self, m: int, pos: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """Rows `pos` of one draw per (seed, modality) for the whole swept index of `n` samples
        (torch's CPU generator seeded with seed * 1000 + m): the same whatever the method, run,
        chunking or other modalities."""
        g = torch.Generator().manual_seed(seed * 1000 + m)
        noise = torch.randn((n, *self.views[m].shape[1:]), generator=g, dtype=torch.float32)
        return noise[torch.as_tensor(pos).cpu()].to(self.views[m].device)

    def corrupt(self, xs: list[torch.Tensor], m: int, level, noise: torch.Tensor | None = None
                ) -> list[torch.Tensor]:
        from .dataset import corrupt_modality
        return corrupt_modality(xs, m, level, self.corruption_stats()[m], noise)

    def corruption_record(self) -> dict:
        return {"unit": "noise std in units of the modality's train feature std; missing = zeros (train mean)"}


def load(path: str | Path) -> FeatureSet:
    """Load a feature file, checking what the trainer relies on; errors name the file."""
    path = Path(path)
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run the feature-file step first") from None
    except Exception as e:  # truncated or not a torch file
        raise ValueError(f"{path}: not a readable feature file ({type(e).__name__}: {e}); "
                         f"delete it and rerun the feature-file step") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{path}: not a feature file of format {FORMAT}")
    labels, split = d["labels"], d["split"]
    n = labels.shape[0]
    if labels.dtype != torch.int64 or labels.dim() != 1:
        raise ValueError(f"{path}: labels must be a 1-D int64 tensor, got {labels.dtype} {tuple(labels.shape)}")
    if n == 0 or labels.min() < 0 or labels.max() >= d["n_classes"]:
        raise ValueError(f"{path}: labels out of range [0, {d['n_classes'] - 1}]")
    if split.shape != (n,):
        raise ValueError(f"{path}: split has shape {tuple(split.shape)}, expected ({n},)")
    for name, v in zip(d["names"], d["views"]):
        if v.dtype != torch.float32 or v.dim() != 2 or v.shape[0] != n:
            raise ValueError(f"{path}: view {name!r} must be float32 of shape ({n}, d), "
                             f"got {v.dtype} {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{path}: view {name!r} has non-finite values")
    for part in range(len(SPLITS)):
        if not (split == part).any():
            raise ValueError(f"{path}: the {SPLITS[part]} split is empty")
    return FeatureSet(list(d["names"]), int(d["n_classes"]), list(d["views"]), labels, split, d["corrupted"],
                      d.get("redraw"))
