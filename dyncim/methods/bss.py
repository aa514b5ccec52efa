"""BSS: balance-aware sequence sampling, a curriculum over training samples scored by how well the
modalities agree and how well the model already fits them.

Guan, Jiang and Yang, "Balance-aware Sequence Sampling Makes Multimodal Learning Better", IJCAI
2025 (official code: github.com/njustkmg/IJCAI25-BSS, commit 495b94e; read `CREMA-D/train-CL.py`
(`model_evaluate`, the pacing in `__main__`) and `CREMA-D/train-SPL.py` (`assign_weights`),
`CREMA-D/models/basic_model.py` (AVNet: unimodal heads z^a, z^v and a concat head z^mm)).

Scores (both variants), from a pass over the training split: per sample i, with p^m_i = softmax(z^m_i)
    sim_i  = cos(p^a_i, p^v_i)                                          (modality agreement)
    loss_i = w_uni (CE(z^a_i, y_i) + CE(z^v_i, y_i)) + w_fused CE(z^mm_i, y_i)   (w_uni 0.9, w_fused 0.1)
each min-max normalised over the training split (s~, l~ in [0, 1]).
- variant `cl` (train-CL.py, the heuristic scheduler): difficulty d_i = (1 - s~_i) + l~_i, scored
  ONCE, at the start of epoch 0 (the untrained model; official `if epoch in [0]`), the training
  split sorted easy first (ascending d, ties by training-split position: Python's stable sort).
  Epoch t (0-based) admits the n_t easiest samples, shuffled,
      lambda_t = min(1, sqrt((1 - lambda_0^2) / T_grow (t + 1) + lambda_0^2)),  n_t = int(N lambda_t)
  (lambda_0 = 0.1, T_grow = 40: 18.6% of the training split at epoch 0, all of it from epoch 39).
- variant `spl` (train-SPL.py, the "learning-based" scheduler): re-scored at the start of EVERY
  epoch with the current model; d_i = l~_i - s~_i, weight w_i = 1 - d_i + eps (eps = 0.01),
  and the epoch's order is N draws without replacement with probabilities w_i / sum w
  (torch.multinomial): every sample once, easy ones likelier early; the batches follow that order
  unshuffled (official shuffle=False). Admits the whole split every epoch.
The training loss is the official one, w_fused CE(z^mm) + w_uni sum_m CE(z^m), on the admitted batches.

Here z^m are the fusion module's per-modality logits (`Output.logits`) and z^mm the fused logits.
With `fusion: concat` (default) the per-modality logits are the concat head's slices
(dyncim.models.fusion.ConcatFusion), so sum_m z^m = z^mm: the official test-time prediction
z^a + z^v is the fused prediction `predict` returns.

More than two modalities: sim_i = the mean cosine over the modality pairs, loss_i sums the
unimodal CE over all modalities (both reduce to the official formulas for two).

Deviations from the official code (also in docs/baselines.md):
- The scoring pass runs in eval mode, without gradients, on un-augmented training inputs
  (official: `net.train()`, the training data set with its augmentation; gradients computed and
  discarded). Label-aware (training labels), as official.
- Min-max normalisation of a constant score gives 0 (official: 0/0 = NaN).
- The per-modality heads are the fusion module's (`fusion: concat`: slices of the fused head;
  official AVNet: separate linear heads on the features); `fusion: sum` gives separate heads
  whose sum is the fused prediction.
- Batches keep the last partial batch (the shared loop; official `drop_last=True`, which drops the
  last N mod batch_size samples of each epoch's order). CL shuffles the admitted subset in the
  order of the trainer's seeded permutation `perm` (a uniform shuffle; official: DataLoader
  shuffle=True).
- Multi-label sets are not supported (the score is a single-label cross-entropy).

The method's generator (SPL's draws) is seeded with the run's seed plus BSS_SEED and saved in the
state with CL's order and the per-epoch admitted fractions: a resumed run continues exactly.

Hooks (dyncim/methods/base.py says when each fires): epoch_indices (scoring pass when due, then
the epoch's admitted order), loss (the official weighted loss), log (`bss/admitted`, the fraction
of the training split the epoch drew, and the score statistics), training_record (the admitted
fractions over training, for the report), state_dict.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .base import Method, StepResult, admitted_summary

BSS_SEED = 0xB55   # the method's generator's seed is the run's seed plus this


def min_max(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min) over all of x; 0 where x is constant."""
    lo, hi = x.min(), x.max()
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(x))


def pacing(epoch: int, lambda_0: float, t_grow: float) -> float:
    """The official CL pacing lambda_t (epoch t 0-based)."""
    return min(1.0, math.sqrt((1 - lambda_0 ** 2) / t_grow * (epoch + 1) + lambda_0 ** 2))


def admitted_count(n: int, epoch: int, lambda_0: float, t_grow: float) -> int:
    """int(N lambda_t): how many of the easiest training samples CL's epoch admits."""
    return int(n * pacing(epoch, lambda_0, t_grow))


