"""ReconBoost: alternating, boosting-like training of one modality learner at a time.

Hua, Xu, Bao, Yang and Huang, "ReconBoost: Boosting Can Achieve Modality Reconcilement",
ICML 2024 (official code: github.com/huacong/ReconBoost, `train.py`, `models/dynamic_net.py`,
`schedule.py`).

Mechanism. Learner m is encoder m plus a classification head (one head shared by every
modality by default, the official `common_space`); the prediction is the ensemble
boost_rate * sum_m z^m (boost_rate a learned scalar, initially `boost_rate`). Training runs in
stages; stage s picks modality a = s mod M (the official fixed round-robin schedule) and has
  1. epochs_per_stage epochs in which only learner a is trained, with the boosting loss against
     the ensemble of the other learners, frozen (no gradient, their logits detached):
         p_ens = softmax(boost_rate * sum_{j != a} z^j),   p_a = softmax(z^a),
         L = mean over batch and classes of  -w1 * y * log p_a + w2 * (y * p_ens) * log p_a,
     i.e. (1/C) * [w1 * CE(y, p_a) - w2 * KL(y*p_ens || p_a)] up to a term constant in learner a:
     the KL reconcilement term lowers the weight of the samples the others already get right, so
     the new learner corrects their errors (gradient boosting);
  2. correct_epochs epochs of global rectification: every learner in the ensemble (and the head
     and boost_rate) trained jointly with the cross-entropy of the ensemble prediction
     (correct_epochs = 0 switches it off).
With `reset_optimizer` the optimiser state is cleared at the start of every phase: the official
code builds a fresh SGD optimiser for each phase of each stage.
Learners join the ensemble in their first stage (the official path without pre-trained unimodal
models): in stage s < M the ensemble holds learners 0..s only; with no other learner in it
(stage 0) p_ens(y) = 1, as the official constant c0 gives. Prediction (`predict`) uses the
ensemble members kept in a buffer of `model.extra["reconboost"]`, so it is label-free and is
restored with the model. Defined for any number of modalities (the official code has two- and
three-modality scripts with the same round-robin).

Deviations from the official code (also in docs/baselines.md):
- The "ga" (memory consolidation) term of the official code, alpha * MSE(softmax(z^a),
  softmax(z^prev)), is computed on two detached tensors, so it has no gradient and changes nothing
  but the logged loss; we leave it out (no `alpha` parameter).
- The official runs start from pre-trained unimodal encoders (`--use_pretrain` in every README
  command); our pipeline trains from scratch, following the official code's no-pretraining path
  (learners join the ensemble stage by stage, see above).
- The shared head is our model's linear sum-fusion head, tied across modalities (the official
  head is a 512-256-C MLP); `shared_head: false` gives one linear head per learner (the official
  `common_space=False` variant; argparse's type=bool there turns any non-empty value, "False"
  included, into True).
- The official script runs up to 1001 stages with a learning-rate x0.1 every 30 stages
  (CREMA-D), a separate learning rate per phase (m_lr, e_lr, both 0.01) and weight decay 5e-4;
  we use the shared training configuration (epochs, one learning rate and schedule, weight decay),
  so a run holds epochs / (epochs_per_stage + correct_epochs) stages: 5 with 40 epochs and the
  defaults (4 + 4), active learners A, B, A, B, A for two modalities and A, B, C, A, B for three,
  where the third modality gets one boosting phase (epochs 16-19), enters the ensemble only at
  epoch 16 and is otherwise trained only in the rectification phases (a length that is not a
  multiple of the stage length ends in a partial stage).
- The official `train_MSA.py` (three modalities) cannot run as released: `schedule_model` has no
  branch for dataset 'MSA' and returns None; we use its round-robin (`stage % 3`) of the MOSEI
  branch for every M.
- Model selection: the official script tests after every stage and keeps the best test accuracy;
  our loop validates every epoch on the validation split. The official training loader drops
  the last partial batch; the shared loop keeps it.
- Defaults of w1, w2 are those of `train.py` (two modalities: 5, 1); `train_MSA.py` uses 1, 0.25.

Hooks (dyncim/methods/base.py says when each fires): setup (the ensemble state, the shared head);
on_epoch_start (the stage schedule; a fresh optimiser state per phase through run.optimizer);
forward; loss (the boosting loss); after_backward (drops the gradients of the learners not being
trained); predict (the ensemble); log.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..models import Output
from .base import Method, StepResult


class _EnsembleState(nn.Module):
    """The learned boost rate and which learners are in the ensemble (saved with the model)."""

    def __init__(self, n_modalities: int, boost_rate: float):
        super().__init__()
        self.boost_rate = nn.Parameter(torch.tensor(float(boost_rate)))
        self.register_buffer("members", torch.zeros(n_modalities))
        self.members[0] = 1.0


def boosting_loss(z_active: torch.Tensor, ensemble: torch.Tensor | None, y: torch.Tensor,
                  w1: float, w2: float) -> torch.Tensor:
    """Mean over batch and classes of -w1 y log p_a + w2 (y p_ens) log p_a (official form).

    `ensemble`: the other learners' (boost-scaled) logits, or None when there are none (p_ens(y) = 1)."""
    logp_y = F.log_softmax(z_active, dim=1).gather(1, y[:, None])[:, 0]
    if ensemble is None:
        p_ens_y = torch.ones_like(logp_y)
    else:
        p_ens_y = F.softmax(ensemble.detach(), dim=1).gather(1, y[:, None])[:, 0]
    return ((w2 * p_ens_y - w1) * logp_y).mean() / z_active.shape[1]


