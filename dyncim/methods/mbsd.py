"""MBSD: unimodal losses plus confidence-weighted agreement and KL terms between modality pairs.

No paper text or official code found for it; the one reference read is GeWu-Lab/BalanceBenchmark
`balancemm/trainer/MBSD_trainer.py` (commit 4c1482f, file last changed in 39ed569), which this
reproduces; defaults from its `configs/trainer_config.yaml` (MBSD: modulation epochs 0-80; its
`modality: 2` is not a parameter of the trainer).

Mechanism, per training step inside the epochs modulation_starts <= epoch <= modulation_ends (0-based,
both ends included), with z^m modality m's own logits (for concat fusion its slice of the fused
weight plus bias/M, BalanceBenchmark's Unimodality_Calculate), p^m = softmax(z^m), C classes, B
samples, and for each pair (a, b) of modalities and each sample i:
    q^a_i = p^a_i[y_i],  ps_i = max(q^a_i, q^b_i),  pw_i = min(q^a_i, q^b_i)
    w_i   = ps_i - pw_i   if argmax p^a_i == y_i or argmax p^b_i == y_i, else 0
    RS_i  = (1/C) sum_c (z^a_ic - z^b_ic)^2     with two modalities (logits),
            (1/C) sum_c (p^a_ic - p^b_ic)^2     with three or more (probabilities), as in
                                                 BalanceBenchmark's two branches
    KL_i  = pw_i * (log pw_i - ps_i)            the NON-STANDARD KL: F.kl_div(ps, pw) with the
                                                 input ps a probability, not a log-probability
                                                 (F.kl_div(input, target) = target * (log target
                                                 - input)); reproduced exactly, see prob_kl_div
    L_RS(a,b) = (1/B) sum_i w_i RS_i,   L_KL(a,b) = (1/B) sum_i w_i KL_i
    L = CE(fused) + sum_m CE(z^m) + mean over pairs of [L_RS(a,b) + L_KL(a,b)];
outside the window L = CE(fused) alone. Nothing is detached: as in BalanceBenchmark (whose w, ps
and pw are filled in place from tensors with gradients), the gradient flows through w, ps and pw.

More modalities: BalanceBenchmark has a two-modality branch and a three-modality branch (the
three pairs (0,1), (0,2), (1,2), each term averaged over them, RS on probabilities); with M >= 3
we take every pair, averaged over the M(M-1)/2 pairs: for three modalities exactly its branch.

Deviations from BalanceBenchmark, and why:
  - vectorised over the batch (torch.maximum / torch.minimum / torch.where) instead of a Python
    loop over the samples writing w, ps and pw element by element; the values are the same.
    At an exact tie q^a_i == q^b_i (w_i = 0, a measure-zero event) torch.maximum splits the
    gradient of ps between the two, where Python's max hands it to the first.
  - M >= 4 (BalanceBenchmark's three-modality branch silently uses the first three): all pairs.

Hooks (dyncim/methods/base.py says when each fires): loss (the terms above); on_epoch_start
(resets the epoch's statistics); log (epoch means of L_RS, L_KL and the weights w).
"""
from __future__ import annotations

from itertools import combinations

import torch
from torch.nn import functional as F

from .base import Method, StepResult


def prob_kl_div(ps: torch.Tensor, pw: torch.Tensor) -> torch.Tensor:
    """BalanceBenchmark's NON-STANDARD per-sample "KL": F.kl_div(ps, pw, reduction='none'), whose
    input `ps` should be a log-probability but is a probability here: pw * (log pw - ps), not
    pw * (log pw - log ps). Kept exactly as the reference computes it (it can be negative)."""
    return F.kl_div(ps, pw, reduction="none")


def pair_terms(za: torch.Tensor, zb: torch.Tensor, y: torch.Tensor, on_logits: bool):
    """(w, RS, KL), each (B,), of one modality pair (the module docstring's formulas)."""
    pa, pb = F.softmax(za, dim=1), F.softmax(zb, dim=1)
    qa = pa.gather(1, y[:, None]).squeeze(1)
    qb = pb.gather(1, y[:, None]).squeeze(1)
    ps, pw = torch.maximum(qa, qb), torch.minimum(qa, qb)
    either = (pa.argmax(1) == y) | (pb.argmax(1) == y)
    w = torch.where(either, ps - pw, torch.zeros_like(ps))
    diff = za - zb if on_logits else pa - pb
    rs = diff.pow(2).sum(1) / za.shape[1]
    return w, rs, prob_kl_div(ps, pw)


def mbsd_terms(logits: list[torch.Tensor], y: torch.Tensor):
    """(L_RS, L_KL, mean w): each averaged over the modality pairs."""
    on_logits = len(logits) == 2
    n = y.shape[0]
    rs_all, kl_all, w_all = [], [], []
    for a, b in combinations(range(len(logits)), 2):
        w, rs, kl = pair_terms(logits[a], logits[b], y, on_logits)
        rs_all.append((w * rs).sum() / n)
        kl_all.append((w * kl).sum() / n)
        w_all.append(w.detach().mean())
    return torch.stack(rs_all).mean(), torch.stack(kl_all).mean(), torch.stack(w_all).mean()


class MBSD(Method):
    fusion = "concat"
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self._sums = torch.zeros(3, device=ctx.device)   # L_RS, L_KL, mean w
        self._steps = 0

    def on_epoch_start(self, run):
        self._sums.zero_()
        self._steps = 0

    def loss(self, model, out, y, idx):
        ce = F.cross_entropy(out.fused, y)
        if not self.modulating():
            return StepResult(ce, out.fused, out, y)
        uni = torch.stack([F.cross_entropy(z, y) for z in out.logits]).sum()
        rs, kl, w = mbsd_terms(out.logits, y)
        self._sums += torch.stack([rs.detach(), kl.detach(), w])
        self._steps += 1
        return StepResult(ce + uni + rs + kl, out.fused, out, y, terms={"rs": rs, "kl": kl})

    def log(self, writer, epoch):
        if not self._steps:
            return
        rs, kl, w = (self._sums / self._steps).tolist()
        writer.add_scalar("mbsd/agreement_rs", rs, epoch)
        writer.add_scalar("mbsd/kl_nonstandard", kl, epoch)
        writer.add_scalar("mbsd/weight_mean", w, epoch)