def agreement(logits: list[torch.Tensor]) -> torch.Tensor:
    """Per sample, the mean cosine similarity of the modalities' softmax probabilities over pairs."""
    p = [F.softmax(z.float(), dim=1) for z in logits]
    sims = [F.cosine_similarity(p[a], p[b], dim=1) for a in range(len(p)) for b in range(a + 1, len(p))]
    return torch.stack(sims).mean(0)


class BSS(Method):
    fusion = "concat"
    min_modalities = 2

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if cfg["variant"] not in ("cl", "spl"):
            raise ValueError(f"bss: variant must be cl or spl, got {cfg['variant']!r}")
        self.gen: torch.Generator | None = None
        self.order: torch.Tensor | None = None     # CL: the training split, easy first
        self.admitted: list[float] = []            # per epoch drawn: fraction of the training split
        self.last_scores: dict[str, float] = {}    # statistics of the latest scoring pass

    def _generator(self, run) -> torch.Generator:
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(int(run.seed) + BSS_SEED)
        return self.gen

    # --- scoring ------------------------------------------------------------------------------
    @torch.no_grad()
    def raw_scores(self, model, data, index: torch.Tensor, batch_size: int):
        """(sim, loss) per sample of `index`: eval mode, un-augmented inputs, training labels."""
        was = model.training
        model.eval()
        sims, losses = [], []
        w_f, w_u = self.cfg["fused_weight"], self.cfg["unimodal_weight"]
        try:
            for a in range(0, len(index), batch_size):
                idx = index[a:a + batch_size]
                out, y = model(data.batch(idx, train=False)), data.labels[idx]
                sims.append(agreement(out.logits))
                uni = sum(F.cross_entropy(z.float(), y, reduction="none") for z in out.logits)
                losses.append(w_u * uni + w_f * F.cross_entropy(out.fused.float(), y, reduction="none"))
        finally:
            model.train(was)
        return torch.cat(sims), torch.cat(losses)

    def difficulty(self, sim: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """CL: (1 - s~) + l~;  SPL: l~ - s~ (higher = harder)."""
        s, l = min_max(sim), min_max(loss)
        return (1 - s) + l if self.cfg["variant"] == "cl" else l - s

    def score(self, run) -> torch.Tensor:
        sim, loss = self.raw_scores(run.model, run.data, run.train_idx, run.train_cfg["eval_batch_size"])
        d = self.difficulty(sim, loss)
        self.last_scores = {"sim_mean": float(sim.mean()), "loss_mean": float(loss.mean()),
                            "difficulty_mean": float(d.mean())}
        return d

    # --- sampler ------------------------------------------------------------------------------
    def epoch_indices(self, run, perm):
        train, n = run.train_idx, len(run.train_idx)
        if self.cfg["variant"] == "cl":
            if self.order is None:                                  # epoch 0 (official: once)
                d = self.score(run)
                self.order = train[torch.sort(d, stable=True).indices]
            k = admitted_count(n, run.epoch, self.cfg["lambda_0"], self.cfg["t_grow"])
            admit = torch.zeros(self.ctx.n_samples, dtype=torch.bool, device=perm.device)
            admit[self.order[:k].to(perm.device)] = True
            out = perm[admit[perm]]                                 # the admitted, in perm's shuffle
        else:
            w = (1 - self.score(run) + self.cfg["eps"]).float().cpu()
            pos = torch.multinomial(w / w.sum(), n, replacement=False, generator=self._generator(run))
            out = train[pos.to(train.device)]
        del self.admitted[run.epoch:]                               # (a resumed run rewrites none)
        self.admitted.append(len(out) / n)
        return out

    # --- loss ---------------------------------------------------------------------------------
    def loss(self, model, out, y, idx):
        uni = sum(F.cross_entropy(z, y) for z in out.logits)
        total = self.cfg["fused_weight"] * F.cross_entropy(out.fused, y) + self.cfg["unimodal_weight"] * uni
        return StepResult(total, out.fused, out, y)

    # --- reporting ----------------------------------------------------------------------------
    def log(self, writer, step):
        if self.admitted:
            writer.add_scalar("bss/admitted", self.admitted[-1], step)
        for k, v in self.last_scores.items():
            writer.add_scalar(f"bss/{k}", v, step)

    def training_record(self):
        """The curriculum over training: the fractions of the training split the epochs drew."""
        return admitted_summary(self.admitted)

    def state_dict(self):
        return {"gen": None if self.gen is None else self.gen.get_state(),
                "order": None if self.order is None else self.order.clone(),
                "admitted": list(self.admitted), "last_scores": dict(self.last_scores)}

    def load_state_dict(self, state):
        self.gen = None
        if state["gen"] is not None:
            self.gen = torch.Generator()
            self.gen.set_state(state["gen"].cpu())
        self.order = None if state["order"] is None else state["order"].to(self.ctx.device)
        self.admitted = list(state["admitted"])
        self.last_scores = dict(state["last_scores"])
