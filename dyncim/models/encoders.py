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
    # The stage API (below): each stage's output channel count; () = no stages.
    stage_dims: tuple[int, ...] = ()

    def encode(self, x):
        raise NotImplementedError

    def forward(self, x):
        if self.amp is None:
            return self.encode(x)
        with torch.autocast(x.device.type, dtype=self.amp):
            h = self.encode(x)
        return h.float()

    # --- the stage API ----------------------------------------------------------------------
    # An encoder with stages (`stage_dims` non-empty) computes `encode(x)` as
    #     h = stage_input(x); h = stage(0, h); ...; h = stage(S - 1, h); stage_output(h)
    # with exactly the same operations (bit-identical results: tests/test_models.py), so that a
    # caller can transform the features between stages (Greedy's MMTM blocks:
    # dyncim/methods/greedy.py; several encoders at once: multimodal.encode_by_stages).
    # Stage outputs are sample-major, (B, C_k, *rest) with C_k = stage_dims[k]: (B, C) for
    # vectors, (B, C, H, W) for images, (B, C, T, H, W) for frame stacks; under `amp` they stay
    # in the autocast dtype (bfloat16) as inside `encode`, and `stage_output` hands back float32
    # as `forward` does. `forward` and `encode` do not use this API: they are unchanged.

    def stage_input(self, x):
        """The input of stage 0."""
        return self._amp_call(self._stage_input, x)

    def stage(self, k: int, h):
        """Stage k (0-based) applied to the previous stage's output (or `stage_input`'s)."""
        return self._amp_call(lambda t: self._stage(k, t), h)

    def stage_output(self, h):
        """The encoder's features from the last stage's output."""
        h = self._amp_call(self._stage_output, h)
        return h if self.amp is None else h.float()

    def encode_stages(self, x, between=None):
        """`forward(x)` computed stage by stage; `between(k, h) -> h`, if given, transforms the
        output of stage k before the next stage (or the pooling) reads it."""
        if not self.stage_dims:
            raise ValueError(f"{type(self).__name__}: has no stages")
        h = self.stage_input(x)
        for k in range(len(self.stage_dims)):
            h = self.stage(k, h)
            if between is not None:
                h = between(k, h)
        return self.stage_output(h)

    def _amp_call(self, fn, h):
        if self.amp is None:
            return fn(h)
        with torch.autocast(h.device.type, dtype=self.amp):
            return fn(h)

    def _stage_input(self, x):
        raise ValueError(f"{type(self).__name__}: has no stages")

    def _stage(self, k, h):
        raise ValueError(f"{type(self).__name__}: has no stages")

    def _stage_output(self, h):
        raise ValueError(f"{type(self).__name__}: has no stages")


class MLPEncoder(Encoder):
    """Linear-ReLU stack for vector features; `out_dim` is the last hidden width.
    Stages: one per hidden layer (its Linear, ReLU and Dropout), outputs (B, hidden[k])."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        layers, d, bounds = [], in_dim, []
        for h in hidden:
            start = len(layers)
            layers += [nn.Linear(d, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            bounds.append((start, len(layers)))
            d = h
        self.net = nn.Sequential(*layers)
        self.out_dim = d
        self.stage_dims = tuple(hidden)
        self._bounds = tuple(bounds)   # stage k: self.net[a:b]

    def encode(self, x):
        return self.net(x)

    def _stage_input(self, x):
        return x

    def _stage(self, k, h):
        a, b = self._bounds[k]
        for i in range(a, b):
            h = self.net[i](h)
        return h

    def _stage_output(self, h):
        return h
