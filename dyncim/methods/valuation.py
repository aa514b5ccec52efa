"""Modality valuation: per-sample Shapley contributions, and re-sampling that trains the
low-contributing modality alone.

Wei, Feng, Wang and Hu, "Enhancing Multimodal Cooperation via Sample-level Modality Valuation",
CVPR 2024 (official code: github.com/GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, commit
7ed12b0; `code/sample_level.py`, `code/modality_level.py`, `code/datasets/dataloader.py`,
`code/models/models.py`). Also read: BalanceBenchmark's `Sample_trainer.py`,
`evaluation/modalitys.py` and `datasets/__init__.py` (GeWu-Lab/BalanceBenchmark, commit 4c1482f),
for more than two modalities.

Valuation (official `execute_modulation`), at the end of every epoch, over the training split, in
eval mode without gradients: for every subset S of the M modalities, f(S) = the fusion module on
the encoder features with the modalities outside S zeroed (the official `exec_drop` zeroes the
features, not the inputs), and the value of S on sample i is
    v_i(S) = |S| if argmax f(S)_i = y_i else 0,      v_i(empty) = 0
(official: 2 for a correct audio-visual prediction, 1 for a correct single modality). The
contribution of modality m on sample i is its Shapley value in the game v_i,
    phi_i(m) = sum_{S not containing m} |S|! (M - |S| - 1)! / M! [v_i(S + m) - v_i(S)],
so sum_m phi_i(m) = v_i(all) - v_i(empty) (two modalities: the official
(value_a + value_all - value_v) / 2). Exact over the 2^M subsets (one encoder pass, 2^M - 1 fusion
passes) for M <= `shapley_exact_max` (default 4); beyond, the permutation estimate over
`shapley_permutations` (default 64) random orders of the modalities, one set of orders per
valuation, drawn from the method's generator (each order's marginal gains sum exactly to v(all)).

Re-sampling, from the end of epoch `warmup - 1` on (0-based; official `--warmup 5`: epochs 0-4
train on the plain training set, every later epoch on a re-sampled one built from the valuation at
the end of the epoch before):
- `level: sample` (sample_level.py, AV_KS_Dataset_sample_level): every training sample once, plus,
  per sample i and modality m, k copies that keep modality m only (the others' features zeroed):
      k = 1 if 0.4 < phi_i(m) < 1,   2 if -0.1 < phi_i(m) < 0.4,   3 if phi_i(m) < -0.1,   else 0
  (two modalities: contributions 0.5, 0 and -0.5 get 1, 2 and 3 copies; 1 and 1.5 none).
- `level: modality` (modality_level.py, AV_KS_Dataset_modality_level): the mean contribution
  cbar_m over Z, int(part_ratio N) training samples drawn with replacement (N the training-split
  size); gap_m = 1 - cbar_m; d = (max_m gap_m - min_m gap_m) 2/3; the number of copies
  int(f(d) N), f = alpha d (`func: linear`, the official run), tanh(alpha d) or alpha d^1.5; the
  copies are training samples drawn with replacement, each keeping only the modality with the
  largest gap (two modalities: the official |gap_a - gap_v| and `drop`).
The epoch's batches then draw the originals and the copies shuffled together (the sampler hook
`epoch_indices`: the trainer's permutation of the training split, the copies appended, the whole
permuted by the method's generator). Each batch row that is a copy gets the other modalities'
features zeroed in `forward` (the official model's `drop`), the loss is the fused cross-entropy.

The method's generator (Z, the copies of `level: modality`, the shuffle of re-sampled epochs,
permutation estimates) is seeded with the run's seed plus VALUATION_SEED and saved in the method's
state, with the pending copies: a resumed run continues exactly.

Deviations from the official code (also in docs/baselines.md):
- The valuation reads the training samples un-augmented (official: its train-mode data set, with
  random crops and flips).
- More than two modalities: the copies keep one modality alone (BalanceBenchmark's sample-level
  rule); the modality level uses the largest minus the smallest gap and trains the modality of
  the largest (BalanceBenchmark sums |gap_m - gap_n| over ordered pairs / (M - 1), which is twice
  the official d for two modalities, and adds copies for every modality).
- BalanceBenchmark values a subset 1, not |S|, when correct (then 0.5 and 1.5 do not occur and
  the thresholds select differently), and drops the training set's last partial batch of 64 from
  the re-sampling; we follow the official repository.
- Z has at least one sample (official: an empty Z divides by zero).

Hooks (dyncim/methods/base.py says when each fires): epoch_indices (the re-sampled epoch); forward
(zeroes the copies' other modalities); on_epoch_end (valuation, then the next epoch's copies); log.
"""
from __future__ import annotations

