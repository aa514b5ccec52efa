"""CML: calibrating multimodal learning with a confidence ranking loss over modality subsets.

Ma et al., "Calibrating Multimodal Learning", ICML 2023. Official code
read: QingyangZhang/CML `cpm/CPM_Nets.py::rank_loss` (commit 9d2496e); how the loss is put on a
late-fusion classifier, and the defaults (lam 0.1, modulation epochs 0-80), from GeWu-Lab/
BalanceBenchmark `balancemm/trainer/CML_trainer.py` and `configs/trainer_config.yaml` (commit
4c1482f; CML_trainer.py last changed in 39ed569).

The regulariser: removing a modality should not make the prediction more confident. Per training
step inside the epochs modulation_starts <= epoch <= modulation_ends (0-based, both ends
included), with z^m modality m's own part of the fused logits (concat fusion: its weight slice
plus bias/M; sum fusion: its head) and an order r_1, ..., r_M of the modalities drawn once per
epoch, the chain of nested subsets S_0 = all modalities, S_k = S_{k-1} minus r_k (k = 1..M-1) has
the logits
    s_0 = fused,   s_k = s_{k-1} - z^{r_k} (+ bias/M with concat fusion)
(= the fused head on the features with the removed modalities zeroed: BalanceBenchmark's
`out_s - unimodal_result[removed] + bias/M`). With conf_k, pred_k the max and argmax of softmax(s_k):
    rank(k-1, k) = sum_i ReLU((conf_k,i - conf_{k-1},i) * sign_i),
    sign_i = 0 if pred_k,i == y_i and pred_{k-1},i != y_i (the smaller subset is right where the
             larger is wrong: no penalty), else 1          (official rank_loss, "trick 1")
    L = (1/M) sum_{k=0}^{M-1} CE(s_k, y) + lam * sum_{k=1}^{M-1} rank(k-1, k);
outside the window L = CE(fused) alone. The sum over the batch (not a mean) is the official one
and BalanceBenchmark's; gradients flow through both confidences, as in the official rank_loss.

Deviations, and why:
  - the per-sample sign is applied, as in the official rank_loss. BalanceBenchmark's conf_loss
    computes a sign (with the roles swapped: larger subset right, smaller wrong) and never uses
    it, and clamps the batch SUM, max(0, sum_i (conf_k,i - conf_{k-1},i)), where the official code
    takes ReLU per sample and then sums; we follow the official code on both counts.
  - the removal order is drawn per epoch from a generator seeded by the run's seed and the epoch
    (reproducible, and identical on resume); BalanceBenchmark shuffles the modality list once per
    epoch with Python's unseeded `random`.
  - one removal order for every sample of the epoch, as BalanceBenchmark; the official CPM code
    compares consecutive inputs of nested missing-view patterns whose removal order is drawn per
    sample, once for the run (cpm/util/get_sn.py get_sn_for_multi_input), with margin 0.00 (its
    miwae/train.py variants use another sign and a margin epsilon). The CE terms are
    BalanceBenchmark's (CPM has its own reconstruction and classification losses).
Any number of modalities: M - 1 removals, the CE terms divided by M (BalanceBenchmark's /2 and /3);
a single modality is refused (no subset to compare).

Hooks (dyncim/methods/base.py says when each fires): on_epoch_start (the epoch's removal order,
resets its statistics); loss (the chain, its cross-entropies and the ranking loss); log.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .base import Method, StepResult

ORDER_SEED = 0xC3A1   # the removal order's generator: seed * 1_000_003 + epoch + ORDER_SEED


def rank_loss(conf_sup: torch.Tensor, pred_sup: torch.Tensor, conf_sub: torch.Tensor,
              pred_sub: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The official ranking loss of a subset against its superset: sum over the batch of
    ReLU((conf_sub - conf_sup) * sign), sign = 0 where the subset is right and the superset wrong."""
    sign = (~((pred_sub == y) & (pred_sup != y))).to(conf_sub.dtype)
    return F.relu((conf_sub - conf_sup) * sign).sum()


def subset_chain(fused: torch.Tensor, parts: list[torch.Tensor], order: list[int],
                 share: torch.Tensor | None) -> list[torch.Tensor]:
    """Logits of the nested subsets: fused, then each modality of order[:M-1] removed in turn;
    `share` (concat fusion: bias/M) is added back for each removed part, None for sum fusion."""
    chain = [fused]
    for m in order[:len(parts) - 1]:
        s = chain[-1] - parts[m]
        chain.append(s if share is None else s + share)
    return chain


def cml_terms(chain: list[torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of the chain's cross-entropies, summed ranking loss of its consecutive pairs)."""
    ce = torch.stack([F.cross_entropy(s, y) for s in chain]).mean()
    conf, pred = zip(*(F.softmax(s, dim=1).max(1) for s in chain))
    rank = sum(rank_loss(conf[k - 1], pred[k - 1], conf[k], pred[k], y) for k in range(1, len(chain)))
    return ce, rank


class CML(Method):
    fusion = "concat"
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.order = list(range(ctx.n_modalities))
        self._sums = torch.zeros(2, device=ctx.device)   # chain CE, ranking loss
        self._steps = 0

    def on_epoch_start(self, run):
        g = torch.Generator().manual_seed(int(run.seed) * 1_000_003 + int(run.epoch) + ORDER_SEED)
        self.order = torch.randperm(self.ctx.n_modalities, generator=g).tolist()
        self._sums.zero_()
        self._steps = 0

    def loss(self, model, out, y, idx):
        if not self.modulating():
            return StepResult(F.cross_entropy(out.fused, y), out.fused, out, y)
        share = model.fusion.fc.bias / len(out.logits) if self.fusion == "concat" else None
        ce, rank = cml_terms(subset_chain(out.fused, out.logits, self.order, share), y)
        self._sums += torch.stack([ce.detach(), rank.detach()])
        self._steps += 1
        return StepResult(ce + self.cfg["lam"] * rank, out.fused, out, y, terms={"ce": ce, "rank": rank})

    def log(self, writer, epoch):
        if not self._steps:
            return
        ce, rank = (self._sums / self._steps).tolist()
        writer.add_scalar("cml/subset_ce", ce, epoch)
        writer.add_scalar("cml/rank_loss", rank, epoch)
