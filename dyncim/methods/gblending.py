"""Gradient-Blending: unimodal and fused losses weighted by their overfitting-to-generalisation ratio.

Wang, Tran & Feiszli, "What Makes Training Multi-modal Classification Networks Hard?", CVPR 2020.
No official code for this setting; the reference read is BalanceBenchmark's
`balancemm/trainer/GBlending_trainer.py` (GitHub GeWu-Lab/BalanceBenchmark).

Model (the paper's late-fusion setup): a fused head on the concatenated features
(`fusion: concat`) plus, with `unimodal_heads: separate` (default, the paper), one classifier per
modality in `model.extra["gb_heads"]`; `unimodal_heads: slice` uses the modality's slice of the
fused head instead (BalanceBenchmark's unimodal outputs). The training loss is
    L = sum_k w_k CE(head_k),   k = each modality, then the fused head;   sum_k w_k = 1.
Weights (paper Eq. 5-6): between two checkpoints n and n + s of one head,
    dG = L^V_n - L^V_{n+s}                (generalisation gained: validation loss drop),
    dO = O_{n+s} - O_n,  O = L^V - L^T    (overfitting gained),
    w_k = dG_k / dO_k^2, normalised to sum 1.
Recomputed every `super_epoch` epochs. `estimate: probe` (default; the paper's online G-Blend,
Alg. 2, as BalanceBenchmark does it): at the start of each super-epoch, copy the current model and
train each head alone (its encoder(s) + the head) for `super_epoch` epochs with a fresh optimiser
of the run's kind and current learning rate; the losses before and after that probe give the
weights for the next super-epoch. `estimate: trajectory` (cheap variant): no probe; the losses of
the jointly trained heads at consecutive super-epoch boundaries, recomputed in `on_epoch_end`
(uniform weights until the first boundary). L^T and L^V are mean cross-entropies of an eval-mode
pass over the training split and the validation split (never test).

Deviations from BalanceBenchmark (also in docs/baselines.md):
  - held-out losses come from the validation split; BalanceBenchmark passes its evaluation loader
    (the test set in its runs) to the estimate;
  - losses are means over samples of an eval-mode pass at the checkpoint; BalanceBenchmark sums
    batch losses (train loss accumulated while training the first/last probe epoch, val loss over
    fewer batches), so O = L^V - L^T mixes two scales;
  - dG is clamped at 0 (a head whose validation loss rose gets weight 0, as w = dG/dO^2 with
    dG <= 0 is meaningless); BalanceBenchmark takes |dG| (and computes dG with the opposite sign);
    if every dG is 0 the weights fall back to uniform; dO^2 is floored at `eps`;
  - unimodal probes train the modality's encoder and head only; BalanceBenchmark zero-pads the
    other modalities' inputs and trains through the fused head;
  - the probe optimiser is built fresh (no momentum state) with the current learning rate.
Works for any number of modalities (one weight per modality plus the fused head).

Hooks (dyncim/methods/base.py says when each fires): setup (the unimodal heads); forward (their
logits); loss (the weighted sum); on_epoch_start (probe estimate every super_epoch, trained on a
copy of the model through run.make_optimizer); on_epoch_end (trajectory estimate); log.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from ..models.multimodal import Output
from .base import Method, StepResult


def ogr_weights(train0: torch.Tensor, val0: torch.Tensor, train1: torch.Tensor, val1: torch.Tensor,
                eps: float = 1e-8) -> torch.Tensor:
    """G-Blend weights from per-head (train, val) losses at two checkpoints (0 then 1)."""
    d_g = (val0 - val1).clamp_min(0.0)
    d_o = (val1 - train1) - (val0 - train0)
    w = d_g / d_o.pow(2).clamp_min(eps)
    total = w.sum()
    uniform = torch.full_like(w, 1.0 / w.numel())
    return torch.where(total > 0, w / total.clamp_min(1e-30), uniform)


class GBlending(Method):
    fusion = "concat"

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.super_epoch = int(cfg["super_epoch"])
        self.estimate = cfg["estimate"]
        self.heads = cfg["unimodal_heads"]
        self.eps = float(cfg["eps"])
        if self.estimate not in ("probe", "trajectory"):
            raise ValueError(f"gblending: estimate must be probe or trajectory, got {self.estimate!r}")
        if self.heads not in ("separate", "slice"):
            raise ValueError(f"gblending: unimodal_heads must be separate or slice, got {self.heads!r}")
        k = ctx.n_modalities + 1
        self.weights = torch.full((k,), 1.0 / k, device=ctx.device)
        self.ref = None   # trajectory: (train, val) losses per head at the last boundary

    # --- model -------------------------------------------------------------------------------
    def setup(self, model):
        if self.heads == "separate":
            model.extra["gb_heads"] = nn.ModuleList(nn.Linear(e.out_dim, model.n_classes)
                                                    for e in model.encoders)

    def _uni(self, model, m, h):
        if self.heads == "separate":
            return model.extra["gb_heads"][m](h)
        a, b = model.fusion.bounds[m]
        fc = model.fusion.fc
        return F.linear(h, fc.weight[:, a:b]) + fc.bias / len(model.encoders)

    def forward(self, model, xs, idx):
        out = model(xs)
        if self.heads == "slice":
            return out
        return Output(out.feats, [self._uni(model, m, h) for m, h in enumerate(out.feats)], out.fused)

    def loss(self, model, out, y, idx):
        terms = torch.stack([F.cross_entropy(z, y) for z in out.logits] + [F.cross_entropy(out.fused, y)])
        return StepResult((self.weights * terms).sum(), out.fused, out, y)

    # --- estimation --------------------------------------------------------------------------
    def _head_logits(self, model, xs, k):
        if k < len(model.encoders):
            return self._uni(model, k, model.encoders[k](xs[k]))
        return model(xs).fused

    def _head_params(self, model, k):
        if k < len(model.encoders):
            head = model.extra["gb_heads"][k] if self.heads == "separate" else model.fusion
            return list(model.encoders[k].parameters()) + list(head.parameters())
        return list(model.encoders.parameters()) + list(model.fusion.parameters())

    @torch.no_grad()
    def _losses(self, model, data, index, batch_size, heads):
        """Mean cross-entropy of each head in `heads` over `index` (eval mode)."""
        was = model.training
        model.eval()
        tot = torch.zeros(len(heads), device=index.device)
        for start in range(0, len(index), batch_size):
            idx = index[start:start + batch_size]
            xs = data.batch(idx)
            y = data.labels[idx]
            for i, k in enumerate(heads):
                tot[i] += F.cross_entropy(self._head_logits(model, xs, k), y, reduction="sum")
        model.train(was)
        return tot / len(index)

    def _checkpoint(self, model, run, heads):
        bs = run.train_cfg["eval_batch_size"]
        return (self._losses(model, run.data, run.train_idx, bs, heads),
                self._losses(model, run.data, run.val_idx, bs, heads))

    def _probe(self, run) -> torch.Tensor:
        data, tr, bs = run.data, run.train_idx, run.train_cfg["batch_size"]
        gen = torch.Generator().manual_seed(int(run.seed) * 100003 + int(run.epoch))
        before, after = [], []
        for k in range(len(self.weights)):
            probe = copy.deepcopy(run.model)
            probe.train()
            opt = run.make_optimizer([{"params": self._head_params(probe, k)}], lr=run.lr)
            before.append(self._checkpoint(probe, run, [k]))
            for _ in range(self.super_epoch):
                perm = tr[torch.randperm(len(tr), generator=gen).to(tr.device)]
                for start in range(0, len(perm), bs):
                    idx = perm[start:start + bs]
                    xs = data.batch(idx, train=True, generator=gen)  # media: augmented as in training
                    loss = F.cross_entropy(self._head_logits(probe, xs, k), data.labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            after.append(self._checkpoint(probe, run, [k]))
        cat = lambda rows, j: torch.cat([r[j] for r in rows])  # noqa: E731
        return ogr_weights(cat(before, 0), cat(before, 1), cat(after, 0), cat(after, 1), self.eps)

    def on_epoch_start(self, run):
        if self.estimate == "probe":
            if run.epoch % self.super_epoch == 0:
                self.weights = self._probe(run)
        elif self.ref is None:
            self.ref = self._checkpoint(run.model, run, list(range(len(self.weights))))

    def on_epoch_end(self, run):
        if self.estimate == "trajectory" and (run.epoch + 1) % self.super_epoch == 0:
            now = self._checkpoint(run.model, run, list(range(len(self.weights))))
            self.weights = ogr_weights(self.ref[0], self.ref[1], now[0], now[1], self.eps)
            self.ref = now

    # --- logging and state -------------------------------------------------------------------
    def log(self, writer, epoch):
        for name, w in zip(list(self.ctx.names) + ["fused"], self.weights.tolist()):
            writer.add_scalar(f"gblending/weight_{name}", w, epoch)

    def state_dict(self):
        return {"weights": self.weights, "ref": self.ref}

    def load_state_dict(self, state):
        dev = self.ctx.device
        self.weights = state["weights"].to(dev)
        self.ref = None if state["ref"] is None else tuple(t.to(dev) for t in state["ref"])
