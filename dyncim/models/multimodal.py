"""The multimodal model: one encoder per modality, then a fusion module with per-modality heads."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .encoders import MLPEncoder
from .fusion import FUSIONS


@dataclass
class Output:
    feats: list[torch.Tensor]    # encoder outputs h^m
    logits: list[torch.Tensor]   # each modality's own logits z^m
    fused: torch.Tensor          # the fusion module's logits


class MultimodalModel(nn.Module):
    def __init__(self, encoders: list[nn.Module], fusion: str, n_classes: int):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.fusion = FUSIONS[fusion]([e.out_dim for e in encoders], n_classes)
        self.fusion_kind = fusion
        self.n_classes = n_classes
        # Methods add their own modules here (DynCIM's gate and modality statistics), so that they
        # are saved and restored with the model.
        self.extra = nn.ModuleDict()

    @property
    def n_modalities(self) -> int:
        return len(self.encoders)

    def encode(self, xs):
        return [enc(x) for enc, x in zip(self.encoders, xs)]

    def forward(self, xs) -> Output:
        feats = self.encode(xs)
        fused, logits = self.fusion(feats)
        return Output(feats, logits, fused)


def build_model(in_dims: list[int], n_classes: int, fusion: str, train_cfg: dict) -> MultimodalModel:
    encoders = [MLPEncoder(d, train_cfg["hidden"], train_cfg["dropout"]) for d in in_dims]
    return MultimodalModel(encoders, fusion, n_classes)
