"""AMCo: adaptive mask co-optimisation (mask the dominant modality's logits, train every head).

Zhou, Liang, Zheng, Xuan and Kumada, "Adaptive Mask Co-Optimization for Modal Dependence in
Multimodal Learning", ICASSP 2023 (doi 10.1109/ICASSP49357.2023.10096641). No official code was
published; we follow GeWu-Lab/BalanceBenchmark at HEAD 4c1482fca5aaa8d4278af8e26020daa039e3ccf3
(2025-02-23): `balancemm/trainer/AMCo_trainer.py` (last changed in c1ce5a8, 2025-02-20),
`balancemm/models/avclassify_model.py` (`BaseClassifierAMCoModel`), `configs/trainer_config.yaml`
(AMCo: sigma 0.5, eps 0.3, modulation epochs 0-80) and `configs/model_config.yaml`
(BaseClassifier_AMCo: concat fusion).

Model: the fusion module's per-modality logits z^m (for concat fusion its weight slice plus an
equal share of the bias, BalanceBenchmark's `unimodality_calculate`) are summed and passed through
one more K x K linear layer, `linear_star` (`model.extra["amco_linear_star"]`):
  fused = L*(sum_m z'^m),  z'^m = z^m * mask if modality m is dependent, else z^m.
Prediction (validation, test) uses no mask: fused = L*(sum_m z^m).

Per epoch e (0-based), the progress l starts at 0 and every modality is independent; per step b
of the epoch, inside modulation_starts <= e <= modulation_ends:
  p    = sin(pi/2 * min(eps, l) / eps),  then l <- l + e * progress_rate   (BalanceBenchmark: e / 10);
  mask = a K-vector with N = floor(p K) zeros at random classes, ones elsewhere;
  loss = CE(fused, y) + sum_m CE(z'^m, y)        (the co-optimisation: every modality's own head
                                                  is trained too, on its masked logits);
  afterwards, share_m = batch mean of the softmax mass that the concatenated logits
  [z'^1, ..., z'^M] (one softmax over all M K entries) put on modality m's K entries, and
  modality m is dependent for the NEXT step iff share_m > sigma.
Outside the window: CE(fused, y) only, no mask, no unimodal terms.
So from epoch 1 the dominant modality's logits are masked on a growing share of the classes, all
of them (p = 1) once l >= eps: with the defaults from step 3 of epoch 1 and step 1 of epoch >= 3.

More than two modalities: the rule is the same (BalanceBenchmark's trainer loops over any number
of modalities); the shares sum to 1, so with sigma >= 0.5 at most one modality is dependent.

Deviations from BalanceBenchmark (also listed in docs/baselines.md):
- The mask: BalanceBenchmark builds it as mask_t.expand(2, -1), a (2, K) tensor, and multiplies it
  with the (B, K) logits; that only broadcasts when its MultiModalParallel scatters one row to each
  of two GPUs. We apply the one K-vector (the same classes) to every sample of the batch, which is
  what both rows hold.
- The dependence flags stay on the device (a boolean per modality, used through torch.where):
  BalanceBenchmark reads bool(share > sigma) on the host every step. The random classes come from
  torch's generator (saved in resume checkpoints), not numpy's shuffle.
- `alpha` and `U` of BalanceBenchmark's AMCo config are read by its trainer but used nowhere;
  they are left out. The progress increment 1/10 is hard-coded there; it is `progress_rate` here.
- The reported training loss is the whole objective (fused plus unimodal cross-entropies);
  BalanceBenchmark returns the fused term alone (its gradient is the same sum).
- `fusion: sum` (per-modality heads summed) is an option of ours; BalanceBenchmark defines the
  unimodal logits for concat fusion only.

Hooks (dyncim/methods/base.py says when each fires): setup (linear_star); loss (mask, co-optimised
loss, the dependence flags for the next step); on_epoch_start (resets progress and flags);
predict (L* on the unmasked sum); log.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method, StepResult


def mask_ratio(progress: float, eps: float) -> float:
    """p = sin(pi/2 * min(eps, progress) / eps)."""
    return math.sin(math.pi / 2 * (min(eps, progress) / eps))


def class_mask(n_classes: int, ratio: float, device) -> torch.Tensor:
    """A (K,) float mask with floor(ratio K) zeros at random classes (torch's generator)."""
    n = int(ratio * n_classes)
    mask = torch.ones(n_classes, device=device)
    if 0 < n < n_classes:
        mask[torch.randperm(n_classes, device=device)[:n]] = 0.0
    elif n >= n_classes:
        mask.zero_()
    return mask


def modality_shares(logits: list[torch.Tensor]) -> torch.Tensor:
    """(M,) batch mean of the softmax mass over the concatenated logits that falls on each
    modality's block of K entries."""
    p = F.softmax(torch.cat([z.detach() for z in logits], dim=1), dim=1)
    k = logits[0].shape[1]
    return torch.stack([p[:, m * k:(m + 1) * k].sum(1).mean() for m in range(len(logits))])


class AMCo(Method):
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        n = ctx.n_modalities
        self.dependent = torch.zeros(n, dtype=torch.bool, device=ctx.device)
        self.progress = 0.0           # l_t, reset every epoch
        self._dep_sum = torch.zeros(n, device=ctx.device)
        self._share_sum = torch.zeros(n, device=ctx.device)
        self._ratio_sum = 0.0
        self._steps = 0

    # --- model -------------------------------------------------------------------------------
    def setup(self, model):
        k = model.n_classes
        model.extra["amco_linear_star"] = nn.Linear(k, k)

    @staticmethod
    def _star(model):
        return model.extra["amco_linear_star"]

    # --- per epoch ---------------------------------------------------------------------------
    def on_epoch_start(self, run):
        self.dependent.zero_()
        self.progress = 0.0
        self._dep_sum.zero_()
        self._share_sum.zero_()
        self._ratio_sum = 0.0
        self._steps = 0

    # --- per step ----------------------------------------------------------------------------
    def loss(self, model, out, y, idx):
        star = self._star(model)
        if not self.modulating():
            fused = star(sum(out.logits))
            return StepResult(F.cross_entropy(fused, y), fused, out, y)
        ratio = mask_ratio(self.progress, self.cfg["eps"])
        self.progress += self.epoch * self.cfg["progress_rate"]
        mask = class_mask(model.n_classes, ratio, out.fused.device)
        masked = [torch.where(self.dependent[m], z * mask, z) for m, z in enumerate(out.logits)]
        fused = star(sum(masked))
        loss = F.cross_entropy(fused, y) + sum(F.cross_entropy(z, y) for z in masked)
        self._dep_sum += self.dependent.to(self._dep_sum.dtype)
        shares = modality_shares(masked)
        terms = {"mask": mask, "dependent": self.dependent.clone(), "masked": masked, "ratio": ratio,
                 "shares": shares}
        self.dependent = shares > self.cfg["sigma"]   # for the next step
        self._share_sum += shares
        self._ratio_sum += ratio
        self._steps += 1
        return StepResult(loss, fused, out, y, terms=terms)

    # --- inference ---------------------------------------------------------------------------
    def predict(self, model, out):
        return self._star(model)(sum(out.logits))

    def log(self, writer, epoch):
        if not self._steps:
            return
        writer.add_scalar("amco/mask_ratio", self._ratio_sum / self._steps, epoch)
        dep = (self._dep_sum / self._steps).tolist()
        share = (self._share_sum / self._steps).tolist()
        for name, d, s in zip(self.ctx.names, dep, share):
            writer.add_scalar(f"amco/masked_steps_{name}", d, epoch)
            writer.add_scalar(f"amco/share_{name}", s, epoch)
