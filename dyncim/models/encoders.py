"""Per-modality encoders."""
from __future__ import annotations

from torch import nn


class MLPEncoder(nn.Module):
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

    def forward(self, x):
        return self.net(x)
