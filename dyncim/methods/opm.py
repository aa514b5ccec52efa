"""OPM: on-the-fly prediction modulation (drop the leading modality's features in the forward pass).

Wei, Hu, Du and Wen, "On-the-fly Modulation for Balanced Multimodal Learning", IEEE TPAMI 2024
(official code: github.com/GeWu-Lab/BML_TPAMI2024 at commit 8db168f1a08c030abd0f9524ec02a48e4cb977d2,
the last to change the code (HEAD 4b3aa4f only edits the README): `code/models/Classifier.py`
(`calcu_q`, `Modality_drop`, `Classifier.forward`), `code/main.py` (`train`, the warm-up and the
argparse defaults), `code/config.py`, `code/scripts/train_opm.sh`).
BalanceBenchmark's port (GeWu-Lab/BalanceBenchmark `balancemm/trainer/OPM_trainer.py`, HEAD
4c1482f, last changed in 39ed569) was read for comparison.

Mechanism, per training step after the warm-up (epochs 0 .. warmup_epochs - 1 train the plain
fused cross-entropy):
  s_m   = sum over the batch of softmax(z^m)[y], z^m modality m's own logits (for concat fusion
          its slice of the fusion weight plus an equal share of the bias; no gradient), as the
          official `performance_1/2`;
  rho_m = s_m / mean_{j != m} s_j;     r_m = tanh(relu(rho_m - 1));
  q_m   = clip(q_base * (1 + lam * r_m), 0, 1) if r_m > 0 else 0      (drop probability; `calcu_q`)
  with probability p_exe the drop runs this step (`execute_drop`: rand >= 1 - p_exe); then
    keep_{m,i} ~ Bernoulli(1 - q_m), one draw per sample i and modality m;
    theta      = sum_m d_m q_m / sum_m d_m        (d_m: the width of modality m's features);
    h'^m_i     = keep_{m,i} * h^m_i / (1 - theta) (every modality's features, kept or not,
                                                   divided by the same 1 - theta, as there);
  loss = CE(fusion(h'^1, ..., h'^M), y)  (the fused head on the dropped features; the training
  accuracy is read from these logits too). Otherwise (no execution, warm-up) the plain fused CE.
Prediction (validation, test) never drops: the official `val` runs the model with warm_up=1.

Only a modality whose score exceeds the mean of the others gets q_m > 0, i.e. one with
s_m > mean_j s_j; not every modality can lie above the mean, so at least one modality (the
weakest) is never dropped and every sample keeps a modality. The official code removes the
samples that lost every modality (`update_flag`, and skips the step if none is left); under this
rule that never happens (with two modalities it cannot happen in the official code either), so no
sample is removed here (tests/test_method_opm.py checks that the weakest modality is always kept).

More than two modalities (the paper and the official code define two): rho_m compares s_m with
the mean score of the other modalities (as dyncim/methods/ogm_ge.py does); with two modalities
this is the official ratio exactly. BalanceBenchmark divides by the SUM of the other two scores
with three modalities, so that a modality must outscore the two others together to be dropped.

Deviations from the official code (each is also listed in docs/baselines.md):
- Warm-up: the official `train` sets warm_up = 1 if epoch <= 5 (epochs counted from 0), i.e.
  the first 6 epochs train without drops; `warmup_epochs` (default 6) is that count. BalanceBenchmark's
  OPM_trainer.py has no warm-up (it drops from epoch modulation_starts = 0 on); we follow the
  official code.
- q_base defaults to 0.5: `code/config.py` says 0.4, but `main.py` parses its arguments with
  default --q_base 0.5 and writes them over the config (cfg.parse(vars(args))), and
  scripts/train_opm.sh passes 0.5; so every official run used 0.5 (BalanceBenchmark: 0.4).
  lam 0.5 and p_exe 0.7 agree everywhere.
- The released Classifier.py does not parse (a stray `]` after torch.chunk in execute_drop); the
  mechanism around it is unambiguous. Its custom_autograd divides by 1 - theta forward and backward,
  which is plain division by a constant, written here as such. Feature widths d_m are the encoders'
  (the official code stacks the modalities and needs equal widths; config d = [512, 512]).
- Sample removal: see above (never needed under the rule). Exact tie s_a == s_v: r = 0, nobody
  is dropped, as there.
- Scores, q, the execution draw and the masks stay on the device (no .item() or Python loop over
  samples per step); the draws come from torch's generator (saved in resume checkpoints), not
  numpy's.

Hooks (dyncim/methods/base.py says when each fires): loss (scores, q, drop, the fused head on the
dropped features); on_epoch_start (resets the epoch's statistics); log.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .base import Method, StepResult


def confidence_scores(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """(M,) sum over the batch of each modality's softmax probability of the true class."""
    return torch.stack([F.softmax(z.detach(), dim=1).gather(1, y[:, None]).sum() for z in logits])


