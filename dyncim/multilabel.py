"""Multi-label sets (MM-IMDb's genres): targets are multi-hot float (N, C); the loss is binary
cross-entropy with logits (mean over samples and labels: `torch.nn.BCEWithLogitsLoss`'s default);
a label is predicted when its sigmoid exceeds `THRESHOLD` (0.5, i.e. logit > 0; torchmetrics'
rule: a sigmoid of exactly 0.5 is no prediction). The figures
are the F1 scores the MM-IMDb papers report (Arevalo et al. 2017, MMBT): micro-F1 (true/false
positives and false negatives summed over every label and sample) and macro-F1 (the mean of the
per-label F1; a label never present nor predicted counts 0, as in scikit-learn's default),
computed with torchmetrics. Validation picks the epoch by micro-F1 (the first figure of the
MM-IMDb papers' tables).
"""
from __future__ import annotations

import torch

THRESHOLD = 0.5


def is_multilabel(data) -> bool:
    """Whether a data set (FeatureSet or MediaSet) has multi-hot targets."""
    return bool(getattr(data, "multilabel", False))


def f1(scores: torch.Tensor, y: torch.Tensor, average: str, logits: bool = True) -> float:
    """Micro (`average="micro"`) or macro F1 of predictions at THRESHOLD. `scores`: logits (the
    sigmoid is applied here), or with logits=False probabilities / 0-1 decisions."""
    # imported here: training imports this module for every set, and torchmetrics costs seconds
    from torchmetrics.functional.classification import multilabel_f1_score
    p = torch.sigmoid(scores.float()) if logits else scores.float().clamp(0, 1)
    return float(multilabel_f1_score(p, y.round().int(), num_labels=y.shape[1], threshold=THRESHOLD,
                                     average=average, zero_division=0))


def f1_scores(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"micro_f1": f1(logits, y, "micro"), "macro_f1": f1(logits, y, "macro")}


def predicted(logits: torch.Tensor) -> torch.Tensor:
    """The labels predicted from logits (bool): sigmoid above THRESHOLD, as torchmetrics decides."""
    return torch.sigmoid(logits.float()) > THRESHOLD


def counts(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(true positives, false positives, false negatives) of a batch, as one int64 tensor on its
    device (the training loop sums them without a host synchronisation)."""
    pred, true = predicted(logits.detach()), y >= 0.5
    return torch.stack([(pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum()])


def micro_f1(c: torch.Tensor) -> float:
    """Micro-F1 from summed `counts` (0 when there is neither a positive nor a prediction)."""
    tp, fp, fn = (int(v) for v in c)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
