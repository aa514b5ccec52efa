"""Remix: data remixing, each sample trains the modality it is least confident in, alone.

Ma et al., "Improving Multimodal Learning Balance and Sufficiency through Data Remixing",
ICML 2025 (official code: github.com/MatthewMaxy/Remix_ICML2025, commit 80898aa; read
`train.py` (`kl_divergence`, `remix`, `train_epoch`, `special_train_epoch`, `main`),
`models/models.py` (AVClassifier), `datasets/dataloader.py`, `scripts/run_train.sh`).

Model (official AVClassifier): the encoders, a concat head over the features giving the fused
logits z, and one separate linear head per modality giving z^m = W_m h^m + b_m. The separate
heads live in `model.extra["remix_heads"]` (saved with the model); the fused prediction is the
concat head's, as the official `valid`.

Warm-up epochs, epoch < warmup (0-based; official `--warmup 10`): every training sample,
    L = CE(z, y) + sum_m warmup_weight CE(z^m, y)       (official alpha = beta = 0.5).
Remixed epochs, epoch >= warmup: at the epoch's start, in eval mode without gradients and on the
un-augmented training samples (official `remix` over its train-set loader in `mode='val'`, i.e.
without the random crops), each sample's divergence from uniform of every modality's own
prediction p^m = softmax(z^m), with C the data set's class count (never a fixed 6),
    KL_m(i) = sum_c p~^m_c log2(p~^m_c / (1/C)),   p~ = clip(p, 1e-9, 1)   (bits, as official),
and sample i joins the unimodal phase of the modality it is least sure in,
    phase(i) = argmin_m KL_m(i)    (two modalities: audio if KL_a < KL_v, else video, official).
The epoch then runs the phases one after the other, in the official order (video's subset,
then audio's: modality M-1 first, modality 0 last); in modality m's phase the other modalities'
features are zeroed after their encoders (official `model(..., mode)`: `a[:, :] = 0`), and
    L = CE(z, y) + phase_weight CE(z^m, y)              (official gamma1 = gamma2 = 1).
Each phase's samples come in a random order (official: a shuffled DataLoader per phase); an
empty phase is skipped (official "Empty ... Subset!").

How it sits on the shared loop: the sampler hook `epoch_indices` returns the training split
grouped by phase (each group in the order of the trainer's seeded permutation, so no generator
of its own is needed and a resumed run continues exactly), and keeps each position's phase;
`forward` zeroes, per batch row, the features of every modality but the row's phase, and `loss`
takes per-sample terms with the row's modality (a per-sample mask), so a batch is the official
phase batch wherever it lies inside one phase.

Deviations from the official code:
- Batch boundaries: the loop slices the grouped indices in batches of batch_size, so where one
  phase's sample count is not a multiple of the batch size, its last partial batch and the next
  phase's first samples share a step (at most M - 1 steps per epoch; each row still gets its own
  phase's masking and loss, the batch mean over the rows). The official code takes the two
  partial batches as two steps. Per-row masks keep this exact in every other step; a sampler that
  padded or dropped samples would change what each phase sees.
- Ties: at KL_m equal for several modalities the sample goes to the highest-indexed of them (the
  official `else` sends a tie to video, the second modality).
- More than two modalities (the paper and code define audio and video): argmin over all M, phases
  from modality M-1 down to 0, and in the warm-up every unimodal loss weighted by the one
  `warmup_weight`; the official alpha/beta (warm-up) and gamma1/gamma2 (phases) are each one
  number here (`warmup_weight`, `phase_weight`); their official values are equal.
- The split runs over the training split only (the official `remix` reads its whole training
  CSV, which is also its only training data; there is no validation split there).

Hooks (dyncim/methods/base.py says when each fires): setup (the separate unimodal heads);
epoch_indices (the split and phase order); forward (per-row feature zeroing); loss; log.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..models.multimodal import Output
from .base import Method, StepResult


def divergence_from_uniform(logits: torch.Tensor) -> torch.Tensor:
    """(N,) KL(softmax(logits) || uniform) in bits, the prediction clipped at 1e-9 as officially;
    the class count is logits' width."""
    c = logits.shape[1]
    p = torch.softmax(logits.float(), dim=1).clamp(1e-9, 1.0)
    return (p * torch.log2(p * c)).sum(1)


