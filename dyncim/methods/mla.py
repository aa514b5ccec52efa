"""MLA: alternating unimodal adaptation through one shared head, with test-time uncertainty fusion.

Zhang, Latham & Li, "Multimodal Representation Learning by Alternating Unimodal Adaptation",
CVPR 2024 (official code: GitHub Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation,
`main.py` with `--gs_flag --dynamic`, `utils/utils.py` GSPlugin).

Mechanism:
  - one linear head W shared by every modality (`model.extra["mla_head"]`); each update trains one
    modality: CE(W h_m), through encoder m and W only. `alternate: batch` (official default) runs,
    for every batch, one update per modality in order 0, 1, ..., M-1 (M optimiser steps per batch);
    `alternate: step` gives each loop step to one modality in turn (step t: modality t mod M), and
    `forward` then runs only that modality's encoder.
  - gradient modification of the shared head (orthogonal weight modification): a projector P
    (d x d, P_0 = I) accumulates the mean feature r = mean_batch h_m of every past update,
    k = P r^T, P <- P - k k^T / (alpha + r k), alpha = owm_alpha^(1 + b / steps_per_epoch) (b: the
    batch index in the epoch); the head's weight gradient becomes grad P^T, i.e. (nearly, alpha > 0)
    orthogonal to the directions of the previous updates (other modalities included), so learning
    one modality does not overwrite what the head learned from the others. `normalize_projector`
    divides P by its Frobenius norm after each update, as the official code does.
  - prediction (`predict`, label-free): per sample, e_m = entropy(softmax(W h_m)), weights
    softmax_m(-e_m) (= exp(max e - e_m) / sum ...), fused = sum_m w_m W h_m; `dynamic_fusion:
    false` uses fixed weights `fusion_weights` (empty: uniform).
The model's sum-fusion heads are aliased to the shared head, so `out.logits[m]` (validation and
evaluation per-modality accuracy) is the shared head on modality m. Works for 2 and 3 modalities
(the official code has a 3-modality path).

Deviations from the official code (also in docs/baselines.md):
  - the official GSPlugin only projects a parameter named "module.weight", but is handed the bare
    `nn.Linear` head whose weight is named "weight" (commit 11ae1ee "Fix bugs" removed the
    `or n == "weight"`), so at the published commit the projection never runs; we apply it;
  - order of the projector update: the official code first adds the current batch's mean feature
    to P and then projects the current gradient (which also removes the current batch's own mean
    direction); we project with P built from the previous updates, then add the current one
    (orthogonal weight modification as published, and as the paper describes it: orthogonal to the
    previous modalities);
  - the official P is a fixed 512 x 512 identity (hard-coded feature size); here d = encoder width;
  - dynamic fusion: the official `calculate_entropy` takes softmax over the batch dimension and
    sums over the whole batch, giving one weight per modality per test batch (predictions depend
    on the batch composition); we use per-sample entropies over classes, as in the paper;
  - `alternate: step` is an option of ours (one modality per loop step); with `alternate: batch`
    the extra optimiser steps are taken inside `backward` with the run's optimiser (kept from
    `on_epoch_start`), since the hooks have no per-batch sub-step;
  - extra optimiser steps of the official code: it pins torch 1.8.1, whose `zero_grad()` zeroes
    gradients rather than clearing them, and deletes them only at the end of each batch, so an
    encoder already updated in the batch keeps a zero gradient and SGD (momentum 0.9, weight decay
    1e-4) steps it again at every later update of the batch (momentum and weight decay, no new
    gradient): encoder m gets M-1-m extra steps per batch (two modalities: the first modality's
    encoder one). We clear gradients (set_to_none), one step per encoder per batch.

Hooks (dyncim/methods/base.py says when each fires): setup (the shared head); forward (one modality
per step with alternate: step); loss; backward (one update per modality: the first M-1 optimiser
steps of a batch, with the run's optimiser kept from on_epoch_start); on_epoch_start; predict
(entropy-weighted fusion).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..models.multimodal import Output
from .base import Method, StepResult


def owm_update(P: torch.Tensor, r: torch.Tensor, alpha: float, normalize: bool) -> torch.Tensor:
    """One recursive orthogonal-projector update with the mean feature r (1 x d)."""
    k = P @ r.t()
    P = P - (k @ k.t()) / (alpha + r @ k)
    return P / torch.linalg.matrix_norm(P) if normalize else P


def entropy_weights(logits: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample fusion weights (M x B): softmax over modalities of minus the entropy."""
    ent = torch.stack([-(F.softmax(z, 1) * F.log_softmax(z, 1)).sum(1) for z in logits])
    return F.softmax(-ent, dim=0)