import math

import torch

from ..models.multimodal import Output
from .agm import shapley_mono
from .base import Method

VALUATION_SEED = 0x5A1   # the method's generator's seed is the run's seed plus this
# official sample-level rule: (low, high, copies) for low < phi < high
SAMPLE_RULE = ((0.4, 1.0, 1), (-0.1, 0.4, 2), (-math.inf, -0.1, 3))


def subset_values(logits: torch.Tensor, y: torch.Tensor, size: int) -> torch.Tensor:
    """v(S) per sample: |S| where argmax f(S) = y, else 0 (float)."""
    return (logits.argmax(1) == y).to(torch.float32) * size


def exact_shapley(values: list[torch.Tensor], n: int) -> torch.Tensor:
    """(N, n) Shapley values of n players from per-sample values of all 2^n subsets (bit m of the
    list index = player m in the subset; values[0] = v(empty))."""
    base = [v - values[0] for v in values]          # the game v - v(empty) has the same values
    return torch.stack(shapley_mono(base, n), dim=1)


def permutation_shapley(value_of, n: int, orders: torch.Tensor) -> torch.Tensor:
    """(N, n) permutation estimate: the mean over `orders` (K, n) of each player's marginal gain
    when it joins the players before it. `value_of(mask)` -> (N,) values of the subset `mask`."""
    cache = {}

    def v(mask):
        if mask not in cache:
            cache[mask] = value_of(mask)
        return cache[mask]

    total = None
    for order in orders.tolist():
        mask, prev = 0, v(0)
        gains = [None] * n
        for m in order:
            mask |= 1 << m
            cur = v(mask)
            gains[m] = cur - prev
            prev = cur
        g = torch.stack(gains, dim=1)
        total = g if total is None else total + g
    return total / len(orders)


def sample_copies(phi: torch.Tensor) -> torch.Tensor:
    """(N, M) copies per sample and modality of the sample-level rule."""
    k = torch.zeros_like(phi, dtype=torch.long)
    for low, high, copies in SAMPLE_RULE:
        k = torch.where((phi > low) & (phi < high), torch.full_like(k, copies), k)
    return k


def modality_difference(part: torch.Tensor, alpha: float, func: str) -> float:
    """f(d) of the modality level from the mean contributions `part` (M,) over Z."""
    gap = 1.0 - part
    d = float(gap.max() - gap.min()) * 2.0 / 3.0
    if func == "linear":
        return d * alpha
    if func == "tanh":
        return math.tanh(d * alpha)
    return d ** 1.5 * alpha


