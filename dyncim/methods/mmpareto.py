"""MMPareto: Pareto integration of the multimodal and the unimodal gradients of every encoder.

Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024
(official code: GitHub GeWu-Lab/MMPareto_ICML2024, `code/MMPareto.py`, `code/min_norm_solvers.py`).

Model (as the official AVClassifier): a fused head on the concatenated features (`fusion: concat`)
plus one separate unimodal head per modality (`model.extra["uni_heads"]`); losses
L_mm = CE(fused) and L_m = CE(head_m(h_m)). Per step and per encoder m, with g_mm and g_m the
gradients of L_mm and L_m on the encoder's parameters (flattened over all of them):
  - cos(g_mm, g_m) > 0: equal weights, d = 2 (g_mm/2 + g_m/2) = g_mm + g_m;
  - otherwise the two-task min-norm (MGDA) element d = 2 (c g_mm + (1 - c) g_m) with
    c = <g_m - g_mm, g_m> / |g_mm - g_m|^2 (the closed form of min_c |c g_mm + (1-c) g_m|; the
    official solver's edge cases c = 0.999 when <g_mm, g_m> >= |g_mm|^2 and c = 0.001 when
    <g_mm, g_m> >= |g_m|^2 are kept), which has a non-negative inner product with both;
  - magnitude: d is scaled up to |g_mm + g_m| when it is smaller (never down), then times
    `gamma` (1.5 in the official code). `rescale: tensor` does this per parameter tensor as the
    official code does; `rescale: encoder` uses the norms over the whole encoder, which keeps the
    direction of d and so the non-conflict guarantee (per-tensor factors can break it).
Heads get their own losses' gradients (the fused head L_mm, head m L_m), as in the official code.
Defined for any number of modalities: each encoder sees exactly two tasks (L_mm and its own L_m).

Deviations from the official code (also in docs/baselines.md):
  - no host synchronisation: the cosine test and the weights are tensors (torch.where), not
    Python branches on `.item()`; per-loss gradients come from torch.autograd.grad (M + 1 passes)
    instead of M + 1 `backward(retain_graph=True)` calls plus a fourth full backward for the norm;
  - `gamma` and the rescale scope are parameters (the official code hard-codes gamma = 1.5 and
    per-tensor rescaling); the defaults reproduce the official behaviour;
  - the official solver receives every gradient twice (the per-tensor entries plus their
    concatenation); that doubles every inner product and does not change c, so it is not copied.

Hooks (dyncim/methods/base.py says when each fires): setup (the unimodal heads); forward (their
logits); loss (returns L_mm and the L_m as the StepResult's terms); backward (the per-encoder
Pareto combination); on_epoch_start; log.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..models.multimodal import Output
from .base import Method, StepResult

_TINY = 1e-12


def min_norm_coefficient(v11: torch.Tensor, v12: torch.Tensor, v22: torch.Tensor) -> torch.Tensor:
    """c minimising |c g1 + (1 - c) g2|^2 given the inner products (the official solver's rule)."""
    c = (v22 - v12) / (v11 + v22 - 2 * v12).clamp_min(_TINY)
    c = torch.where(v12 >= v22, torch.full_like(c, 0.001), c)
    return torch.where(v12 >= v11, torch.full_like(c, 0.999), c)


def pareto_combine(g_mm: list[torch.Tensor], g_uni: list[torch.Tensor], gamma: float,
                   scope: str = "tensor"):
    """Combine one encoder's two gradients (lists over its parameter tensors).

    Returns (new gradients, conflict flag, cosine), all tensors (no host synchronisation)."""
    v11 = sum((a * a).sum() for a in g_mm)
    v22 = sum((b * b).sum() for b in g_uni)
    v12 = sum((a * b).sum() for a, b in zip(g_mm, g_uni))
    cos = v12 / (v11.sqrt() * v22.sqrt()).clamp_min(1e-8)
    conflict = ~(cos > 0)
    c = min_norm_coefficient(v11, v12, v22)
    k_mm = torch.where(conflict, c, torch.full_like(c, 0.5))
    k_uni = torch.where(conflict, 1 - c, torch.full_like(c, 0.5))
    new = [2 * (k_mm * a + k_uni * b) for a, b in zip(g_mm, g_uni)]
    if scope == "tensor":
        out = []
        for a, b, d in zip(g_mm, g_uni, new):
            factor = ((a + b).norm() / d.norm().clamp_min(_TINY)).clamp_min(1.0)
            out.append(d * (factor * gamma))
        return out, conflict, cos
    if scope != "encoder":
        raise ValueError(f"mmpareto: rescale must be tensor or encoder, got {scope!r}")
    ref = sum(((a + b) ** 2).sum() for a, b in zip(g_mm, g_uni)).sqrt()
    norm = sum((d * d).sum() for d in new).sqrt()
    factor = (ref / norm.clamp_min(_TINY)).clamp_min(1.0) * gamma
    return [d * factor for d in new], conflict, cos


class MMPareto(Method):
    fusion = "concat"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.gamma = float(cfg["gamma"])
        self.scope = cfg["rescale"]
        if self.scope not in ("tensor", "encoder"):
            raise ValueError(f"mmpareto: rescale must be tensor or encoder, got {self.scope!r}")
        self._reset_stats()

    def _reset_stats(self):
        m, dev = self.ctx.n_modalities, self.ctx.device
        self._conflicts = torch.zeros(m, device=dev)
        self._cos = torch.zeros(m, device=dev)
        self._steps = 0

    def setup(self, model):
        model.extra["uni_heads"] = nn.ModuleList(nn.Linear(e.out_dim, model.n_classes)
                                                 for e in model.encoders)

    def forward(self, model, xs, idx):
        out = model(xs)
        heads = model.extra["uni_heads"]
        return Output(out.feats, [head(h) for head, h in zip(heads, out.feats)], out.fused)

    def loss(self, model, out, y, idx):
        l_mm = F.cross_entropy(out.fused, y)
        l_uni = [F.cross_entropy(z, y) for z in out.logits]
        return StepResult(l_mm + sum(l_uni), out.fused, out, y, terms=(l_mm, l_uni))

    def backward(self, model, res):
        l_mm, l_uni = res.terms
        enc = [list(e.parameters()) for e in model.encoders]
        fused_head = list(model.fusion.parameters())
        n_enc = sum(len(ps) for ps in enc)
        g = torch.autograd.grad(l_mm, [p for ps in enc for p in ps] + fused_head, retain_graph=True)
        for p, gp in zip(fused_head, g[n_enc:]):
            p.grad = gp
        start = 0
        m_last = len(enc) - 1
        for m, (ps, head) in enumerate(zip(enc, model.extra["uni_heads"])):
            g_mm = list(g[start:start + len(ps)])
            start += len(ps)
            hp = list(head.parameters())
            gu = torch.autograd.grad(l_uni[m], ps + hp, retain_graph=m < m_last)
            for p, gp in zip(hp, gu[len(ps):]):
                p.grad = gp
            new, conflict, cos = pareto_combine(g_mm, list(gu[:len(ps)]), self.gamma, self.scope)
            for p, gp in zip(ps, new):
                p.grad = gp
            self._conflicts[m] += conflict.float()
            self._cos[m] += cos.detach()
        self._steps += 1

    def on_epoch_start(self, run):
        self._reset_stats()

    def log(self, writer, epoch):
        n = max(self._steps, 1)
        for name, c, s in zip(self.ctx.names, (self._conflicts / n).tolist(), (self._cos / n).tolist()):
            writer.add_scalar(f"mmpareto/conflict_rate_{name}", c, epoch)
            writer.add_scalar(f"mmpareto/cos_{name}", s, epoch)
