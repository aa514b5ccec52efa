"""Joint training: one cross-entropy on the fused prediction (the unbalanced reference); on a
multi-label set (MM-IMDb), binary cross-entropy with logits instead (dyncim.methods.base.classification_loss).

`fusion: concat` is the usual baseline; `fusion: sum` sums per-modality heads (joint-sum).
`aux_weight > 0` adds each modality head's own cross-entropy (sum fusion + unimodal losses, the
simple balanced recipe every rebalancing method should beat).

Hooks (dyncim/methods/base.py says when each fires): loss (the fused cross-entropy, plus each
head's with aux_weight); the rest are the defaults.
"""
from __future__ import annotations

from .base import Method, StepResult, classification_loss


class Joint(Method):
    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if cfg["aux_weight"] and self.fusion != "sum":
            raise ValueError("joint: aux_weight > 0 needs fusion: sum (concat has no separate heads)")

    def loss(self, model, out, y, idx):
        loss = self.cfg["fused_weight"] * classification_loss(out.fused, y)
        if self.cfg["aux_weight"]:
            loss = loss + self.cfg["aux_weight"] * sum(classification_loss(z, y) for z in out.logits)
        return StepResult(loss, out.fused, out, y)
