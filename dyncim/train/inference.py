"""Label-free, eval-mode passes over a split: what validation, evaluation and the methods'
epoch hooks (prototypes, diagnoses) read."""
from __future__ import annotations

import torch

from ..data.features import FeatureSet


@torch.no_grad()
def evaluate_split(model, method, data: FeatureSet, index: torch.Tensor, batch_size: int):
    """Fused logits (as the method predicts, label-free), per-modality logits and features."""
    was_training = model.training
    model.eval()
    fused, parts, feats = [], [[] for _ in data.views], [[] for _ in data.views]
    for start in range(0, len(index), batch_size):
        idx = index[start:start + batch_size]
        out = model([v[idx] for v in data.views])
        fused.append(method.predict(model, out))
        for m in range(len(data.views)):
            parts[m].append(out.logits[m])
            feats[m].append(out.feats[m])
    model.train(was_training)
    return torch.cat(fused), [torch.cat(p) for p in parts], [torch.cat(f) for f in feats]
