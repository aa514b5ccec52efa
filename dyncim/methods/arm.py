"""ARM: asymmetric reinforcing of the modalities through (conditional) mutual information.

Gao et al., "Asymmetric Reinforcing against Multimodal Representation Bias", AAAI 2025 (official
code: github.com/Gao-xiyuan/ARM; read at commit 4678bedbc940e041e5acea20065809995a7a3a97:
`mmpretrain/models/heads/linear_head.py`, `heads/cls_head.py`, `necks/MI_tool.py`,
`necks/gap.py`, `classifiers/image.py`; `configs/arm/resnet18_ks.py` at
68d4754a781b81c51152e571221b64081a4e9ba0.
Nothing copied: the estimator is written anew in torch, on the training device).

Model (as there, for two modalities 0 = `img` = inputs[0], 1 = `audio` = inputs[1], features of one
width D): the joint feature c = neck(h_0 ++ h_1) (the neck's `fc_out`, 2D -> D: it only feeds the
estimates below, so it never gets a gradient and stays at its initialisation, as there); a shared
classifier fc (D -> K); p_c, p_0, p_1 = batch mean of the true-class softmax of fc(c), fc(h_0),
fc(h_1) (numbers, no gradient). Per step, on the batch's flattened features (B*D values each):
    NMI(x, c)     = 2 I(x; c) / (H(x) + H(c))                    histogram, 30 bins per axis
    NCMI(x, c|z)  = (H(x|z) + H(c|z) - H(x,c|z)) / (H(x|z) + H(c|z))   histogram, 2 bins per axis
    ii_m = NMI(h_m, c) - NCMI(h_m, c | h_o)       (o the other modality)
    w_m  = p_c NMI(h_m, c) + p_o ii_m
    logits = fc(fc_out((w_1 / w_0) h_0 ++ (w_0 / w_1) h_1)),  loss = CE(logits, y).
Histograms as numpy's histogram2d / histogramdd: equal bins over [min, max] of each variable
(max included in the last bin; a constant variable gets [v - 0.5, v + 0.5]).
The conditional entropies follow the official `conditional_entropy` exactly, numpy's broadcasting
included: it divides the joint by `z_prob[:, None, None]` (zeros replaced by 1e-10), which for
the 2-D marginals P(x, z) makes the 3-D array P(x, z) / P(z = k) over every k, and for the 3-D
joint P(x, c, z) divides along the x axis, not z; then -sum q log q over the positive entries.
We reproduce that computation (it is what the published numbers were trained with) rather
than the textbook H(X|Z); `conditional_entropy` below says which array it forms.

Deviations:
- Prediction: the official head computes p_c, p_0, p_1 from the test labels at prediction
  time too. Here prediction is label-free: it uses the ratio r = w_1 / w_0 averaged over the
  last training epoch (1 before any): fc(fc_out(r h_0 ++ h_1 / r)).
- The estimator runs in torch on the training device each step (the official code moves the
  features to the CPU and runs numpy, with a Python double loop for the 30 x 30 MI).
- The model's own fusion module is not used (its parameters get no gradient); the modality
  encoders are this project's (MLP on feature sets, ResNet-18 on store-backed sets). Both
  encoders must give features of one width (the shared classifier), as the official ResNets do.
- No guard on w_0, w_1 (the official ratio is unguarded too).
Two modalities only (`max_modalities=2`): the pairing of each modality with "the other" is the
official two-modality rule.

Hooks: setup (neck, shared classifier, fc_out in `model.extra["arm"]`), loss, predict,
on_epoch_start / on_epoch_end (the epoch's mean ratio), log, state_dict / load_state_dict.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method, StepResult, classification_loss

KEY = "arm"


def bin_index(v: torch.Tensor, bins: int) -> torch.Tensor:
    """numpy histogram bin of each value: `bins` equal bins over [min, max], max in the last."""
    lo, hi = v.min(), v.max()
    same = hi == lo
    lo, hi = torch.where(same, lo - 0.5, lo), torch.where(same, hi + 0.5, hi)
    edges = lo + torch.arange(bins + 1, device=v.device, dtype=v.dtype) * ((hi - lo) / bins)
    edges[-1] = hi
    return (torch.bucketize(v, edges, right=True) - 1).clamp_(0, bins - 1)


def joint_prob(vars_: list[torch.Tensor], bins: int) -> torch.Tensor:
    """The normalised joint histogram of 1-D variables (one axis each, `bins` per axis)."""
    flat = torch.zeros_like(vars_[0], dtype=torch.long)
    for v in vars_:
        flat = flat * bins + bin_index(v, bins)
    counts = torch.bincount(flat, minlength=bins ** len(vars_)).to(vars_[0].dtype)
    return (counts / counts.sum()).reshape([bins] * len(vars_))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the positive entries."""
    return -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), 0).sum()


def nmi(x: torch.Tensor, c: torch.Tensor, bins: int = 30) -> torch.Tensor:
    """2 I(x; c) / (H(x) + H(c)) of the histogram estimate."""
    p = joint_prob([x, c], bins)
    px, pc = p.sum(1), p.sum(0)
    outer = px[:, None] * pc[None, :]
    safe = torch.where(p > 0, p / torch.where(p > 0, outer, torch.ones_like(outer)), torch.ones_like(p))
    mi = (p * torch.log(safe)).sum()
    return 2 * mi / (entropy(px) + entropy(pc))


