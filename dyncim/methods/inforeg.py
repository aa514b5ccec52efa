"""InfoReg: information acquisition regulation in the leading modality's prime learning window.

Huang, Wei, Hu et al., "Adaptive Unimodal Regulation for Balanced Multimodal Information
Acquisition", CVPR 2025 (official code: github.com/GeWu-Lab/InfoReg_CVPR2025; read:
`main.py::train_epoch` at its current version, commit ea7b9d5 (2025-11-04; HEAD 939b2ed), and
at the first release 41d887f461ab7f70ddc0440b22e999a24b99e610, `models/basic_model.py` at
4df625a2bafa9a4d795b45a6c164105c7df92a3d; nothing copied).

Model (as `AVClassifier`): the encoders, a fused concat head, and one linear head per modality
on its own features (`model.extra["inforeg_heads"]`). Per step the objective is
    L = CE(fused, y) + sum_m CE(head_m(h_m), y)
(the official code back-propagates the three losses one after the other: the same gradient).

Fisher-information trace of encoder m over epoch e (the official `fim_audio` / `fim_visual`):
    tr_m(e) = sum over the Linear / Conv2d weights W of encoder m of  mean_elements( sum_steps g_W^2 )
with g_W the weight's final gradient of the step (after the proximal term below, as there).
Because the mean is linear, it is accumulated on the device as sum_steps sum_W mean(g_W^2).

Prime-learning window, decided at the start of each epoch e from modality 0's traces T (a list
of the finished epochs' tr_0), with w = `window` (official 10):
    e = 0:  k = 1;   else  tr1 = sum(T[-w:]) / w,  tr2 = sum(T[-w-1:-1]) / w,  k = (tr1 - tr2) / tr1
(Python slicing as in the official code: over fewer than w epochs the sums are still divided by
w, so at e = 1, tr2 = 0 and k = 1). The modality is in its prime learning phase while
k > `threshold` (official 0.05; 0.04 in the first release): its information is still growing
quickly.

Regularisation: at the start of each epoch the encoders' parameters theta0 are snapshot (the
official `global_model = deepcopy(model)`). In a step inside the window, with s_m = sum over the
batch of softmax(head_m(h_m))[y], the leading encoder's parameters get
    grad += b (theta - theta0),
    b = `beta` * exp(tanh(s_0 - s_1)) on encoder 0 if s_0 > s_1   (official 0.95),
    b = `beta_other` * exp(tanh(s_1 - s_0)) on encoder 1 if s_1 > s_0   (official 0.1),
the gradient of the proximal term (b / 2) ||theta - theta0||^2 with b held constant.

Which modality, as the official code (not generalised further): the paper describes regulating
the well-learning modality. The code tracks the window on the audio trace only (modality 0 here:
the first of the data set, audio in the audio-visual sets) and regularises whichever encoder
leads, audio with 0.95 and visual with 0.1. In the first release the visual branch, `elif
(score_v < score_a)`, repeated the first condition and could never run: `beta_other: 0` with
`threshold: 0.04` is that release. Two modalities only (the scores compare a pair):
`max_modalities=2` in the catalog.

Deviations from the official code:
- The traces are on the device, one scalar per modality per step (no per-layer `.item()`); the
  official per-step gradient diagnostics (extra backward passes for logging) are left out: they
  change nothing that is trained.
- Only the encoders' parameters are snapshot (the official deep copy of the whole model is
  read only there).
- On feature sets the encoders are MLPs: their Linear weights play the conv kernels' part.

Hooks: setup (the unimodal heads), loss (fused + unimodal cross-entropies), after_backward (the
proximal gradient, then the Fisher accumulation), on_epoch_start (snapshot, window factor k),
on_epoch_end (the epoch's traces), log, state_dict / load_state_dict (the trace history).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method, StepResult, classification_loss

HEADS = "inforeg_heads"


def window_factor(traces: list[float], window: int) -> float:
    """k of the official window rule from the finished epochs' traces (1 before any)."""
    if not traces:
        return 1.0
    tr1 = sum(traces[-window:]) / window
    tr2 = sum(traces[-window - 1:-1]) / window
    return (tr1 - tr2) / tr1


def fisher_weights(encoder: nn.Module) -> list[torch.Tensor]:
    """The weights whose squared gradients make up the Fisher trace: Linear and Conv2d weights."""
    return [m.weight for m in encoder.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.requires_grad]