class Valuation(Method):
    fusion = "concat"
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if cfg["level"] not in ("sample", "modality"):
            raise ValueError(f"valuation: level must be sample or modality, got {cfg['level']!r}")
        if cfg["func"] not in ("linear", "tanh", "square"):
            raise ValueError(f"valuation: func must be linear, tanh or square, got {cfg['func']!r}")
        n = ctx.n_modalities
        self.gen: torch.Generator | None = None
        self.copies: tuple[torch.Tensor, torch.Tensor] | None = None   # (sample index, kept modality)
        self.mean_contribution = torch.zeros(n, device=ctx.device)     # over the training split
        self.part_contribution: torch.Tensor | None = None              # level modality: over Z
        self._keep: torch.Tensor | None = None    # this epoch: per position, kept modality (-1: all)
        self._cursor = 0

    def _generator(self, run) -> torch.Generator:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(int(run.seed) + VALUATION_SEED)
        return self.gen

    # --- valuation ----------------------------------------------------------------------------
    @torch.no_grad()
    def contributions(self, run, index: torch.Tensor) -> torch.Tensor:
        """(len(index), M) Shapley contributions of each modality on each sample of `index`."""
        _, _, feats = run.evaluate(index)           # eval mode, un-augmented, no gradients
        model, y = run.model, run.data.labels[index]
        n, bs = len(feats), run.train_cfg["eval_batch_size"]
        was = model.training
        model.eval()
        try:
            def value_of(mask):
                if mask == 0:
                    return torch.zeros(len(index), device=y.device)
                out = []
                for a in range(0, len(index), bs):
                    fs = [h[a:a + bs] if mask >> m & 1 else torch.zeros_like(h[a:a + bs])
                          for m, h in enumerate(feats)]
                    out.append(subset_values(model.fusion(fs)[0], y[a:a + bs], bin(mask).count("1")))
                return torch.cat(out)

            if n <= self.cfg["shapley_exact_max"]:
                return exact_shapley([value_of(s) for s in range(2 ** n)], n)
            k = self.cfg["shapley_permutations"]
            orders = torch.argsort(torch.rand(k, n, generator=self._generator(run)), dim=1)
            return permutation_shapley(value_of, n, orders)
        finally:
            model.train(was)

    def on_epoch_end(self, run):
        if self._keep is not None and self._cursor != len(self._keep):
            raise RuntimeError(f"valuation: the epoch's batches drew {self._cursor} of the "
                               f"{len(self._keep)} re-sampled entries")
        self._keep = None
        train = run.train_idx
        phi = self.contributions(run, train)
        self.mean_contribution = phi.mean(0)
        if run.epoch < self.cfg["warmup"] - 1:
            return
        if self.cfg["level"] == "sample":
            counts = sample_copies(phi)                                 # (N, M), sample-major
            n, m = counts.shape
            flat = counts.flatten()
            rows = torch.arange(n, device=train.device).repeat_interleave(m)
            mods = torch.arange(m, device=train.device).repeat(n)
            self.copies = (train[rows.repeat_interleave(flat)], mods.repeat_interleave(flat))
            return
        g, n = self._generator(run), len(train)
        z = torch.randint(n, (max(1, int(n * self.cfg["part_ratio"])),), generator=g)
        part = phi[z.to(phi.device)].mean(0)
        self.part_contribution = part
        count = int(modality_difference(part, self.cfg["alpha"], self.cfg["func"]) * n)
        rows = torch.randint(n, (count,), generator=g).to(train.device)
        keep = int(torch.argmax(1.0 - part))
        self.copies = (train[rows], torch.full((count,), keep, dtype=torch.long, device=train.device))

    # --- sampler and forward ------------------------------------------------------------------
    def epoch_indices(self, run, perm):
        if self.copies is None:
            self._keep = None
            return perm
        idx = torch.cat([perm, self.copies[0]])
        keep = torch.cat([torch.full_like(perm, -1), self.copies[1]])
        order = torch.randperm(len(idx), generator=self._generator(run)).to(perm.device)
        self._keep, self._cursor = keep[order], 0
        return idx[order]

    def forward(self, model, xs, idx):
        if self._keep is None:
            return model(xs)
        keep = self._keep[self._cursor:self._cursor + len(idx)]
        self._cursor += len(idx)
        feats = [h * ((keep < 0) | (keep == m)).to(h.dtype)[:, None]
                 for m, h in enumerate(model.encode(xs))]
        fused, logits = model.fusion(feats)
        return Output(feats, logits, fused)

    # --- logging and state --------------------------------------------------------------------
    def log(self, writer, epoch):
        for name, c in zip(self.ctx.names, self.mean_contribution.tolist()):
            writer.add_scalar(f"valuation/contribution_{name}", c, epoch)
        if self.part_contribution is not None:
            for name, c in zip(self.ctx.names, self.part_contribution.tolist()):
                writer.add_scalar(f"valuation/part_contribution_{name}", c, epoch)
        if self.copies is not None:
            kept = torch.bincount(self.copies[1], minlength=self.ctx.n_modalities).tolist()
            writer.add_scalar("valuation/copies", sum(kept), epoch)
            for name, k in zip(self.ctx.names, kept):
                writer.add_scalar(f"valuation/copies_{name}", k, epoch)

    def state_dict(self):
        return {"gen": None if self.gen is None else self.gen.get_state(),
                "copies": None if self.copies is None else tuple(t.clone() for t in self.copies),
                "mean_contribution": self.mean_contribution.clone(),
                "part_contribution": None if self.part_contribution is None else self.part_contribution.clone()}

    def load_state_dict(self, state):
        dev = self.ctx.device
        self.gen = None
        if state["gen"] is not None:
            self.gen = torch.Generator()
            self.gen.set_state(state["gen"].cpu())
        self.copies = None if state["copies"] is None else tuple(t.to(dev) for t in state["copies"])
        self.mean_contribution = state["mean_contribution"].to(dev)
        pc = state["part_contribution"]
        self.part_contribution = None if pc is None else pc.to(dev)