class ReconBoost(Method):
    fusion = "sum"   # one head per learner (tied when shared_head); the prediction sums them

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if cfg["epochs_per_stage"] < 1 or cfg["correct_epochs"] < 0:
            raise ValueError("reconboost: epochs_per_stage must be >= 1 and correct_epochs >= 0")
        self.n = ctx.n_modalities
        self.stage, self.boosting, self.active = 0, True, 0
        self.state: _EnsembleState | None = None

    # --- schedule -------------------------------------------------------------------------------
    def schedule(self, epoch: int) -> tuple[int, bool, int, bool]:
        """(stage, boosting phase?, active modality, first epoch of a phase?) of a 0-based epoch."""
        per, cor = self.cfg["epochs_per_stage"], self.cfg["correct_epochs"]
        stage, pos = divmod(epoch, per + cor)
        return stage, pos < per, stage % self.n, pos in (0, per)

    def members(self) -> list[int]:
        """Learners in the ensemble during the current stage (each joins in its first stage)."""
        return list(range(min(self.stage, self.n - 1) + 1))

    def trainable(self) -> list[int]:
        return [self.active] if self.boosting else self.members()

    # --- set-up ---------------------------------------------------------------------------------
    def setup(self, model):
        if self.cfg["shared_head"]:
            heads = model.fusion.heads
            if len({(h.in_features, h.out_features) for h in heads}) != 1:
                raise ValueError("reconboost: shared_head needs encoders of equal output width")
            for m in range(1, len(heads)):
                heads[m] = heads[0]
        if "reconboost" not in model.extra:
            model.extra["reconboost"] = _EnsembleState(self.n, self.cfg["boost_rate"])
        self.state = model.extra["reconboost"]

    def on_epoch_start(self, run):
        self.stage, self.boosting, self.active, phase_start = self.schedule(run.epoch)
        mask = torch.zeros(self.n)
        mask[self.members()] = 1.0
        self.state.members.copy_(mask)
        if phase_start and self.cfg["reset_optimizer"]:
            run.optimizer.state.clear()   # a fresh optimiser per phase, as the official code

    # --- per step -------------------------------------------------------------------------------
    def forward(self, model, xs, idx):
        train = set(self.trainable())
        feats, logits = [], []
        for m, (enc, head, x) in enumerate(zip(model.encoders, model.fusion.heads, xs)):
            with torch.set_grad_enabled(torch.is_grad_enabled() and m in train):
                h = enc(x)
                feats.append(h)
                logits.append(head(h))
        return Output(feats, logits, self._ensemble(logits, self.members()))

    def _ensemble(self, logits, which):
        return self.state.boost_rate * torch.stack([logits[j] for j in which]).sum(0)

    def loss(self, model, out, y, idx):
        if not self.boosting:
            return StepResult(F.cross_entropy(out.fused, y), out.fused, out, y)
        others = [j for j in self.members() if j != self.active]
        ens = self._ensemble(out.logits, others).detach() if others else None
        loss = boosting_loss(out.logits[self.active], ens, y, self.cfg["weight1"], self.cfg["weight2"])
        return StepResult(loss, out.fused, out, y)

    def after_backward(self, model, res):
        # Only the trainable learners update: no gradient (hence no momentum or weight-decay step)
        # for the others. A shared head belongs to every learner and stays trainable.
        train = set(self.trainable())
        for m, enc in enumerate(model.encoders):
            if m not in train:
                for p in enc.parameters():
                    p.grad = None
        if not self.cfg["shared_head"]:
            for m, head in enumerate(model.fusion.heads):
                if m not in train:
                    for p in head.parameters():
                        p.grad = None
        if self.boosting:
            self.state.boost_rate.grad = None

    # --- inference and logging ------------------------------------------------------------------
    def predict(self, model, out):
        st = model.extra["reconboost"]
        return st.boost_rate * (torch.stack(out.logits) * st.members[:, None, None]).sum(0)

    def log(self, writer, epoch):
        writer.add_scalar("reconboost/stage", self.stage, epoch)
        writer.add_scalar("reconboost/active_modality", self.active if self.boosting else -1, epoch)
        writer.add_scalar("reconboost/boost_rate", float(self.state.boost_rate.detach()), epoch)
