"""Per-modality encoders, and the mixed-precision switch they share."""
from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """A per-modality encoder: `encode(x)` computes its features. With `amp` set (a dtype, set by
    `dyncim.models.multimodal.prepare_for_device`), the encoder runs under autocast on its
    input's device and hands back float32 features, so that whoever calls it (the model, or a
    method calling `model.encoders[m]` directly) gets float32: fusion, losses, every method's
    softmax statistics and all parameter gradients stay float32. `amp` is not saved with the model."""

    amp: torch.dtype | None = None

    def encode(self, x):
        raise NotImplementedError

    def forward(self, x):
        if self.amp is None:
            return self.encode(x)
        with torch.autocast(x.device.type, dtype=self.amp):
            h = self.encode(x)
        return h.float()


class MLPEncoder(Encoder):
    """Linear-ReLU stack for vector features; `out_dim` is the last hidden width."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        layers, d = [], in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = h
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def encode(self, x):
        return self.net(x)
