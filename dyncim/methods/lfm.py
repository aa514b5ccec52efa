"""LFM: a classification term and a modality-alignment term, weighted dynamically.

Yang, Wan et al., "Facilitating Multimodal Classification via Dynamically Learning Modality Gap",
NeurIPS 2024 (official code: github.com/njustkmg/NeurIPS24-LFM, commit ad44fa0; `Crema_epoch.py`
for the fitted weighting, `Crema_epoch_learnable.py` for the learned one).

Model (the official AVClassifier): one linear head per modality, fused logits = their sum
(`fusion: sum`). Per training step, with z^m modality m's logits and p^m = softmax(z^m):
  L_cls   = CE(mean_m z^m, y)                     (official: CE(0.5 o_v + 0.5 o_a))
  L_align = mean over modality pairs (i < j) of A(z^i, z^j),
            A(z^i, z^j) = 1/2 [KL(m || p^i) + KL(m || p^j)],  m = (p^i + p^j) / 2,
            batch means (the official `Alignment`: F.kl_div(p.log(), m, 'batchmean') is KL(m || p),
            so A is the Jensen-Shannon mixture with the KL terms in the reverse direction);
            two modalities: the official term; more: BalanceBenchmark's mean over pairs
  L       = 2 (w_cls L_cls + w_align L_align),    w_cls + w_align = 1 (the official factor 2).
Prediction (label-free): mean_m z^m, the official evaluation's 0.5 o_v + 0.5 o_a.

The weights, set at the start of every epoch (0-based epoch e, before its steps):
- `weighting: fitted` (Crema_epoch.py, `getAlpha_Learnable_Fitted`): w_cls = P(e), a degree-5
  polynomial the authors fitted to the learned weights of their 200-epoch CREMA-D run
  (w_cls(0) = 0.2046, w_cls(100) = 0.539, w_cls(199) = 0.916), w_align = 1 - P(e). Beyond its
  fitted range the polynomial leaves [0, 1] (P(250) = -2.3), so e is clamped at 199.
- `weighting: learned` (Crema_epoch_learnable.py, `getAlpha_Learnable`): starting from
  w_cls = 0.05, w_align = 0.95 (`init_align`), each epoch on a validation batch B:
      g      = H(L_total) . grad(L_cls)      (a Hessian-vector product over all trainable
               parameters, L_total = w_cls L_cls + w_align L_align on B, without the factor 2)
      a      = mean of g over the first parameter tensor (the official
               `hessian_vector_prod[0].mean()`; `hvp_reduce: all` averages every entry instead)
      lr_a  /= 2 when e > 0 and e % 20 == 0 (`lr_alpha_halve_every`), then
      w_align = clip(w_align - lr_a a, 0.05, 0.95),  w_cls = 1 - w_align.
  The HVP runs with the model in eval mode (no BatchNorm statistics from validation samples, no
  dropout draws) and without gradients left on the parameters.

The validation batch: `val_samples` (default 8) indices of the VALIDATION split only
(`run.val_idx`; the official code holds out 16 training samples, draws one batch of them once and
uses its first half, 8), drawn with a generator of the method's own, seeded with the run's seed
plus LFM_SEED and saved in the method's state: once for the whole run (`val_draw: once`, official)
or afresh every epoch (`val_draw: epoch`). The training and test splits are never read by it.

Deviations from the official code (also in docs/baselines.md):
- The validation batch comes from the validation split, not 16 samples held out of training
  (which the official loop then also never trains on); it is not augmented.
- The HVP runs in eval mode at every epoch; the official model is in train mode at epoch 0 and in
  eval mode afterwards (its test pass of the previous epoch left it there).
- log p comes from log_softmax (the official softmax(.).log() is -inf where p underflows; equal
  elsewhere).
- Fitted weighting: the epoch is clamped at 199 (the polynomial's fitted range).
- BalanceBenchmark's LFM_trainer.py (GeWu-Lab/BalanceBenchmark, commit 4c1482f) starts from the
  reversed weights (cls 0.95, align 0.05), uses a quarter of its first validation batch, and its
  config sets lr_alpha 1e-4 too; we follow the official repository's 0.05 / 0.95.

Hooks (dyncim/methods/base.py says when each fires): loss (the two terms, weighted);
on_epoch_start (the epoch's weights: fitted polynomial or one learned step); predict; log.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch.nn import functional as F

from .base import Method, StepResult

LFM_SEED = 0x1F3    # the validation-batch generator's seed is the run's seed plus this
LOSS_SCALE = 2.0    # the official `loss = 2 * (cls_k[0] * loss_cls + cls_k[1] * loss_alignment)`
# Crema_epoch.py's `coef_alpha1` (w_cls = sum_i c_i e^i); its `coef_alpha2` is 1 minus this curve
FITTED_CLS = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08,
              -5.39717505e-11)
FITTED_LAST_EPOCH = 199   # the official run's 200 epochs, 0-based


def fitted_weights(epoch: int) -> tuple[float, float]:
    """(w_cls, w_align) of the fitted weighting at 0-based `epoch` (clamped at 199)."""
    e = min(int(epoch), FITTED_LAST_EPOCH)
    w_cls = sum(c * e ** i for i, c in enumerate(FITTED_CLS))
    return w_cls, 1.0 - w_cls


def pair_alignment(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """1/2 [KL(m || p) + KL(m || q)], m = (p + q)/2, p, q the softmax of `za`, `zb`; batch mean."""
    lp, lq = F.log_softmax(za, dim=1), F.log_softmax(zb, dim=1)
    lm = torch.logaddexp(lp, lq) - math.log(2.0)
    m = lm.exp()
    return 0.5 * ((m * (lm - lp)).sum(1).mean() + (m * (lm - lq)).sum(1).mean())


def alignment_loss(logits: list[torch.Tensor]) -> torch.Tensor:
    """The mean of `pair_alignment` over every pair of modalities."""
    pairs = list(itertools.combinations(range(len(logits)), 2))
    return sum(pair_alignment(logits[i], logits[j]) for i, j in pairs) / len(pairs)


def lfm_terms(logits: list[torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_cls, L_align): the cross-entropy of the modalities' mean logits, and the alignment."""
    return F.cross_entropy(sum(logits) / len(logits), y), alignment_loss(logits)


