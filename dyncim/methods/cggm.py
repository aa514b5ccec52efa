"""CGGM: classifier-guided gradient modulation.

Guo, Jin, Chen, Zhang, Wang and Wei (zrguo), "Classifier-guided Gradient Modulation for Enhanced
Multimodal Learning", NeurIPS 2024 (official code: github.com/zrguo/CGGM, commit 21e428c; read
`src/foodtrain.py` (train), `src/msatrain.py` (three modalities), `src/eval_metrics.py`
(`cal_cos`, `train_eval_food`), `models/msamodel.py` (ClassifierGuided, Classifier),
`models/foodmodel.py`, and the defaults in `run/food_run.py`, `run/iemo_run.py`, `run/mosi_run.py`,
`run/brats_run.py`).

Auxiliary classifiers: one head per modality, c_m(h^m) = A_m h^m + a_m, on the DETACHED encoder
features (official `hs = [v.clone().detach(), ...]`), trained by the method's own optimiser
(official `cls_optimizer`: AdamW, lr `cls_lr` 5e-4, weight decay 3e-3) on sum_m CE(c_m, y); the
run's optimiser never sees them (param_groups leaves them out) and they never reach the encoders.
They live in `model.extra["cggm_heads"]` (saved with the model); their optimiser's state is in the
method's state_dict (resume).

Per training step t (after the main backward; official order):
  acc_m(t) = the auxiliary head's accuracy on the batch (before its update),
  d_m = acc_m(t) - acc_m(t-1)          (acc(0) = 0; kept across steps and epochs, as officially),
  D = sum_m d_m + 1e-8,   B_m = (D - d_m) / D          (official `coeff`),
  every gradient of encoder m *= rou * B_m,  then the auxiliary step, then the gradient norm of
  the model clipped at `clip` (official clip_grad_norm_(model.parameters(), 0.8)), then the run's
  optimiser steps.
Direction term, added to the NEXT step's loss (official `raw_loss += lamda * l_gm`):
  L_gm = (sum_m |B_m| - sum_m B_m cos(A_m, W_m)) / M,   L = CE(z, y) + lamda L_gm,
  cos over the flattened matrices; W_m the fusion head's weight block of modality m (concat: its
  columns of the one linear layer; sum: modality m's head). The official `cal_cos(cls_grad,
  fusion_grad)` is handed the out-layers' PARAMETERS (`fusion_grad = para`, not `para.grad`), so
  the "gradient" direction it aligns is the classifiers' weight direction; we follow the code.
  Only W_m gets its gradient (the auxiliary heads' share is zeroed officially by
  `cls_optimizer.zero_grad()` before their own backward; here A_m is detached).

Zero-change guard: where |sum_m d_m| < ZERO_TOL (1e-6, below any 1/batch), B_m = 1 for every m.
The official formula then gives B_m = (1e-8 - d_m) / 1e-8: 1 where every d_m = 0 (the same as the
guard), but +-1e6 and more where the changes cancel (d = (+0.1, -0.1)): gradients scaled by a
million and reversed. With the guard such a step is the plain rou-scaled gradient.

Deviations from the official code:
- The auxiliary classifiers are one linear layer each (our features are vectors; the official
  Classifier is a `cls_layers`-layer transformer over the token features, then its out_layer).
- L_gm's cosine is recomputed in the step's own loss from the previous step's coefficients and
  the current weights (official: the previous step's graph, on the weights one optimiser step
  earlier); nothing graph-valued is kept across steps, so a resumed run continues exactly.
- The zero-change guard above.
- Defaults are the classification set's (run/food_run.py: rou 1.3, lamda 0.05, cls_lr 5e-4);
  iemo/mosi use rou 1.3, lamda 0.2; brats rou 1.0, lamda 0.1, cls_lr 6e-3.
- Three or more modalities: the formulas above for any M (official msatrain.py, three).

Hooks (dyncim/methods/base.py says when each fires): setup (the auxiliary heads); param_groups
(without them); loss (CE + lamda L_gm); after_backward (auxiliary step, coefficients, encoder
gradient scaling, clipping); log; state_dict / load_state_dict (the auxiliary optimiser, the
accuracies, the coefficients).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method, StepResult

ZERO_TOL = 1e-6


def coefficients(acc_now: torch.Tensor, acc_before: torch.Tensor) -> torch.Tensor:
    """(M,) B_m = (D - d_m) / D, d = acc_now - acc_before, D = sum d + 1e-8 (official); every
    B_m = 1 where |sum d| < ZERO_TOL (the zero-change guard)."""
    d = acc_now - acc_before
    s = d.sum()
    total = s + 1e-8
    b = (total - d) / total
    return torch.where(s.abs() < ZERO_TOL, torch.ones_like(b), b)


def direction_loss(coeff: torch.Tensor, aux_weights, fusion_weights) -> torch.Tensor:
    """L_gm = (sum |B_m| - sum B_m cos(A_m, W_m)) / M (A_m detached)."""
    cos = torch.stack([F.cosine_similarity(a.detach().reshape(-1), w.reshape(-1), dim=0)
                       for a, w in zip(aux_weights, fusion_weights)])
    return (coeff.abs().sum() - (coeff * cos).sum()) / len(coeff)


class CGGM(Method):
    fusion = "concat"
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        m = ctx.n_modalities
        self.acc = torch.zeros(m, device=ctx.device)        # acc_m(t-1), official acc1
        self.coeff: torch.Tensor | None = None               # B of the last step (None: no L_gm yet)
        self.aux_opt: torch.optim.Optimizer | None = None
        self._pending_opt_state: dict | None = None
        self.last_acc = torch.zeros(m, device=ctx.device)
        self.last_cos = torch.zeros(m, device=ctx.device)

    # --- set-up -------------------------------------------------------------------------------
    def setup(self, model):
        dims = [e.out_dim for e in model.encoders]
        model.extra["cggm_heads"] = nn.ModuleList(nn.Linear(d, self.ctx.n_classes) for d in dims)
        self.aux_opt = torch.optim.AdamW(model.extra["cggm_heads"].parameters(), lr=self.cfg["cls_lr"],
                                         weight_decay=self.cfg["cls_weight_decay"])
        if self._pending_opt_state is not None:
            self.aux_opt.load_state_dict(self._pending_opt_state)
            self._pending_opt_state = None

    def param_groups(self, model):
        aux = {id(p) for p in model.extra["cggm_heads"].parameters()}
        return [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in aux]}]

    def fusion_weights(self, model):
        fusion = model.fusion
        if hasattr(fusion, "bounds"):
            return [fusion.fc.weight[:, a:b] for a, b in fusion.bounds]
        return [h.weight for h in fusion.heads]

    # --- per step -----------------------------------------------------------------------------
    def loss(self, model, out, y, idx):
        loss = F.cross_entropy(out.fused, y)
        if self.coeff is not None:
            heads = model.extra["cggm_heads"]
            loss = loss + self.cfg["lamda"] * direction_loss(self.coeff, [h.weight for h in heads],
                                                             self.fusion_weights(model))
        return StepResult(loss, out.fused, out, y)

    def after_backward(self, model, res):
        heads = model.extra["cggm_heads"]
        self.aux_opt.zero_grad(set_to_none=True)
        aux = [h(f.detach()) for h, f in zip(heads, res.out.feats)]
        sum(F.cross_entropy(z, res.y) for z in aux).backward()
        with torch.no_grad():
            acc = torch.stack([(z.argmax(1) == res.y).float().mean() for z in aux])
            coeff = coefficients(acc, self.acc)
            self.last_cos = torch.stack([F.cosine_similarity(h.weight.reshape(-1), w.reshape(-1), dim=0)
                                         for h, w in zip(heads, self.fusion_weights(model))])
            self.acc, self.coeff, self.last_acc = acc, coeff, acc
            for m, enc in enumerate(model.encoders):
                for p in enc.parameters():
                    if p.grad is not None:
                        p.grad.mul_(coeff[m] * self.cfg["rou"])
        self.aux_opt.step()
        main = [p for g in self.param_groups(model) for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(main, self.cfg["clip"])

    # --- logging and state --------------------------------------------------------------------
    def log(self, writer, epoch):
        if self.coeff is None:
            return
        for name, b, a, c in zip(self.ctx.names, self.coeff.tolist(), self.last_acc.tolist(),
                                 self.last_cos.tolist()):
            writer.add_scalar(f"cggm/coeff_{name}", b, epoch)
            writer.add_scalar(f"cggm/aux_acc_{name}", a, epoch)
            writer.add_scalar(f"cggm/cos_{name}", c, epoch)

    def state_dict(self):
        return {"acc": self.acc.clone(), "coeff": None if self.coeff is None else self.coeff.clone(),
                "aux_opt": None if self.aux_opt is None else self.aux_opt.state_dict(),
                "last_acc": self.last_acc.clone(), "last_cos": self.last_cos.clone()}

    def load_state_dict(self, state):
        dev = self.ctx.device
        self.acc = state["acc"].to(dev)
        self.coeff = None if state["coeff"] is None else state["coeff"].to(dev)
        self.last_acc, self.last_cos = state["last_acc"].to(dev), state["last_cos"].to(dev)
        if state["aux_opt"] is not None:
            if self.aux_opt is None:
                self._pending_opt_state = state["aux_opt"]
            else:
                self.aux_opt.load_state_dict(state["aux_opt"])
