"""The data-set protocol: what training, evaluation and the robustness sweep read of a data
configuration's samples, whatever holds them.

Two classes implement it: `dyncim.data.sets.feature_set.FeatureSet` (a feature file's standardised
vectors, in memory) and `dyncim.data.sets.media_set.MediaSet` (a feature store, memory-mapped). Code
that takes a data set takes a `DataSet` and reads it through these members only.

One index space over every sample; `split` holds each sample's split code (dyncim.data.io.splits.SPLITS:
train 0, val 1, test 2) and `index(part)` the indices of one split. `batch(idx)` gives each
modality's model inputs for the samples `idx` (evaluation inputs unless `train`); `shapes` their
per-sample shapes (an int for vectors), what the encoders are built for.

The robustness sweep (dyncim.evaluation.robustness) corrupts one modality of a batch at a time, in units of
that modality's spread on train: `corruption_stats()[m]` gives its unit (`std`: one unit of noise)
and the value a missing modality takes (`mean`); `corruption_noise` the unit noise of some test
samples (a fixed draw per seed, modality and sample, whatever the method or the chunking);
`corrupt` the batch with modality m noisy at a level or missing (`corrupt_modality`, shared);
`corruption_record` what the sweep's record says of the unit.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

STATS_SAMPLES = 512   # input_stats: over (up to) this many train samples
STATS_CHUNK = 32      # ... read this many at a time


@runtime_checkable
class DataSet(Protocol):
    names: list[str]                  # the modalities, in input order
    n_classes: int
    labels: torch.Tensor              # (N,) class indices (int64), or (N, C) multi-hot float targets
    split: torch.Tensor               # (N,) split codes: train 0, val 1, test 2
    corrupted: torch.Tensor | None    # synthetic sets: (N, M) per-sample corruption codes; else None

    @property
    def multilabel(self) -> bool:
        """Whether the targets are multi-hot (dyncim.multilabel)."""
        ...

    @property
    def shapes(self) -> list:
        """Each modality's per-sample model input: an int for vectors, else the shape."""
        ...

    def index(self, part: str) -> torch.Tensor:
        """The indices of the samples of split `part` (train, val or test), in index order."""
        ...

    def batch(self, idx: torch.Tensor, train: bool = False, generator: torch.Generator | None = None
              ) -> list[torch.Tensor]:
        """Each modality's model input for the samples `idx`, on the set's device; `train`: a
        training batch (augmented where the set augments, random numbers from `generator`)."""
        ...

    def to(self, device) -> "DataSet":
        """The same samples with their batches on `device`."""
        ...

    def subset(self, modalities: list[int]) -> "DataSet":
        """The same samples with only the modalities `modalities` (in that order)."""
        ...

    # --- the robustness sweep -----------------------------------------------------------------
    def corruption_stats(self) -> list[dict]:
        """Per modality {"mean", "std", ...}: the value every input of a missing modality takes
        and one unit of noise (the modality's train mean and std)."""
        ...

    def corruption_noise(self, m: int, pos: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """Unit noise shaped like modality m's inputs of the samples at positions `pos` of a swept
        index of `n` samples (the test split), on the set's device: the same values for a sample
        whatever the chunking, the method or the run."""
        ...

    def corrupt(self, xs: list[torch.Tensor], m: int, level, noise: torch.Tensor | None = None
                ) -> list[torch.Tensor]:
        """The inputs `xs` with modality m at `level`: a number (`corruption_noise`'s `noise`
        scaled by level x the unit) or 'missing' (see corrupt_modality)."""
        ...

    def corruption_record(self) -> dict:
        """What the sweep's record says of the corruption: `unit` (a sentence), and whatever
        else documents it (a store: `input_stats`)."""
        ...


def corrupt_modality(xs: list[torch.Tensor], m: int, level, stat: dict, noise: torch.Tensor | None = None
                     ) -> list[torch.Tensor]:
    """The inputs `xs` (one tensor per modality) with modality m replaced: `level` 'missing':
    every value at `stat['mean']`; a number: `xs[m] + level * stat['std'] * noise` (noise: the
    unit draw; level 0: xs[m] itself)."""
    if level == "missing":
        x = torch.full_like(xs[m], stat["mean"])
    elif level == 0:
        x = xs[m]
    else:
        x = xs[m] + float(level) * stat["std"] * noise
    return [x if k == m else c for k, c in enumerate(xs)]


def input_stats(data: DataSet, n: int = STATS_SAMPLES, chunk: int = STATS_CHUNK) -> list[dict]:
    """Per modality: the mean and std of every model-input value of the first `n` train samples
    (index order, evaluation transform: `data.batch`), accumulated in float64 chunk by chunk
    (Chan's parallel variance), and the number of samples used."""
    train = data.index("train")[:n]
    acc = [(0, 0.0, 0.0) for _ in data.names]     # (values, mean, sum of squared deviations)
    for a in range(0, len(train), chunk):
        for m, x in enumerate(data.batch(train[a:a + chunk])):
            x = x.double()
            c, mu = x.numel(), float(x.mean())
            m2 = float(((x - mu) ** 2).sum())
            N, mean, M2 = acc[m]
            d = mu - mean
            acc[m] = (N + c, mean + d * c / (N + c), M2 + m2 + d * d * N * c / (N + c))
    return [{"mean": mean, "std": (M2 / (N - 1)) ** 0.5 if N > 1 else 0.0, "n_samples": len(train)}
            for N, mean, M2 in acc]
