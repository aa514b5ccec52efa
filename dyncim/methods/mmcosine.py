"""MMCosine: modality-wise cosine logits with a scale.

Xu, Feng, Zhang and Hu, "MMCosine: Multi-Modal Cosine Loss Towards Balanced Audio-Visual
Fine-Grained Learning", ICASSP 2023 (official code: github.com/GeWu-Lab/MMCosine_ICASSP23 at HEAD
00ba0a9cbd9b866b5017e972a1266d7b664bf86e; `main_CD.py` (train_epoch, valid; last changed in
b69b9e3) and `main_vox2.py`, `models/basic_model.py`, `models/fusion_modules.py`).
BalanceBenchmark's port (GeWu-Lab/BalanceBenchmark `balancemm/trainer/MMCosine_trainer.py`,
HEAD 4c1482f, last changed in 39ed569) was read for comparison.

Mechanism: with W^m the (K, d_m) block of the fusion head that acts on modality m (for concat
fusion its slice of the weight, for sum fusion head m's weight),
  z^m_k = s * <h^m / ||h^m||, W^m_k / ||W^m_k||>   (each feature vector and each class row of the
                                                   block L2-normalised: `F.normalize(a, dim=1)` and
                                                   `F.normalize(W^T, dim=0)` there; no bias);
  fused = sum_m z^m;   loss = CE(fused, y).
The scale s (official --scaling, default 10) is needed because cosines lie in [-1, 1].

The logits replace the fusion module's output for every pass of the model: `setup` registers a
forward hook on `model.fusion` that returns (sum_m z^m, [z^1, ..., z^M]) in place of the plain
head's logits. So training, validation and test predictions (`predict` = out.fused) and the
per-modality accuracies (out.logits) are all cosine logits, as in the official `valid` (acc_a,
acc_v) and BalanceBenchmark's validation_step. The head's bias is in no logit and gets no gradient.

More than two modalities: one cosine block per modality, summed (BalanceBenchmark's 3-modality
path does the same).

Deviations from the official code (also listed in docs/baselines.md):
- Fused prediction at evaluation: main_CD.py's `valid` takes the fused prediction from the
  model's plain concat output (softmax(out), fc with bias, unnormalised) and uses the cosine
  logits only for the unimodal accuracies, although it trains the cosine sum; main_vox2.py and
  BalanceBenchmark evaluate the cosine sum. We predict with the cosine sum, which is the model
  that was trained.
- The supplementary NCE term (--lam, default 0) is left out (it is 0 in the official runs).
- BalanceBenchmark's defaults differ: scaling 15 and a modulation window (epochs 0-80) outside
  which it trains the plain head; we follow the official code (scale 10, cosine throughout).
- `fusion: sum` is an option of ours (the official fusions are concat, gated and FiLM; only concat
  has modality-wise blocks of a linear head).

Hooks (dyncim/methods/base.py says when each fires): setup (the forward hook that makes the
model's logits cosine logits); the loss, forward and predict hooks are the defaults.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .base import Method


def modality_weights(fusion) -> list[torch.Tensor]:
    """The (K, d_m) block of the fusion head that acts on each modality."""
    if hasattr(fusion, "bounds"):      # concat: slices of one linear layer
        return [fusion.fc.weight[:, a:b] for a, b in fusion.bounds]
    return [head.weight for head in fusion.heads]


def cosine_logits(fusion, feats: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
    """z^m = scale * normalize(h^m) @ normalize(W^m, per class row)^T, one per modality."""
    return [scale * F.normalize(h, dim=1) @ F.normalize(w, dim=1).t()
            for h, w in zip(feats, modality_weights(fusion))]


def cosine_head(scale: float):
    """A forward hook for the fusion module: its output becomes (sum of, list of) cosine logits."""
    def hook(module, args, output):
        parts = cosine_logits(module, args[0], scale)
        return sum(parts), parts
    return hook


class MMCosine(Method):
    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.scale = float(cfg["scale"])

    def setup(self, model):
        model.fusion.register_forward_hook(cosine_head(self.scale))