def assign_phases(kls: torch.Tensor) -> torch.Tensor:
    """(N,) the modality each sample trains: argmin over the (N, M) divergences, a tie to the
    highest index (official: audio only if KL_a < KL_v)."""
    m = kls.shape[1]
    return (m - 1) - torch.argmin(kls.flip(1), dim=1)   # argmin returns the first minimum


def phase_order(perm: torch.Tensor, phase_of: torch.Tensor, n_modalities: int):
    """The epoch's indices grouped by phase, modality M-1 first, each group in perm's order;
    and each position's phase."""
    ph = phase_of[perm]
    groups = [perm[ph == m] for m in reversed(range(n_modalities))]
    phases = [torch.full_like(g, m) for g, m in zip(groups, reversed(range(n_modalities)))]
    return torch.cat(groups), torch.cat(phases)


class Remix(Method):
    fusion = "concat"
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.phase_of: torch.Tensor | None = None     # (n_samples,) this epoch's phase per sample; -1 unset
        self.counts = [0] * ctx.n_modalities            # the last split's phase sizes (logged)
        self._phase: torch.Tensor | None = None        # this epoch: per position, the row's phase (None: warm-up)
        self._cursor = 0

    def setup(self, model):
        dims = [e.out_dim for e in model.encoders]
        model.extra["remix_heads"] = nn.ModuleList(nn.Linear(d, self.ctx.n_classes) for d in dims)

    def heads(self, model, feats):
        return [head(h) for head, h in zip(model.extra["remix_heads"], feats)]

    def remixing(self) -> bool:
        return self.epoch >= self.cfg["warmup"]

    # --- the split and the sampler ------------------------------------------------------------
    @torch.no_grad()
    def split(self, run, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(len(index), M) divergences from uniform of the separate heads' predictions, eval mode,
        un-augmented; and the phase of each sample."""
        model = run.model
        _, _, feats = run.evaluate(index)
        was = model.training
        model.eval()
        try:
            kls = torch.stack([divergence_from_uniform(z) for z in self.heads(model, feats)], dim=1)
        finally:
            model.train(was)
        return kls, assign_phases(kls)

    def epoch_indices(self, run, perm):
        self._cursor = 0
        if not self.remixing():
            self._phase = None
            return perm
        train = run.train_idx
        _, phases = self.split(run, train)
        self.phase_of = torch.full((self.ctx.n_samples,), -1, dtype=torch.long, device=perm.device)
        self.phase_of[train] = phases.to(perm.device)
        self.counts = torch.bincount(phases, minlength=self.ctx.n_modalities).tolist()
        idx, self._phase = phase_order(perm, self.phase_of, self.ctx.n_modalities)
        return idx

    # --- per step -----------------------------------------------------------------------------
    def forward(self, model, xs, idx):
        feats = model.encode(xs)
        if self._phase is not None:
            phase = self._phase[self._cursor:self._cursor + len(idx)]
            self._cursor += len(idx)
            feats = [h * (phase == m).to(h.dtype)[:, None] for m, h in enumerate(feats)]
        fused, logits = model.fusion(feats)
        return Output(feats, self.heads(model, feats), fused)

    def loss(self, model, out, y, idx):
        fused = F.cross_entropy(out.fused, y, reduction="none")
        uni = torch.stack([F.cross_entropy(z, y, reduction="none") for z in out.logits], dim=1)  # (B, M)
        if self._phase is None:
            per = fused + self.cfg["warmup_weight"] * uni.sum(1)
        else:
            phase = self._phase[self._cursor - len(idx):self._cursor]
            per = fused + self.cfg["phase_weight"] * uni.gather(1, phase[:, None])[:, 0]
        return StepResult(per.mean(), out.fused, out, y)

    def on_epoch_end(self, run):
        if self._phase is not None and self._cursor != len(self._phase):
            raise RuntimeError(f"remix: the epoch's batches drew {self._cursor} of the "
                               f"{len(self._phase)} remixed entries")
        self._phase = None

    # --- logging and state --------------------------------------------------------------------
    def log(self, writer, epoch):
        total = sum(self.counts)
        if total == 0:      # warm-up: no split yet
            return
        for name, k in zip(self.ctx.names, self.counts):
            writer.add_scalar(f"remix/share_{name}", k / total, epoch)

    def state_dict(self):
        return {"counts": list(self.counts)}

    def load_state_dict(self, state):
        self.counts = list(state["counts"])
