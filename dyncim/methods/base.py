"""The hooks a training method plugs into the shared loop (dyncim.train.loop).

A method overrides only what it changes. The loop, per training step:

    out = method.forward(model, xs, idx)           # default: model(xs)
    res = method.loss(model, out, y, idx)          # a StepResult: loss, fused logits, the method's terms
    optimiser.zero_grad()
    method.backward(model, res)                    # default: res.loss.backward()
    method.after_backward(model, res)              # gradient modulation (OGM-GE, AGM, ...)
    optimiser.step(); method.after_step(model)

and per epoch, with `run` a RunView (dyncim.train.view: epoch, seed, model, optimiser, data and
split indices, training config, `run.evaluate(index)`, `run.make_optimizer(groups)`):

    method.begin_epoch(run)     # sets `method.epoch` (0-based), then calls on_epoch_start(run)
    idx = method.epoch_indices(run, perm)   # the sampler hook, once per epoch before batching:
                                # perm = the epoch's seeded permutation of run.train_idx (the
                                # trainer's shuffle generator, drawn whatever the hook does); the
                                # loop batches the returned 1-D index tensor in order, in slices of
                                # batch_size (repeats allowed; training indices only). Default: perm
                                # itself (bit-identical to a loop without the hook). Randomness only
                                # from a method-owned generator kept in state_dict (resumable).
    ... the epoch's steps, then validation through `predict` (label-free) ...
    method.on_epoch_end(run)    # statistics, re-initialisation, weight updates
    method.log(writer, step)    # TensorBoard; step = the number of epochs done (1-based)

and once per evaluated run, after training (dyncim.evaluation.evaluate, on the model chosen on validation,
eval mode, no gradients; runs of one part only):

    method.diagnostics(model, data, test_idx, batch_size)   # the method's own test-split figures
                                                             # (the report's `diagnostics`); default {}

Whatever `loss` computes for `backward` / `after_backward` travels in the StepResult, never in
attributes of the method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F


def classification_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on class indices; on multi-hot targets (multi-label sets), binary
    cross-entropy with logits, the mean over samples and labels (dyncim.multilabel)."""
    if y.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, y)
    return F.cross_entropy(logits, y)


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
    multilabel: bool = False    # multi-hot float targets (dyncim.multilabel); only some methods support them
    extras: dict = field(default_factory=dict)

    @property
    def n_modalities(self) -> int:
        return len(self.names)


@dataclass
class StepResult:
    """What `loss` hands to `backward` and `after_backward`."""
    loss: torch.Tensor          # the scalar objective (logged; the default backward differentiates it)
    logits: torch.Tensor        # the fused prediction of the batch (training accuracy)
    out: Any                    # the forward pass (dyncim.models.Output)
    y: torch.Tensor             # the batch's labels (class indices, or multi-hot targets)
    terms: Any = None           # the method's own terms for its backward (e.g. per-loss values)


class Method:
    fusion = "concat"         # the model's fusion module ("concat" or "sum"), unless cfg["fusion"] says
    min_modalities = 1        # methods that balance modalities against each other need 2

    def __init__(self, cfg: dict, ctx: Context):
        self.cfg, self.ctx = cfg, ctx
        self.fusion = cfg.get("fusion", type(self).fusion)
        self.epoch = 0            # the current 0-based epoch, kept by begin_epoch
        if ctx.multilabel:
            from .catalog import CATALOG
            kind = cfg.get("type")
            if kind not in CATALOG or not CATALOG[kind].multilabel:
                ok = sorted(t for t, e in CATALOG.items() if e.multilabel)
                raise ValueError(f"{kind or type(self).__name__}: does not support multi-label data sets; "
                                 f"supported: {', '.join(ok)}")
        if ctx.n_modalities < self.min_modalities:
            raise ValueError(f"{cfg.get('type', type(self).__name__)}: needs at least "
                             f"{self.min_modalities} modalities, the data set has {ctx.n_modalities}")

    def modulating(self, first_epoch: int = 0) -> bool:
        """Whether this epoch lies in the modulation window [modulation_starts, modulation_ends]
        (both ends included), epochs counted from `first_epoch` as the method's official code does."""
        return self.cfg["modulation_starts"] <= self.epoch + first_epoch <= self.cfg["modulation_ends"]

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

    def loss(self, model, out, y, idx) -> StepResult:
        return StepResult(classification_loss(out.fused, y), out.fused, out, y)

    def backward(self, model, res: StepResult) -> None:
        res.loss.backward()

    def after_backward(self, model, res: StepResult) -> None:
        pass

    def after_step(self, model) -> None:
        pass

    # --- per epoch ----------------------------------------------------------------------------
    def begin_epoch(self, run) -> None:
        """Called by the loop at the start of each epoch; methods override on_epoch_start."""
        self.epoch = run.epoch
        self.on_epoch_start(run)

    def on_epoch_start(self, run) -> None:
        pass

    def epoch_indices(self, run, perm: torch.Tensor) -> torch.Tensor:
        """The sampler hook: the sample indices the epoch's batches draw, in order (the loop
        slices them into batches of `batch_size`). `perm`: this epoch's seeded permutation of
        `run.train_idx`, on the training device. Re-sampling methods (modality valuation, BSS)
        return another order, subset or multiset of training indices, drawing any randomness
        from a generator of their own saved in `state_dict`. Default: `perm` unchanged."""
        return perm

    def on_epoch_end(self, run) -> None:
        pass

    def log(self, writer, step: int) -> None:
        """Write method-specific TensorBoard scalars and histograms (step: epochs done, 1-based)."""

    # --- inference (no labels) ----------------------------------------------------------------
    def predict(self, model, out) -> torch.Tensor:
        return out.fused

    def diagnostics(self, model, data, index: torch.Tensor, batch_size: int | None = None) -> dict:
        """The method's own figures on `data`'s samples `index` (the test split; `data`: a
        dyncim.data.sets.dataset.DataSet), for the evaluation record's `diagnostics`: {name: number}.
        `batch_size`: forward passes in batches of that size (None: all of `index` at once).
        Default: none ({}, and the record has no `diagnostics`)."""
        return {}

    def training_record(self) -> dict:
        """Figures of the training itself, not of any split (what a curriculum admitted over the
        epochs): saved with the run in best.pt, where the evaluation (which rebuilds the method
        without its training state) adds them to the record's `diagnostics`. Default: none."""
        return {}

    # --- state saved in resume checkpoints ----------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def admitted_summary(admitted: list[float]) -> dict:
    """A curriculum's per-epoch admitted fractions, summarised for the report: their mean, the
    first epoch's, and the first epoch (1-based) that admitted everything (0: none did). {} when
    no epoch ran."""
    if not admitted:
        return {}
    full = next((e + 1 for e, a in enumerate(admitted) if a >= 1.0), 0)
    return {"admitted_mean": sum(admitted) / len(admitted), "admitted_first": admitted[0],
            "admitted_full_epoch": full}
