"""Diagnosing & Re-learning: soft re-initialisation of each encoder from its diagnosed learning state.

Wei, Li, Feng and Hu, "Diagnosing and Re-learning for Balanced Multimodal Learning", ECCV 2024
(official code: github.com/GeWu-Lab/Diagnosing_Relearning_ECCV2024, `code/ours.py`).

Mechanism. Training is plain joint training (one cross-entropy on the fused prediction of a
concat head; the official `ours.py` adds no unimodal loss: its `head_audio` / `head_video` are
never used). After the epochs T, 2T, ..., reinit_times T (0-based epoch counter, epoch 0
excluded), with the period T = reinit_every when set, else T = epochs // (reinit_times + 1), so
that the reinit_times re-initialisations happen whatever the run's length (see the schedule
below):
  1. diagnose: for every modality m, the encoder's features h^m of the training set and of the
     validation set are each min-max scaled to [-1, 1] per feature (fitted on that set), clustered
     by k-means into n_classes clusters, and scored by clustering purity P (the fraction of samples
     whose label is their cluster's majority label);
  2. alpha_m = tanh(move_lambda * |P_train^m - P_val^m|): a modality whose representation
     separates the training set much better than unseen data is over-trained (large alpha), one
     that has learned little shows no gap (small alpha);
  3. re-learn: every parameter of encoder m moves alpha_m of the way back to its initial value,
     theta <- (1 - alpha_m) theta + alpha_m theta_init (the fusion head is left alone, as in the
     official code); the initial values are stored by `setup` and kept in the method's state.
Any number of modalities: the diagnosis and the re-initialisation are per modality.

Schedule. The official loop re-initialises after every 0-based epoch with `epoch % reinit_epoch
== 0 and epoch > 0` while `flag_reinit <= reinit_num`, with a fixed period: its run (ours.sh:
90 epochs, reinit_epoch 20, reinit_num 3) re-initialises after epochs 20, 40 and 60 (80 is past
reinit_num), but the same period in a 40-epoch run gives only one re-initialisation (after epoch
20) and in 60 epochs two. By default (reinit_every null) the period follows the run: T = epochs
// (reinit_times + 1): the re-initialisations come T epochs apart, the last followed by
T - 1 + epochs mod (reinit_times + 1) more epochs, so every configured re-initialisation
happens: 40 epochs -> 10, 20, 30; 60 -> 15, 30, 45; 90 -> 22, 44, 66 (the official run, with
its fixed period: 20, 40, 60, followed by 29 epochs). A run shorter than reinit_times + 1 epochs
gets T = 1 and only epochs - 1 re-initialisations. An explicit reinit_every is the official
fixed period (reinit_every 20 with 90 epochs is the official run exactly).

Deviations from the official code (also in docs/baselines.md):
- k-means: the official code calls scikit-learn's KMeans(n_clusters, random_state=0) with its
  defaults (k-means++ init, max_iter 300, tol 1e-4; n_init 10 before scikit-learn 1.4, one run
  after). We run our own k-means in torch on the training device (no scikit-learn dependency,
  no host copy): k-means++ seeding (not scikit-learn's greedy variant), kmeans_restarts restarts
  run as one batched computation, Lloyd iterations with scikit-learn's stopping rule (centre shift
  <= tol * mean feature variance), the lowest-inertia restart kept; an empty cluster keeps its old
  centre (scikit-learn moves it to a far point). Purities match scikit-learn's up to the
  clustering's own randomness; the seed is fixed (kmeans_seed), as the official random_state=0.
  kmeans_restarts defaults to 10 (scikit-learn's n_init up to 1.3; from 1.4 its default is one
  run, and the official repository pins no version).
- Model selection: the official script keeps the best epoch on the test set and uses its own
  validation list only for the diagnosis; our shared loop selects on the validation split, which
  the diagnosis also reads (its labels enter the purity), so validation is not untouched by
  training decisions: that is the method as published (it needs held-out data for the gap).
- Only encoder parameters move back (the official rule: names under audio_net / visual_net;
  BalanceBenchmark's port matches every name containing the modality, heads included). The
  optimiser's state (momentum) is kept across a re-initialisation, as in the official code
  (it assigns `param.data`); stated because one might expect a reset.
- Optimiser, learning rate, epochs and schedule come from the shared training configuration
  (official CREMA-D run: SGD lr 2e-3, momentum 0.9, weight decay 1e-4, batch 64, 90 epochs and
  no learning-rate schedule: `ours.py` parses lr_decay_step but never builds a scheduler).
- Re-initialisation period: derived from the run's length by default (the schedule above); the
  official code fixes it (--reinit_epoch 20 for its 90 epochs), which shorter runs cut short.

Hooks (dyncim/methods/base.py says when each fires): setup (keeps the initial encoder weights);
on_epoch_end (diagnosis by k-means purity on train and val, run.evaluate, then the partial re-
initialisation); log.
"""
from __future__ import annotations

import torch

from .base import Method


def minmax_scale(x: torch.Tensor) -> torch.Tensor:
    """Each feature to [-1, 1] over the rows of x (scikit-learn MinMaxScaler((-1, 1)); a constant
    feature becomes -1, as there)."""
    lo, hi = x.min(0).values, x.max(0).values
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    return (x - lo) / span * 2 - 1


