"""Sequence encoders for pre-extracted feature sequences (CMU-MOSEI: text, audio, vision, each
(T, d) per sample: T = 50 in the word-aligned pickle; the unaligned one has 50 text steps and
longer audio and vision sequences; see `dyncim.data.sources.mosei`).

`transformer` (the default, and what `encoder: auto` picks for (T, d) inputs): the unimodal path of
MulT (Tsai et al., ACL 2019), whose features these are: a per-step linear projection to `dim`
(MulT's kernel-1 temporal convolution) scaled by sqrt(dim), sinusoidal positions, self-attention
layers (pre-norm, ReLU feed-forward of 4 * dim), a final LayerNorm. Our choices, for a
late-fusion model: one layer per modality by default (MulT stacks cross-modal layers; here the
methods fuse the modalities' features, so each encoder sees only its own sequence), and mean
pooling over the steps rather than MulT's last step (short utterances are zero-padded to 50
steps; a mean does not depend on which end holds the padding).
`lstm`: an LSTM (`seq_layers` layers, one by default) whose last hidden state is the feature, the recurrent per-modality
encoder of the LSTM-based MOSEI models (e.g. MISA, Self-MM); an alternative for comparison.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .encoders import Encoder


def sinusoidal_positions(steps: int, dim: int, device=None) -> torch.Tensor:
    """(steps, dim) sine / cosine positions (Vaswani et al.)."""
    pos = torch.arange(steps, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(steps, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class SequenceEncoder(Encoder):
    """(B, T, in_dim) -> (B, dim)."""

    def __init__(self, in_dim: int, dim: int = 64, layers: int = 1, dropout: float = 0.0,
                 kind: str = "transformer"):
        super().__init__()
        if kind not in ("transformer", "lstm"):
            raise ValueError(f"sequence encoder {kind!r}: expected transformer or lstm")
        self.kind, self.out_dim = kind, dim
        if kind == "lstm":
            self.rnn = nn.LSTM(in_dim, dim, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
            return
        self.proj = nn.Linear(in_dim, dim)
        self.scale = math.sqrt(dim)
        heads = 4 if dim % 4 == 0 else 1
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def encode(self, x):
        if self.kind == "lstm":
            if x.device.type == "cpu":  # oneDNN's bfloat16 LSTM fails on many CPUs: float32 there
                with torch.autocast("cpu", enabled=False):
                    _, (h, _) = self.rnn(x.float())
            else:
                _, (h, _) = self.rnn(x)
            return h[-1]
        h = self.proj(x) * self.scale + sinusoidal_positions(x.shape[1], self.out_dim, x.device)
        return self.norm(self.body(h)).mean(1)
