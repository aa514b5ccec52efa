"""PMR: prototypical modal rebalance.

Fan, Xu, Wang, Wang and Guo, "PMR: Prototypical Modal Rebalance for Multimodal Learning",
CVPR 2023 (official code: github.com/fanyunfeng-bit/Modal-Imbalance-PMR, `main_Prototype_grad.py`).

Mechanism:
  per epoch (before training it): c^m_k = the mean encoder feature of modality m over the
          training samples of class k (eval mode, no gradient), blended with the previous
          epoch's prototypes: c <- (1 - momentum) c_new + momentum c_old;
  per step: p^m = softmax(-||h^m - c^m_k||_2 over k), the prototype (non-parametric) classifier;
          PCE_m = cross-entropy of p^m;  s_m = sum over the batch of p^m[y];
          rho_m = mean_{j != m} s_j / s_m  (> 1: modality m is the slow one);
          beta_m = alpha * clip(rho_m - 1, 0, 1)        (the paper's coefficient; `coefficient:
                   binary` gives the released script's rule beta_m = alpha * [rho_m > 1]);
          gamma_m = clip(1 / rho_m - 1, 0, 1)           (how far m leads the others);
          loss = CE(fused) + sum_m beta_m PCE_m - mu * sum_m gamma_m H(p^m)
  so the slow modality is pulled towards its prototypes and, during the first `per_epochs`
  epochs of the window (prototype entropy regularisation, PER), the dominant modality's
  prototype predictions are kept from collapsing early (its entropy is maximised).
PCE and PER apply in modulation_starts <= epoch <= modulation_ends (0-based, as the official
loop counts); PER while epoch <= modulation_starts + per_epochs.

More than two modalities (the paper defines two): rho_m compares s_m with the mean score of the
other modalities; with two modalities this is the paper's rho exactly.

Deviations from the official code (also listed in docs/baselines.md):
- The released script uses the binary coefficient (alpha for the slower modality, 0 for the
  other) and has no entropy regularisation; the paper defines beta = alpha * clip(rho - 1, 0, 1)
  and PER. We default to the paper (`coefficient: clip`, `mu` > 0) and keep `binary` selectable.
  PER's mu = 0.01 and 10 epochs are not in the official code: they are GeWu-Lab/BalanceBenchmark's
  PMR settings of late 2024 (`mu: 0.01`, `norm_epoch: 10` in configs/trainer_config.yaml at
  commit 01458a1, 2024-11-26; both there from 470891f, 2024-11-05, to ed3c41a, 2025-02-10). The
  entropy is averaged over the batch and taken of each modality's own prototype prediction;
  BalanceBenchmark's PMR_trainer.py at 01458a1 (also 460681f, 470891f) sums it over the batch and,
  by a bug, evaluates the dominant modality's features against every modality's prototypes. Its
  current code (4c1482f, 2025-02-23; the trainer last changed in 39ed569) has no entropy term
  (dropped from the loss at 59c3446, 2024-11-28), the binary coefficient and other defaults
  (alpha 0.6, momentum_coef 0.5, modulation epochs 0-80).
- Prototypes come from the whole training split; the official code uses the first tenth of the
  shuffled training batches (CREMA-D, Kinetics-Sounds) for speed. A class with no training
  sample gets a zero prototype (the official code divides by zero).
- Momentum: the official script applies it from the prototypes computed after epoch 1 on
  (those computed after epoch 0 are used raw); we apply it whenever previous prototypes exist.
  Prototypes are not recomputed after modulation_ends (nothing uses them any more).
- No `.item()` per step; the official code computes the scores with a Python loop over samples
  and distances with a double loop (here torch.cdist). Its unused --temperature argument is not
  carried over (the logits are the negative distances, as there).

Hooks (dyncim/methods/base.py says when each fires): on_epoch_start (prototypes from an eval-mode
pass over the training split, run.evaluate); loss (fused cross-entropy + β-weighted prototype
cross-entropy, minus the entropy term early on); log.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .base import Method, StepResult


def class_prototypes(feats: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(K, d) mean feature per class; zero for a class without samples."""
    onehot = F.one_hot(y, n_classes).to(feats.dtype)
    counts = onehot.sum(0).clamp(min=1)
    return (onehot.T @ feats) / counts[:, None]