def drop_probabilities(scores: torch.Tensor, q_base: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, q), each (M,): r_m = tanh(relu(s_m / mean_{j != m} s_j - 1)); q_m = clip(q_base (1 + lam r_m), 0, 1)
    where r_m > 0, else 0 (a NaN ratio, all scores 0, gives q = 0)."""
    n = scores.numel()
    others = (scores.sum() - scores) / (n - 1)
    r = torch.tanh(torch.relu(scores / others - 1))
    q = torch.where(r > 0, q_base * (1 + lam * r), torch.zeros_like(r)).clamp(0.0, 1.0)
    return r, q


def drop_features(feats: list[torch.Tensor], q: torch.Tensor, execute: torch.Tensor):
    """The dropped, rescaled features and the (M, B) keep mask; with `execute` false (a 0-d bool
    tensor) the features unchanged and a mask of ones."""
    widths = torch.tensor([h.shape[1] for h in feats], dtype=q.dtype, device=q.device)
    theta = (widths * q).sum() / widths.sum()
    keep = torch.bernoulli((1 - q)[:, None].expand(len(feats), feats[0].shape[0]))
    keep = torch.where(execute, keep, torch.ones_like(keep))
    scale = torch.where(execute, 1 / (1 - theta), torch.ones_like(theta))
    return [h * (k[:, None] * scale).to(h.dtype) for h, k in zip(feats, keep)], keep


class OPM(Method):
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        n = ctx.n_modalities
        self._q_sum = torch.zeros(n, device=ctx.device)
        self._keep_sum = torch.zeros(n, device=ctx.device)
        self._exe_sum = torch.zeros((), device=ctx.device)
        self._steps = 0

    def dropping(self) -> bool:
        """After the warm-up epochs (0-based epoch >= warmup_epochs)."""
        return self.epoch >= self.cfg["warmup_epochs"]

    def on_epoch_start(self, run):
        self._q_sum.zero_()
        self._keep_sum.zero_()
        self._exe_sum.zero_()
        self._steps = 0

    def loss(self, model, out, y, idx):
        if not self.dropping():
            return StepResult(F.cross_entropy(out.fused, y), out.fused, out, y)
        _, q = drop_probabilities(confidence_scores(out.logits, y), self.cfg["q_base"], self.cfg["lam"])
        execute = torch.rand((), device=q.device) >= 1 - self.cfg["p_exe"]
        dropped, keep = drop_features(out.feats, q, execute)
        fused = model.fusion(dropped)[0]
        self._q_sum += q
        self._keep_sum += keep.mean(1)
        self._exe_sum += execute.to(self._exe_sum.dtype)
        self._steps += 1
        return StepResult(F.cross_entropy(fused, y), fused, out, y,
                          terms={"q": q, "keep": keep, "execute": execute, "dropped": dropped})

    def log(self, writer, epoch):
        if not self._steps:
            return
        q = (self._q_sum / self._steps).tolist()
        keep = (self._keep_sum / self._steps).tolist()
        writer.add_scalar("opm/executed", float(self._exe_sum) / self._steps, epoch)
        for name, qm, km in zip(self.ctx.names, q, keep):
            writer.add_scalar(f"opm/drop_probability_{name}", qm, epoch)
            writer.add_scalar(f"opm/kept_{name}", km, epoch)
