"""Label-free, eval-mode passes over a split: what validation, evaluation and the methods'
epoch hooks (prototypes, diagnoses) read."""
from __future__ import annotations

import torch


@torch.no_grad()
def evaluate_split(model, method, data, index: torch.Tensor, batch_size: int):
    """Fused logits (as the method predicts, label-free), per-modality logits and features.
    `data`: a dyncim.data.sets.dataset.DataSet (evaluation inputs: `data.batch(idx)`, never augmented)."""
    was_training = model.training
    model.eval()
    M = len(data.names)
    fused, parts, feats = [], [[] for _ in range(M)], [[] for _ in range(M)]
    for start in range(0, len(index), batch_size):
        idx = index[start:start + batch_size]
        out = model(data.batch(idx))
        fused.append(method.predict(model, out))
        for m in range(M):
            parts[m].append(out.logits[m])
            feats[m].append(out.feats[m])
    model.train(was_training)
    return torch.cat(fused), [torch.cat(p) for p in parts], [torch.cat(f) for f in feats]