class MLA(Method):
    fusion = "sum"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.alternate = cfg["alternate"]
        if self.alternate not in ("batch", "step"):
            raise ValueError(f"mla: alternate must be batch or step, got {self.alternate!r}")
        self.owm_alpha = float(cfg["owm_alpha"])
        self.normalize = bool(cfg["normalize_projector"])
        self.dynamic = bool(cfg["dynamic_fusion"])
        w = list(cfg["fusion_weights"]) or [1.0 / ctx.n_modalities] * ctx.n_modalities
        if len(w) != ctx.n_modalities:
            raise ValueError(f"mla: fusion_weights has {len(w)} entries for {ctx.n_modalities} modalities")
        self.fixed = torch.tensor(w, device=ctx.device)
        self.P = None          # projector of the shared head's input space
        self.updates = 0       # unimodal updates so far (the official exp_count)
        self.batch = 0         # batch index in the current epoch
        self.optimizer = None  # alternate: batch (set in on_epoch_start)
        self.current = 0       # alternate: step, the modality of the current step

    # --- model -------------------------------------------------------------------------------
    def setup(self, model):
        dims = {e.out_dim for e in model.encoders}
        if len(dims) != 1:
            raise ValueError(f"mla: the shared head needs equal encoder widths, got {sorted(dims)}")
        d = dims.pop()
        head = nn.Linear(d, model.n_classes)
        model.extra["mla_head"] = head
        model.fusion.heads = nn.ModuleList([head] * len(model.encoders))  # aliases, one parameter set
        if self.P is None:
            self.P = torch.eye(d, device=self.ctx.device)

    @staticmethod
    def _head(model):
        return model.extra["mla_head"]

    def _fuse(self, logits):
        if self.dynamic:
            w = entropy_weights(logits)
            return sum(wm.unsqueeze(1) * z for wm, z in zip(w, logits))
        return sum(wm * z for wm, z in zip(self.fixed, logits))

    # --- per step ----------------------------------------------------------------------------
    def forward(self, model, xs, idx):
        if self.alternate == "batch":
            return model(xs)
        m = self.current = self.updates % len(model.encoders)
        h = model.encoders[m](xs[m])
        z = self._head(model)(h)
        none = [None] * len(model.encoders)
        feats, logits = list(none), list(none)
        feats[m], logits[m] = h, z
        return Output(feats, logits, z)

    def loss(self, model, out, y, idx):
        if self.alternate == "step":
            return StepResult(F.cross_entropy(out.fused, y), out.fused, out, y)
        # batch: reported loss and accuracy before the batch's updates (the updates recompute)
        with torch.no_grad():
            loss = torch.stack([F.cross_entropy(z, y) for z in out.logits]).mean()
            return StepResult(loss, self._fuse([z.detach() for z in out.logits]), out, y)

    def backward(self, model, res):
        out, y = res.out, res.y
        if self.alternate == "step":
            res.loss.backward()
            self._modify(model, self.current, out.feats[self.current])
            self.updates += 1
            self.batch += 1
            return
        if self.optimizer is None and len(model.encoders) > 1:
            raise RuntimeError("mla: alternate: batch needs the optimiser (set in on_epoch_start)")
        head, last = self._head(model), len(model.encoders) - 1
        for m, h in enumerate(out.feats):
            # the head is applied afresh: the previous modality's step changed it in place
            F.cross_entropy(head(h), y).backward()
            self._modify(model, m, h)
            self.updates += 1
            if m < last:  # the loop takes the last modality's step
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.batch += 1

    def _modify(self, model, m, h):
        """Project the shared head's weight gradient, then add this update's direction to P."""
        w = self._head(model).weight
        if w.grad is not None:
            w.grad = w.grad @ self.P.t()
        alpha = self.owm_alpha ** (1.0 + self.batch / max(self.ctx.steps_per_epoch, 1))
        self.P = owm_update(self.P, h.detach().mean(0, keepdim=True), alpha, self.normalize)

    # --- per epoch ---------------------------------------------------------------------------
    def on_epoch_start(self, run):
        self.batch = 0
        self.optimizer = run.optimizer   # backward steps it between the modalities of a batch

    # --- inference ---------------------------------------------------------------------------
    def predict(self, model, out):
        head = self._head(model)
        return self._fuse([head(h) for h in out.feats])

    # --- state -------------------------------------------------------------------------------
    def state_dict(self):
        return {"P": self.P, "updates": self.updates}

    def load_state_dict(self, state):
        self.P = state["P"].to(self.ctx.device)
        self.updates = int(state["updates"])