def conditional_entropy(joint: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The official `conditional_entropy`: q = joint / z[:, None, None] with numpy's broadcasting
    (z's zeros -> 1e-10), then -sum q log q over q > 0. For a 2-D joint (x, z) q[k, i, j] =
    joint[i, j] / z[k]; for a 3-D joint (x, c, z) q[i, j, l] = joint[i, j, l] / z[i]."""
    z = torch.where(z > 0, z, torch.full_like(z, 1e-10))
    return entropy(joint / z[:, None, None])


def ncmi(x: torch.Tensor, c: torch.Tensor, z: torch.Tensor, bins: int = 2) -> torch.Tensor:
    """(H(x|z) + H(c|z) - H(x,c|z)) / (H(x|z) + H(c|z)) as the official code computes them."""
    p = joint_prob([x, c, z], bins)
    pxz, pcz, pz = p.sum(1), p.sum(0), p.sum((0, 1))
    hx, hc, hxc = conditional_entropy(pxz, pz), conditional_entropy(pcz, pz), conditional_entropy(p, pz)
    den = hx + hc
    return torch.where(den != 0, (den - hxc) / torch.where(den != 0, den, torch.ones_like(den)), 0.0)


def true_class_mean(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = z.detach().to(torch.promote_types(z.dtype, torch.float32))
    return F.softmax(z, 1).gather(1, y[:, None]).mean()


def arm_weights(h0, h1, c, p_c, p0, p1, bins_mi: int = 30, bins_cmi: int = 2) -> torch.Tensor:
    """(w_0, w_1): w_m = p_c NMI(h_m, c) + p_o (NMI(h_m, c) - NCMI(h_m, c | h_o))."""
    x0, x1, xc = (t.detach().reshape(-1).to(torch.promote_types(t.dtype, torch.float32))
                  for t in (h0, h1, c))
    n0, n1 = nmi(x0, xc, bins_mi), nmi(x1, xc, bins_mi)
    ii0 = n0 - ncmi(x0, xc, x1, bins_cmi)
    ii1 = n1 - ncmi(x1, xc, x0, bins_cmi)
    return torch.stack([p_c * n0 + p1 * ii0, p_c * n1 + p0 * ii1])


class ARMModules(nn.Module):
    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.neck = nn.Linear(2 * dim, dim)      # the official neck's fc_out: no gradient reaches it
        self.neck.requires_grad_(False)
        self.fc = nn.Linear(dim, n_classes)      # the head's shared fc
        self.fc_out = nn.Linear(2 * dim, dim)    # the head's fc_out

    def fused(self, h0, h1, ratio):
        return self.fc(self.fc_out(torch.cat([ratio * h0, h1 / ratio], 1)))


class ARM(Method):
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if ctx.n_modalities > 2:   # the params check refuses such runs first (catalog max_modalities)
            raise ValueError(f"{cfg.get('type', type(self).__name__)}: is defined by its paper for at most "
                             f"2 modalities, the data set has {ctx.n_modalities}")
        self.pred_ratio = torch.ones((), device=ctx.device)
        self._ratio_sum = torch.zeros((), device=ctx.device)
        self._w_sum = torch.zeros(2, device=ctx.device)
        self._steps = 0

    def setup(self, model):
        dims = {enc.out_dim for enc in model.encoders}
        if len(dims) != 1:
            raise ValueError(f"arm: the encoders' feature widths must agree (shared classifier), "
                             f"got {sorted(dims)}")
        model.extra[KEY] = ARMModules(dims.pop(), self.ctx.n_classes)

    def loss(self, model, out, y, idx):
        mods = model.extra[KEY]
        h0, h1 = out.feats
        with torch.no_grad():
            c = mods.neck(torch.cat([h0, h1], 1))
            p_c, p0, p1 = (true_class_mean(mods.fc(h), y) for h in (c, h0, h1))
            w = arm_weights(h0, h1, c, p_c, p0, p1, self.cfg["bins_mi"], self.cfg["bins_cmi"])
        ratio = (w[1] / w[0]).to(h0.dtype)
        logits = mods.fused(h0, h1, ratio)
        self._ratio_sum += ratio.detach().float()
        self._w_sum += w.float()
        self._steps += 1
        return StepResult(classification_loss(logits, y), logits, out, y, terms=w)

    def predict(self, model, out):
        h0, h1 = out.feats
        return model.extra[KEY].fused(h0, h1, self.pred_ratio.to(h0.dtype))

    def on_epoch_start(self, run):
        self._ratio_sum.zero_()
        self._w_sum.zero_()
        self._steps = 0

    def on_epoch_end(self, run):
        if self._steps:
            self.pred_ratio = self._ratio_sum / self._steps

    def log(self, writer, epoch):
        if not self._steps:
            return
        writer.add_scalar("arm/ratio_w1_over_w0", float(self._ratio_sum) / self._steps, epoch)
        for name, v in zip(self.ctx.names, (self._w_sum / self._steps).tolist()):
            writer.add_scalar(f"arm/weight_{name}", v, epoch)

    def state_dict(self):
        return {"pred_ratio": self.pred_ratio.clone()}

    def load_state_dict(self, state):
        self.pred_ratio = state["pred_ratio"].to(self.ctx.device)
