"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement.

Peng, Wei, Deng, Wang and Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation",
CVPR 2022 (official code: github.com/GeWu-Lab/OGM-GE_CVPR2022, `main.py`).

Mechanism, per training step, after the usual backward of the fused cross-entropy:
  s_m   = sum over the batch of softmax(z^m)[y], z^m modality m's own logits (for concat fusion
          its slice of the fusion weight plus an equal share of the bias, as in the official code);
  rho_m = s_m / s_other;   k_m = 1 - tanh(alpha * rho_m) if rho_m > 1 else 1;
  every weight gradient g of encoder m becomes k_m * g (OGM), plus, with GE,
          noise ~ N(0, std(g)^2) drawn per tensor with the std of the unmodulated gradient;
only in the epochs modulation_starts <= epoch <= modulation_ends (0-based, both ends included,
as the official loop counts them); outside the window the gradients are left untouched.

More than two modalities (the paper and the official code define two): s_other is the mean
score of the other modalities, rho_m = s_m / mean_{j != m} s_j. With two modalities this is the
official rule exactly; with three, every modality whose confidence exceeds the mean of the rest
is slowed down, each by its own ratio.

Deviations from the official code (each is also listed in docs/baselines.md):
- Which gradients: the official code modulates only 4-D gradients (the conv kernels of the
  ResNet encoders; biases and batch-norm parameters are left alone). On feature sets our
  encoders are MLPs, so the analogue is every weight matrix (dim >= 2) of the encoder; biases are
  left alone too. With the ResNet-18 encoders (store-backed sets) the rule selects exactly the
  conv kernels, as there.
- Tie: at s_a == s_v the official `else` branch slows the audio encoder by 1 - tanh(alpha);
  here no modality is slowed at an exact tie (symmetric, and needed for the M-modality rule).
- Older versions of the official `main.py` had the modality window test written as
  `starts >= epoch >= ends` (never true, so modulation never stopped), added GE noise after the
  scaling with the std of the scaled gradient, and swapped the audio/visual weight slices of
  the concat head; we follow the fixed current version (marked "bug fixed" there).
- The ratio and coefficients stay on the device (no `.item()` per step); the official code
  builds the scores with a Python loop over the samples.

Hooks (dyncim/methods/base.py says when each fires): after_backward (scales, and with GE adds noise
to, each encoder's weight gradients inside the modulation window); on_epoch_start (resets the
epoch's statistics); log.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .base import Method


def confidence_scores(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """(M,) sum over the batch of each modality's softmax probability of the true class."""
    return torch.stack([F.softmax(z.detach(), dim=1).gather(1, y[:, None]).sum() for z in logits])


def ogm_coefficients(scores: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ratio, k), each (M,): rho_m = s_m / mean of the others; k_m = 1 - tanh(alpha rho_m) if rho_m > 1."""
    m = scores.numel()
    others = (scores.sum() - scores) / (m - 1)
    ratio = scores / others
    k = torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))
    return ratio, k


class OGMGE(Method):
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self._coef_sum = torch.zeros(ctx.n_modalities, device=ctx.device)
        self._ratio_sum = torch.zeros(ctx.n_modalities, device=ctx.device)
        self._steps = 0
        self.last_ratio = self.last_coef = None

    def on_epoch_start(self, run):
        self._coef_sum.zero_()
        self._ratio_sum.zero_()
        self._steps = 0

    def after_backward(self, model, res):
        if not self.modulating():
            return
        ratio, k = ogm_coefficients(confidence_scores(res.out.logits, res.y), self.cfg["alpha"])
        self.last_ratio, self.last_coef = ratio, k
        self._ratio_sum += ratio
        self._coef_sum += k
        self._steps += 1
        noise = self.cfg["ge"]
        for m, enc in enumerate(model.encoders):
            for p in enc.parameters():
                if p.grad is None or p.dim() < 2:
                    continue
                g = p.grad
                if noise:
                    std = g.std() + 1e-8 if g.numel() > 1 else g.new_full((), 1e-8)
                    p.grad = g * k[m] + torch.randn_like(g) * std
                else:
                    g.mul_(k[m])

    def log(self, writer, epoch):
        if not self._steps:
            return
        coef = (self._coef_sum / self._steps).tolist()
        ratio = (self._ratio_sum / self._steps).tolist()
        for name, c, r in zip(self.ctx.names, coef, ratio):
            writer.add_scalar(f"ogm/coefficient_{name}", c, epoch)
            writer.add_scalar(f"ogm/ratio_{name}", r, epoch)