def alpha_gradient(model, xs, y, w_cls: float, w_align: float, reduce: str = "first") -> float:
    """The learned weighting's update direction on one batch: the mean of H(L_total) . grad(L_cls)
    over the first trainable parameter tensor (`first`, official) or over all of them (`all`)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    params = [p for p in model.parameters() if p.requires_grad]
    # second derivatives through attention (the sequence encoders): only the math kernel of
    # scaled_dot_product_attention has a double backward (the fused CPU and CUDA ones have none)
    with sdpa_kernel(SDPBackend.MATH):
        l_cls, l_align = lfm_terms(model(xs).logits, y)
        total = w_cls * l_cls + w_align * l_align
        g_total = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
        g_cls = torch.autograd.grad(l_cls, params, retain_graph=True, allow_unused=True)
        # only parameters whose total gradient still depends on the parameters have a Hessian row
        live = [i for i, (gt, gc) in enumerate(zip(g_total, g_cls))
                if gt is not None and gc is not None and gt.requires_grad]
        hvp = [None] * len(params)
        if live:
            rows = torch.autograd.grad([g_total[i] for i in live], [params[i] for i in live],
                                       grad_outputs=[g_cls[i] for i in live], allow_unused=True)
            for i, h in zip(live, rows):
                hvp[i] = h
    if reduce == "first":
        return 0.0 if hvp[0] is None else float(hvp[0].mean())
    flat = [h.flatten() if h is not None else torch.zeros(p.numel(), device=p.device)
            for h, p in zip(hvp, params)]
    return float(torch.cat(flat).mean())


class LFM(Method):
    fusion = "sum"
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.weighting = cfg["weighting"]
        if self.weighting not in ("fitted", "learned"):
            raise ValueError(f"lfm: weighting must be fitted or learned, got {self.weighting!r}")
        if cfg["val_draw"] not in ("once", "epoch"):
            raise ValueError(f"lfm: val_draw must be once or epoch, got {cfg['val_draw']!r}")
        if cfg["hvp_reduce"] not in ("first", "all"):
            raise ValueError(f"lfm: hvp_reduce must be first or all, got {cfg['hvp_reduce']!r}")
        if not cfg["align_min"] <= cfg["init_align"] <= cfg["align_max"]:
            raise ValueError("lfm: init_align must lie in [align_min, align_max]")
        self.w_align = float(cfg["init_align"]) if self.weighting == "learned" else fitted_weights(0)[1]
        self.lr_alpha = float(cfg["lr_alpha"])
        self.alpha_grad = 0.0
        self.val_ids: torch.Tensor | None = None
        self.gen: torch.Generator | None = None
        dev = ctx.device
        self._sums = torch.zeros(2, device=dev)   # the epoch's L_cls, L_align sums (logged)
        self._steps = 0

    @property
    def w_cls(self) -> float:
        return 1.0 - self.w_align

    # --- per step -----------------------------------------------------------------------------
    def loss(self, model, out, y, idx):
        l_cls, l_align = lfm_terms(out.logits, y)
        self._sums += torch.stack([l_cls.detach(), l_align.detach()])
        self._steps += 1
        loss = LOSS_SCALE * (self.w_cls * l_cls + self.w_align * l_align)
        return StepResult(loss, out.fused, out, y, (l_cls, l_align))

    def predict(self, model, out):
        return out.fused / len(out.logits)

    # --- per epoch ----------------------------------------------------------------------------
    def validation_batch(self, run) -> torch.Tensor:
        """The validation indices the learned update reads this epoch (see the module docstring)."""
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(int(run.seed) + LFM_SEED)
        if self.val_ids is None or self.cfg["val_draw"] == "epoch":
            n = len(run.val_idx)
            if n == 0:
                raise ValueError("lfm: weighting learned needs a non-empty validation split")
            pick = torch.randperm(n, generator=self.gen)[:self.cfg["val_samples"]]
            self.val_ids = run.val_idx[pick.to(run.val_idx.device)]
        return self.val_ids

    def on_epoch_start(self, run):
        self._sums.zero_()
        self._steps = 0
        if self.weighting == "fitted":
            self.w_align = fitted_weights(run.epoch)[1]
            return
        ids = self.validation_batch(run)
        model = run.model
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            a = alpha_gradient(model, run.data.batch(ids), run.data.labels[ids], self.w_cls,
                               self.w_align, self.cfg["hvp_reduce"])
        finally:
            for m, training in modes:
                m.training = training
        every = self.cfg["lr_alpha_halve_every"]
        if every and run.epoch % every == 0 and run.epoch != 0:
            self.lr_alpha /= 2
        self.alpha_grad = a
        self.w_align = min(self.cfg["align_max"], max(self.cfg["align_min"], self.w_align - self.lr_alpha * a))

    def log(self, writer, epoch):
        writer.add_scalar("lfm/weight_cls", self.w_cls, epoch)
        writer.add_scalar("lfm/weight_align", self.w_align, epoch)
        if self.weighting == "learned":
            writer.add_scalar("lfm/alpha_grad", self.alpha_grad, epoch)
            writer.add_scalar("lfm/lr_alpha", self.lr_alpha, epoch)
        if self._steps:
            cls, align = (self._sums / self._steps).tolist()
            writer.add_scalar("lfm/loss_cls", cls, epoch)
            writer.add_scalar("lfm/loss_align", align, epoch)

    # --- resume -------------------------------------------------------------------------------
    def state_dict(self):
        return {"w_align": self.w_align, "lr_alpha": self.lr_alpha, "alpha_grad": self.alpha_grad,
                "val_ids": None if self.val_ids is None else self.val_ids.clone(),
                "gen": None if self.gen is None else self.gen.get_state()}

    def load_state_dict(self, state):
        self.w_align, self.lr_alpha = float(state["w_align"]), float(state["lr_alpha"])
        self.alpha_grad = float(state["alpha_grad"])
        self.val_ids = None if state["val_ids"] is None else state["val_ids"].to(self.ctx.device)
        self.gen = None
        if state["gen"] is not None:
            self.gen = torch.Generator()
            self.gen.set_state(state["gen"].cpu())
