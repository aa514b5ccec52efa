"""Fusion modules. Each returns the fused logits and every modality's own logits z^m.

- concat: one linear layer over the concatenated features; modality m's own part is its slice of
  the weight plus an equal share of the bias (how OGM-GE measures per-modality performance).
- sum: one linear head per modality; the fused logits are the sum of the heads' logits.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConcatFusion(nn.Module):
    def __init__(self, dims: list[int], n_classes: int):
        super().__init__()
        self.fc = nn.Linear(sum(dims), n_classes)
        self.bounds = [(sum(dims[:m]), sum(dims[:m + 1])) for m in range(len(dims))]

    def forward(self, feats):
        fused = self.fc(torch.cat(feats, dim=1))
        share = self.fc.bias / len(feats)
        parts = [F.linear(h, self.fc.weight[:, a:b]) + share for h, (a, b) in zip(feats, self.bounds)]
        return fused, parts


class SumFusion(nn.Module):
    def __init__(self, dims: list[int], n_classes: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(d, n_classes) for d in dims)

    def forward(self, feats):
        parts = [head(h) for head, h in zip(self.heads, feats)]
        return torch.stack(parts).sum(0), parts


FUSIONS = {"concat": ConcatFusion, "sum": SumFusion}
