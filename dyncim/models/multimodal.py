"""The multimodal model: one encoder per modality, then a fusion module with per-modality heads."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import TRAIN_DEFAULTS
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


def input_shape(view: torch.Tensor):
    """A modality's per-sample input: an int for vectors, the shape for images / frame stacks."""
    return view.shape[1] if view.dim() == 2 else tuple(view.shape[1:])


def build_encoder(shape, train_cfg: dict) -> nn.Module:
    kind = train_cfg.get("encoder", TRAIN_DEFAULTS["encoder"])   # tests may pass a partial config
    if kind == "mlp":
        if not isinstance(shape, int):
            raise ValueError(f"encoder mlp takes vector features, got inputs of shape {shape}; use resnet18")
        return MLPEncoder(shape, train_cfg["hidden"], train_cfg["dropout"])
    if isinstance(shape, int) or len(shape) not in (3, 4):
        raise ValueError(f"encoder resnet18 takes (C, H, W) or (T, C, H, W) inputs, got {shape}")
    from .resnet import ResNet18Encoder
    return ResNet18Encoder(shape[-3], frames=len(shape) == 4)


def build_model(in_dims: list, n_classes: int, fusion: str, train_cfg: dict) -> MultimodalModel:
    """in_dims: per modality, a feature count (MLP) or an input shape (ResNet-18)."""
    return MultimodalModel([build_encoder(d, train_cfg) for d in in_dims], fusion, n_classes)