def prototype_log_probs(h: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """log softmax over classes of the negative Euclidean distance to each prototype."""
    return F.log_softmax(-torch.cdist(h, protos), dim=1)


def pmr_coefficients(scores: torch.Tensor, alpha: float, rule: str = "clip"):
    """(beta, gamma), each (M,), from the per-modality prototype scores s_m."""
    n = scores.numel()
    others = (scores.sum() - scores) / (n - 1)
    if rule == "binary":
        return alpha * (others > scores).to(scores.dtype), (scores > others).to(scores.dtype)
    return (alpha * torch.clamp(others / scores - 1, 0, 1), torch.clamp(scores / others - 1, 0, 1))


class PMR(Method):
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.protos: list[torch.Tensor] | None = None
        n = ctx.n_modalities
        self._beta_sum = torch.zeros(n, device=ctx.device)
        self._pce_sum = torch.zeros(n, device=ctx.device)
        self._steps = 0

    def per_active(self) -> bool:
        return self.cfg["mu"] > 0 and self.epoch <= self.cfg["modulation_starts"] + self.cfg["per_epochs"]

    # --- per epoch ----------------------------------------------------------------------------
    def on_epoch_start(self, run):
        self._beta_sum.zero_()
        self._pce_sum.zero_()
        self._steps = 0
        if run.epoch > self.cfg["modulation_ends"]:
            return  # prototypes are not used any more
        _, _, feats = run.evaluate(run.train_idx)
        self.update_prototypes(feats, run.data.labels[run.train_idx])

    def update_prototypes(self, feats: list[torch.Tensor], y: torch.Tensor) -> None:
        new = [class_prototypes(h, y, self.ctx.n_classes) for h in feats]
        mom = self.cfg["momentum_coef"]
        if self.protos is not None and mom:
            new = [(1 - mom) * c + mom * old for c, old in zip(new, self.protos)]
        self.protos = new

    # --- per step -----------------------------------------------------------------------------
    def loss(self, model, out, y, idx):
        loss = F.cross_entropy(out.fused, y)
        if not self.modulating() or self.protos is None:
            return StepResult(loss, out.fused, out, y)
        logp = [prototype_log_probs(h, c) for h, c in zip(out.feats, self.protos)]
        pce = torch.stack([F.nll_loss(lp, y) for lp in logp])
        scores = torch.stack([lp.detach().gather(1, y[:, None]).exp().sum() for lp in logp])
        beta, gamma = pmr_coefficients(scores, self.cfg["alpha"], self.cfg["coefficient"])
        loss = loss + (beta * pce).sum()
        if self.per_active():
            entropy = torch.stack([-(lp.exp() * lp).sum(1).mean() for lp in logp])
            loss = loss - self.cfg["mu"] * (gamma * entropy).sum()
        self._beta_sum += beta
        self._pce_sum += pce.detach()
        self._steps += 1
        return StepResult(loss, out.fused, out, y)

    def log(self, writer, epoch):
        if not self._steps:
            return
        beta = (self._beta_sum / self._steps).tolist()
        pce = (self._pce_sum / self._steps).tolist()
        for name, b, p in zip(self.ctx.names, beta, pce):
            writer.add_scalar(f"pmr/beta_{name}", b, epoch)
            writer.add_scalar(f"pmr/proto_ce_{name}", p, epoch)

    # --- resume -------------------------------------------------------------------------------
    def state_dict(self):
        return {"protos": None if self.protos is None else [c.clone() for c in self.protos]}

    def load_state_dict(self, state):
        protos = state.get("protos")
        self.protos = None if protos is None else [c.to(self.ctx.device) for c in protos]