def _sq_dist(x: torch.Tensor, xx: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(R, N, k) squared distances of the rows of x (N, d) to centres c (R, k, d)."""
    d = xx[None, :, None] - 2 * torch.einsum("nd,rkd->rnk", x, c) + (c * c).sum(-1)[:, None, :]
    return d.clamp_min(0)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, restarts: int = 10, max_iter: int = 300, tol: float = 1e-4,
           seed: int = 0) -> torch.Tensor:
    """Cluster labels (N,) of the rows of x: k-means++ seeding, Lloyd iterations, best of `restarts`
    runs by inertia; the runs are batched (no Python loop over samples)."""
    x = x.float()
    n = x.shape[0]
    k = min(k, n)
    g = torch.Generator(device=x.device).manual_seed(seed)
    xx = (x * x).sum(1)
    first = torch.randint(n, (restarts,), generator=g, device=x.device)
    centres = x[first][:, None, :]                                  # (R, 1, d)
    d2 = _sq_dist(x, xx, centres)[..., 0]                           # (R, N)
    for _ in range(1, k):                                           # k-means++: next centre ~ D^2
        w = torch.where(d2.sum(1, keepdim=True) > 0, d2, torch.ones_like(d2))
        c = x[torch.multinomial(w, 1, generator=g)[:, 0]]           # (R, d)
        centres = torch.cat([centres, c[:, None, :]], 1)
        d2 = torch.minimum(d2, _sq_dist(x, xx, c[:, None, :])[..., 0])
    threshold = tol * x.var(0, unbiased=False).mean()
    for _ in range(max_iter):
        onehot = torch.nn.functional.one_hot(_sq_dist(x, xx, centres).argmin(-1), k).to(x.dtype)
        counts = onehot.sum(1)[..., None]                           # (R, k, 1)
        new = torch.where(counts > 0, onehot.transpose(1, 2) @ x / counts.clamp_min(1), centres)
        shift = ((new - centres) ** 2).sum((1, 2))
        centres = new
        if bool((shift <= threshold).all()):                        # one sync per iteration, rare calls
            break
    mind, labels = _sq_dist(x, xx, centres).min(-1)
    return labels[mind.sum(1).argmin()]


def purity(clusters: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Fraction of samples whose label is the majority label of their cluster (0-dim tensor);
    cluster ids must be < n_classes."""
    table = torch.bincount(clusters * n_classes + y, minlength=n_classes * n_classes)
    table = table.view(-1, n_classes)            # clusters x classes (k <= n_classes clusters)
    return table.max(1).values.sum() / y.numel()


def separability(feats: torch.Tensor, y: torch.Tensor, n_classes: int, restarts: int = 10,
                 max_iter: int = 300, seed: int = 0) -> torch.Tensor:
    """Purity of the k-means clustering (n_classes clusters) of min-max scaled features."""
    return purity(kmeans(minmax_scale(feats), n_classes, restarts, max_iter, seed=seed), y, n_classes)


def diagnose(train_feats, train_y, val_feats, val_y, n_classes: int, move_lambda: float,
             restarts: int = 10, max_iter: int = 300, seed: int = 0):
    """Per modality (lists of features): (P_train (M,), P_val (M,), alpha (M,)) with
    alpha = tanh(move_lambda * |P_train - P_val|)."""
    p_tr = torch.stack([separability(f, train_y, n_classes, restarts, max_iter, seed) for f in train_feats])
    p_va = torch.stack([separability(f, val_y, n_classes, restarts, max_iter, seed) for f in val_feats])
    return p_tr, p_va, torch.tanh(move_lambda * (p_tr - p_va).abs())


class Relearning(Method):
    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        every = cfg.get("reinit_every")
        if every is not None and every < 1:
            raise ValueError("relearning: reinit_every must be >= 1 (or null: from the run's length)")
        # the re-initialisation period T: explicit, or the run split into reinit_times + 1 stretches
        self.period = every if every is not None else max(1, ctx.epochs // (cfg["reinit_times"] + 1))
        self.init: list[list[torch.Tensor]] = []
        self.last: dict | None = None   # the latest diagnosis: epoch, purities, alphas (floats)

    def setup(self, model):
        self.init = [[p.detach().clone() for p in enc.parameters()] for enc in model.encoders]

    def due(self, epoch: int) -> bool:
        """Whether to re-initialise after the 0-based `epoch`: T, 2T, ..., reinit_times T."""
        t = self.period
        return epoch > 0 and epoch % t == 0 and epoch // t <= self.cfg["reinit_times"]

    @torch.no_grad()
    def reinit(self, model, alpha: torch.Tensor) -> None:
        """theta <- (1 - alpha_m) theta + alpha_m theta_init for every parameter of encoder m."""
        for m, enc in enumerate(model.encoders):
            a = alpha[m].to(device=next(enc.parameters()).device)
            for p, p0 in zip(enc.parameters(), self.init[m]):
                p.mul_(1 - a).add_(a * p0.to(p.device, p.dtype))

    def on_epoch_end(self, run):
        if not self.due(run.epoch):
            return
        data = run.data
        _, _, f_tr = run.evaluate(run.train_idx)
        _, _, f_va = run.evaluate(run.val_idx)
        cfg = self.cfg
        p_tr, p_va, alpha = diagnose(f_tr, data.labels[run.train_idx], f_va, data.labels[run.val_idx],
                                     data.n_classes, cfg["move_lambda"], cfg["kmeans_restarts"],
                                     cfg["kmeans_iters"], cfg["kmeans_seed"])
        self.reinit(run.model, alpha)
        self.last = {"epoch": run.epoch, "purity_train": p_tr.tolist(), "purity_val": p_va.tolist(),
                     "alpha": alpha.tolist()}

    def log(self, writer, epoch):
        if self.last is None or self.last["epoch"] + 1 != epoch:   # `epoch` here is 1-based
            return
        for m, name in enumerate(self.ctx.names):
            for key in ("purity_train", "purity_val", "alpha"):
                writer.add_scalar(f"relearning/{key}_{name}", self.last[key][m], epoch)

    def state_dict(self):
        return {"init": self.init, "last": self.last}

    def load_state_dict(self, state):
        self.init, self.last = state["init"], state["last"]