def fisher_step(encoder: nn.Module) -> torch.Tensor:
    """sum over the encoder's Linear / Conv2d weights of mean(grad^2) for the current gradients."""
    terms = [w.grad.to(torch.promote_types(w.grad.dtype, torch.float32)).pow(2).mean()
             for w in fisher_weights(encoder) if w.grad is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class InfoReg(Method):
    fusion = "concat"
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if ctx.n_modalities > 2:   # the params check refuses such runs first (catalog max_modalities)
            raise ValueError(f"{cfg.get('type', type(self).__name__)}: is defined by its paper for at most "
                             f"2 modalities, the data set has {ctx.n_modalities}")
        self.traces: list[list[float]] = [[] for _ in range(ctx.n_modalities)]
        self._fim = torch.zeros(ctx.n_modalities, device=ctx.device)
        self._beta_sum = torch.zeros(ctx.n_modalities, device=ctx.device)
        self._reg_steps = torch.zeros(ctx.n_modalities, device=ctx.device)
        self._steps = 0
        self.k = 1.0
        self.snapshot: list[list[torch.Tensor]] = []

    def setup(self, model):
        model.extra[HEADS] = nn.ModuleList(nn.Linear(enc.out_dim, self.ctx.n_classes)
                                           for enc in model.encoders)

    def in_window(self) -> bool:
        return self.k > self.cfg["threshold"]

    def on_epoch_start(self, run):
        self.k = window_factor(self.traces[0], self.cfg["window"])
        self.snapshot = [[p.detach().clone() for p in enc.parameters()] for enc in run.model.encoders]
        self._fim.zero_()
        self._beta_sum.zero_()
        self._reg_steps.zero_()
        self._steps = 0

    def loss(self, model, out, y, idx):
        heads = [head(h) for head, h in zip(model.extra[HEADS], out.feats)]
        loss = classification_loss(out.fused, y) + sum(classification_loss(z, y) for z in heads)
        return StepResult(loss, out.fused, out, y, terms=heads)

    def beta(self, heads, y) -> torch.Tensor:
        """(2,) the step's proximal weight on each encoder: on the leading one inside the window,
        0 on the other, both 0 outside the window or at a tie."""
        s = torch.stack([F.softmax(z.detach().to(torch.promote_types(z.dtype, torch.float32)), 1)
                         .gather(1, y[:, None]).sum() for z in heads])
        if not self.in_window():
            return s.new_zeros(2)
        lead = torch.exp(torch.tanh((s[0] - s[1]).abs()))
        zero = s.new_zeros(())
        return torch.stack([torch.where(s[0] > s[1], self.cfg["beta"] * lead, zero),
                            torch.where(s[1] > s[0], self.cfg["beta_other"] * lead, zero)])

    def after_backward(self, model, res):
        if self.snapshot:
            beta = self.beta(res.terms, res.y)
            for enc, theta0, b in zip(model.encoders, self.snapshot, beta):
                for p, p0 in zip(enc.parameters(), theta0):
                    if p.grad is not None:
                        p.grad.add_(b.to(p.grad.dtype) * (p.detach() - p0))
            self._beta_sum += beta
            self._reg_steps += (beta > 0).float()
        for m, enc in enumerate(model.encoders):
            self._fim[m] += fisher_step(enc).to(self._fim.device)
        self._steps += 1

    def on_epoch_end(self, run):
        for m, v in enumerate(self._fim.tolist()):
            self.traces[m].append(v)

    def log(self, writer, epoch):
        for name, tr in zip(self.ctx.names, self.traces):
            if tr:
                writer.add_scalar(f"inforeg/fisher_trace_{name}", tr[-1], epoch)
        writer.add_scalar("inforeg/window_k", self.k, epoch)
        if self._steps:
            for name, n, b in zip(self.ctx.names, self._reg_steps.tolist(), self._beta_sum.tolist()):
                writer.add_scalar(f"inforeg/regularised_fraction_{name}", n / self._steps, epoch)
                writer.add_scalar(f"inforeg/beta_mean_{name}", b / self._steps, epoch)

    def state_dict(self):
        return {"traces": [list(t) for t in self.traces]}

    def load_state_dict(self, state):
        self.traces = [list(t) for t in state["traces"]]
