"""AGM: adaptive gradient modulation from Shapley-style mono-modal outputs.

Li, Li, Hu, Lei, Li and Zhou, "Boosting Multi-modal Model Performance with Adaptive Gradient
Modulation", ICCV 2023 (official code: github.com/lihong2303/AGM_ICCV2023; `model/CREMAD_net.py`
and `run/CREMAD_main.py` for two modalities, `model/URFunny_net.py` and `run/URFunny_main.py`
for three).

Mechanism, per training step:
  f(S)  = the fused logits with the modalities outside S zeroed at the input (S a subset of the
          M modalities; 2^M fusion passes);
  m_i   = Shapley value of modality i in the game f, plus f(empty)/M, so that sum_i m_i = f(all)
          (the official code's split: for two modalities m_a = (f(a,v) - f(v) + f(a)) / 2);
  s_i   = mean over the batch of -log max(softmax(m_i)[y], 1e-8)   (the mono-score, a loss);
  r_i   = exp(M/(M-1) * (mean_j s_j - s_i))            (current relative strength; 2 modalities:
          r_a = exp(s_v - s_a));
  r*_i  = the same from the running averages sbar_i of s_i over every step so far;
  c_i   = exp(alpha * min(r*_i - r_i, cap));
  the loss is the cross-entropy of sum_i m_i, with the gradient reaching m_i scaled by c_i
  (the official backward hooks on the mono outputs), within the modulation window only;
  the running averages sbar_i are then updated with s_i (every step, in or out of the window);
  after backward, if any fusion-weight gradient leaves [-clip, clip], all gradients are clipped
  to total norm `clip` (as the official loop does for AGM).

Epochs: the official loop counts epochs from 1 and modulates when starts <= epoch <= ends;
`modulation_starts`/`modulation_ends` here use the same 1-based count (default 0..20: the
first 20 epochs).

Deviations from the official code (also listed in docs/baselines.md):
- Zero-padded passes. The official GradMod.forward runs f(all) in train mode, then puts the
  whole network in eval mode for every f(S), S a proper subset (each a full forward on inputs
  with the modalities outside S zeroed, gradients kept), and back in train mode. Where no encoder
  and no fusion module holds BatchNorm or dropout (`mode_dependent`; the default MLP encoders
  with dropout 0), train and eval mode compute the same function, and we reuse the training-mode
  features of the present modalities and run only each zeroed modality's encoder once, on a single
  zero row, in eval mode (a cheaper computation of the same f(S); the Shapley parts then add up
  to the training forward exactly). With BatchNorm or dropout (the ResNet-18 encoders), the
  official passes run: after the train-mode forward (which alone updates the BatchNorm running
  statistics, once per step), the model goes to eval mode, every encoder runs once on its real
  inputs and once on a zero row, the fusion module forms each f(S) from these eval-mode features,
  and every module's mode is restored; this is the official result with M + M encoder passes
  instead of (2^M - 1) M.
- Outside the modulation window the official hooks keep the last coefficients set inside it
  (update_scale is not called there, the hooks still fire), so modulation never really stops
  after `modulation_ends`; we use coefficient 1 outside the window.
- The coefficients are computed in the `loss` hook (the `forward` hook gets no labels) and
  applied as c * m + (1 - c) * m.detach(), whose gradient is the official backward hook's
  scaling. They stay on the device (no `.item()`/`math.exp` per step); the official code loops
  over samples in Python.

Hooks (dyncim/methods/base.py says when each fires): forward (the coalition passes and Shapley mono
outputs); loss (coefficients and the running mono-score average); after_backward (the gradient
clipping); on_epoch_start (resets the epoch's statistics); log.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from ..models.multimodal import Output
from .base import Method, StepResult


def mode_dependent(model) -> bool:
    """Whether an encoder or the fusion module computes differently in train and eval mode
    (BatchNorm: batch vs running statistics; dropout)."""
    return any(isinstance(m, (_BatchNorm, _DropoutNd))
               for part in (model.encoders, model.fusion) for m in part.modules())


def coalition_outputs(model, feats: list[torch.Tensor], zero_feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """f(S) for every subset S (bit m of the index set = modality m present)."""
    n = len(feats)
    outs = []
    for s in range(2 ** n):
        fs = [feats[m] if s >> m & 1 else zero_feats[m] for m in range(n)]
        outs.append(model.fusion(fs)[0])
    return outs


def shapley_mono(outs: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """m_i = Shapley value of i in the game S -> f(S), plus f(empty)/n (so sum_i m_i = f(all))."""
    mono = []
    for i in range(n):
        acc = outs[0] / n
        for s in range(2 ** n):
            if s >> i & 1:
                continue
            k = bin(s).count("1")
            w = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            acc = acc + w * (outs[s | 1 << i] - outs[s])
        mono.append(acc)
    return mono


def mono_scores(mono: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """(M,) batch mean of -log p(y) of each mono output, p clamped at 1e-8 (as the official code)."""
    logp = torch.stack([F.log_softmax(z.detach(), dim=1).gather(1, y[:, None]).squeeze(1) for z in mono])
    return (-logp.clamp(min=math.log(1e-8))).mean(1)


def agm_coefficients(scores: torch.Tensor, running: torch.Tensor, alpha: float, cap: float):
    """(ratio, optimal_ratio, coefficient), each (M,)."""
    n = scores.numel()
    f = n / (n - 1)
    ratio = torch.exp(f * (scores.mean() - scores))
    optimal = torch.exp(f * (running.mean() - running))
    coef = torch.exp(alpha * torch.clamp(optimal - ratio, max=cap))
    return ratio, optimal, coef


class AGM(Method):
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        n = ctx.n_modalities
        self.running = torch.zeros(n, device=ctx.device)   # sbar_i, averaged over all steps so far
        self.iteration = 0
        self._coef_sum = torch.zeros(n, device=ctx.device)
        self._score_sum = torch.zeros(n, device=ctx.device)
        self._steps = 0

    # --- per step -----------------------------------------------------------------------------
    def forward(self, model, xs, idx):
        if mode_dependent(model):
            return self.forward_eval_mode_passes(model, xs)
        feats = model.encode(xs)
        zero_feats = []
        for enc, x, h in zip(model.encoders, xs, feats):
            was = enc.training
            enc.eval()
            z = enc(torch.zeros(1, *x.shape[1:], dtype=x.dtype, device=x.device))
            enc.train(was)
            zero_feats.append(z.expand_as(h))
        outs = coalition_outputs(model, feats, zero_feats)
        mono = shapley_mono(outs, len(feats))
        return Output(feats, mono, outs[-1])

    @staticmethod
    def forward_eval_mode_passes(model, xs):
        """The official passes for models with BatchNorm or dropout: f(all) in the model's (train)
        mode, every other f(S) with the whole model in eval mode (see the module docstring)."""
        feats = model.encode(xs)                         # train mode: updates BatchNorm statistics
        fused = model.fusion(feats)[0]
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            present = model.encode(xs)
            zero = [enc(torch.zeros(1, *x.shape[1:], dtype=x.dtype, device=x.device)).expand_as(h)
                    for enc, x, h in zip(model.encoders, xs, present)]
            outs = coalition_outputs(model, present, zero)[:-1]
        finally:
            for m, training in modes:
                m.training = training
        mono = shapley_mono(outs + [fused], len(feats))
        return Output(feats, mono, fused)

    def loss(self, model, out, y, idx):
        mono = out.logits
        scores = mono_scores(mono, y)
        self.iteration += 1
        t = self.iteration
        if self.modulating(first_epoch=1):   # the official loop counts epochs from 1
            _, _, coef = agm_coefficients(scores, self.running, self.cfg["alpha"], self.cfg["cap"])
            fused = sum(c * z + (1 - c) * z.detach() for c, z in zip(coef, mono))
            self._coef_sum += coef
            self._steps += 1
        else:
            fused = sum(mono)
        self._score_sum += scores
        self.running.mul_((t - 1) / t).add_(scores / t)
        return StepResult(F.cross_entropy(fused, y), out.fused, out, y)

    def after_backward(self, model, res):
        clip = self.cfg["grad_clip"]
        if not clip:
            return
        head = [p.grad for p in model.fusion.parameters() if p.grad is not None and p.dim() >= 2]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not head or not grads:
            return
        exceeds = torch.stack([g.abs().max() for g in head]).max() > clip
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = torch.where(exceeds, torch.clamp(clip / (total + 1e-6), max=1.0), torch.ones_like(total))
        for g in grads:
            g.mul_(scale)

    # --- per epoch ----------------------------------------------------------------------------
    def on_epoch_start(self, run):
        self._coef_sum.zero_()
        self._score_sum.zero_()
        self._steps = 0

    def log(self, writer, epoch):
        steps = max(1, self.ctx.steps_per_epoch)
        scores = (self._score_sum / steps).tolist()
        coef = (self._coef_sum / self._steps).tolist() if self._steps else [1.0] * len(scores)
        for name, s, c in zip(self.ctx.names, scores, coef):
            writer.add_scalar(f"agm/mono_score_{name}", s, epoch)
            writer.add_scalar(f"agm/coefficient_{name}", c, epoch)

    # --- resume -------------------------------------------------------------------------------
    def state_dict(self):
        return {"running": self.running.clone(), "iteration": self.iteration}

    def load_state_dict(self, state):
        self.running.copy_(state["running"].to(self.running.device))
        self.iteration = int(state["iteration"])
