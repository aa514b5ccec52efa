"""Each modality trained alone: the reference that shows how much joint training starves one.

Hooks (dyncim/methods/base.py says when each fires): parts (one model per modality, each trained by
the default hooks; on a multi-label set, the default loss is binary cross-entropy).
"""
from __future__ import annotations

from .base import Method


class Unimodal(Method):
    fusion = "sum"   # one modality, one head: its logits are the prediction

    @classmethod
    def parts(cls, n_modalities):
        return [[m] for m in range(n_modalities)]
