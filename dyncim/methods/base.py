"""The hooks a training method plugs into the shared loop (dyncim.train.loop).

A method overrides only what it changes. The loop, per training step:

    out = method.forward(model, xs, idx)           # default: model(xs)
    loss, logits = method.loss(out, y, idx)        # logits: the fused prediction, for accuracy
    method.backward(loss, model, out, y)           # default: loss.backward()
    method.after_backward(model, out, y)           # gradient modulation (OGM-GE, AGM, ...)
    optimiser.step(); method.after_step(model)

and per epoch `on_epoch_start`, then validation through `predict` (label-free), then
`on_epoch_end` (statistics, re-initialisation, weight updates) and `log` (TensorBoard).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F


@dataclass
class Context:
    """What a method may know about the run it is part of."""
    names: list[str]            # modality names
    n_classes: int
    n_samples: int              # size of the whole data set (per-sample state is indexed by it)
    epochs: int
    steps_per_epoch: int
    device: torch.device
    corrupted: torch.Tensor | None = None  # synthetic sets: per-sample corruption codes (diagnostics only)
    extras: dict = field(default_factory=dict)

    @property
    def n_modalities(self) -> int:
        return len(self.names)


class Method:
    fusion = "concat"         # the model's fusion module: "concat" or "sum"
    min_modalities = 1        # methods that balance modalities against each other need 2

    def __init__(self, cfg: dict, ctx: Context):
        self.cfg, self.ctx = cfg, ctx
        if ctx.n_modalities < self.min_modalities:
            raise ValueError(f"{cfg.get('type', type(self).__name__)}: needs at least "
                             f"{self.min_modalities} modalities, the data set has {ctx.n_modalities}")

    # --- set-up -------------------------------------------------------------------------------
    @classmethod
    def parts(cls, n_modalities: int) -> list[list[int]]:
        """Modality subsets trained as separate models (unimodal: one per modality)."""
        return [list(range(n_modalities))]

    def setup(self, model) -> None:
        """Add the method's modules or buffers to `model.extra` (saved with the model)."""

    def param_groups(self, model) -> list[dict]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    # --- per step -----------------------------------------------------------------------------
    def forward(self, model, xs, idx):
        return model(xs)

    def loss(self, out, y, idx):
        """Return (scalar loss, fused logits of the batch)."""
        return F.cross_entropy(out.fused, y), out.fused

    def backward(self, loss, model, out, y) -> None:
        loss.backward()

    def after_backward(self, model, out, y) -> None:
        pass

    def after_step(self, model) -> None:
        pass

    # --- per epoch ----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, trainer) -> None:
        pass

    def on_epoch_end(self, epoch: int, trainer) -> None:
        pass

    def log(self, writer, epoch: int, trainer) -> None:
        """Write method-specific TensorBoard scalars and histograms."""

    # --- inference (no labels) ----------------------------------------------------------------
    def predict(self, model, out) -> torch.Tensor:
        return out.fused

    # --- state saved in resume checkpoints ----------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
