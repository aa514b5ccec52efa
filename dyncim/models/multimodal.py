"""The multimodal model: one encoder per modality, then a fusion module with per-modality heads."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .encoders import Encoder, MLPEncoder
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

    def encode(self, xs, between=None):
        """Every modality's features. With a cross-modal module between the encoders' stages
        (`between`, or else the method's `extra[STAGE_MIXER]`; Greedy's MMTM blocks) the encoders
        run stage by stage (`encode_by_stages`); without one (every other method), as before."""
        if between is None and STAGE_MIXER in self.extra:
            between = self.extra[STAGE_MIXER]
        if between is None:
            return [enc(x) for enc, x in zip(self.encoders, xs)]
        return encode_by_stages(self.encoders, xs, between)

    def forward(self, xs, between=None) -> Output:
        feats = self.encode(xs, between)
        fused, logits = self.fusion(feats)
        return Output(feats, logits, fused)


# The key of model.extra under which a method installs a module that runs between the encoders'
# stages in every forward pass of the model (training and evaluation): `module(k, hs) -> hs`, hs
# the list of every modality's output of stage k (dyncim.models.encoders.Encoder's stage API).
STAGE_MIXER = "stage_mixer"


def encode_by_stages(encoders, xs, between) -> list[torch.Tensor]:
    """The encoders' features computed stage by stage in lockstep: after stage k of every encoder,
    `between(k, hs)` maps the list of their stage-k outputs to the next stages' inputs (every
    encoder must have stages, the same number). With an identity `between` the features equal
    `[enc(x) for ...]` exactly (without dropout: its draws come in another order)."""
    counts = [len(getattr(enc, "stage_dims", ())) for enc in encoders]
    if not counts or min(counts) == 0 or len(set(counts)) != 1:
        raise ValueError(f"a module between the encoders' stages needs encoders with the same "
                         f"number of stages; theirs: {counts}")
    hs = [enc.stage_input(x) for enc, x in zip(encoders, xs)]
    for k in range(counts[0]):
        hs = list(between(k, [enc.stage(k, h) for enc, h in zip(encoders, hs)]))
    return [enc.stage_output(h) for enc, h in zip(encoders, hs)]


ENCODERS = ("mlp", "resnet18", "transformer", "lstm", "auto")
# The encoder of a training configuration without `encoder` (tests pass partial ones): the schema's
# `$defs/train/encoder` default, written here too so that importing the models reads no schema
# (tests/test_models.py checks that the two agree).
DEFAULT_ENCODER = "auto"


def encoder_kind(shape, train_cfg: dict) -> str:
    """The configured encoder; `auto` picks by input rank: mlp for vectors, transformer for
    (T, d) sequences, resnet18 for (C, H, W) images and (T, C, H, W) frame stacks."""
    kind = train_cfg.get("encoder", DEFAULT_ENCODER)   # tests may pass a partial config
    if kind == "auto":
        rank = 1 if isinstance(shape, int) else len(shape)
        return "mlp" if rank == 1 else "transformer" if rank == 2 else "resnet18"
    if kind not in ENCODERS:
        raise ValueError(f"encoder {kind!r}: expected one of {list(ENCODERS)}")
    return kind


def build_encoder(shape, train_cfg: dict) -> nn.Module:
    kind = encoder_kind(shape, train_cfg)
    if kind == "mlp":
        if not isinstance(shape, int):
            raise ValueError(f"encoder mlp takes vector features, got inputs of shape {shape}; "
                             f"use resnet18 (images, frames) or transformer / lstm (sequences)")
        return MLPEncoder(shape, train_cfg["hidden"], train_cfg["dropout"])
    if kind in ("transformer", "lstm"):
        if isinstance(shape, int) or len(shape) != 2:
            raise ValueError(f"encoder {kind} takes (T, d) sequences, got inputs of shape {shape}")
        from .sequence import SequenceEncoder
        return SequenceEncoder(shape[1], train_cfg.get("seq_dim", 64), train_cfg.get("seq_layers", 1),
                               train_cfg.get("dropout", 0.0), kind)
    if isinstance(shape, int) or len(shape) not in (3, 4):
        raise ValueError(f"encoder resnet18 takes (C, H, W) or (T, C, H, W) inputs, got {shape}")
    from .resnet import ResNet18Encoder
    return ResNet18Encoder(shape[-3], frames=len(shape) == 4, width=train_cfg.get("resnet_width", 64))


def amp_dtype(train_cfg: dict, device, encoder: nn.Module) -> torch.dtype | None:
    """The autocast dtype of one encoder (None: float32). `amp`: `auto` (default) = bfloat16 on a
    CUDA device that supports it, for every encoder but the MLP (vector features are tiny: nothing
    to gain, and their results stay those of float32); `bf16` = bfloat16 for every encoder on any
    device (the CPU too: tests); `off` = float32."""
    mode = train_cfg.get("amp", "auto")
    if mode in ("off", False, None):
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode != "auto":
        raise ValueError(f"amp {mode!r}: expected auto, bf16 or off")
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported() and not isinstance(encoder, MLPEncoder):
        return torch.bfloat16
    return None


def prepare_for_device(model: "MultimodalModel", train_cfg: dict, device) -> "MultimodalModel":
    """The CUDA fast path, on a model already on `device`: each encoder's autocast dtype
    (`amp_dtype`); with convolutions on CUDA, channels-last weights and cuDNN's autotuner.
    Changes nothing on the CPU with the default `amp: auto`."""
    device = torch.device(device)
    for enc in model.encoders:
        if isinstance(enc, Encoder):
            enc.amp = amp_dtype(train_cfg, device, enc)
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return model


def build_model(in_dims: list, n_classes: int, fusion: str, train_cfg: dict) -> MultimodalModel:
    """in_dims: per modality, a feature count (MLP) or an input shape (ResNet-18)."""
    return MultimodalModel([build_encoder(d, train_cfg) for d in in_dims], fusion, n_classes)
