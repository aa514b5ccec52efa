"""DynCIM (Qian et al., "Dynamic Curriculum for Imbalanced Multimodal Learning", arXiv 2503.06456).

From the paper (abstract and framework figure): a sample-level dynamic curriculum (SDC: per-sample
difficulty from prediction deviation, consistency and stability, sigmoid-projected, combined with
a history weighted by γ, normalised into D_Task), a modality-level dynamic curriculum (MDC: the
Geometric Mean Ratio GMR and the Harmonic Mean Improvement Rate HMIR per modality), a gate giving
one weight g^m per modality with ŷ = Σ_m g^m·z^m and D_Fuse = mean_m g^m, and the joint objective
    min_v Σ_i v_i·(D_Task,i·D_Fuse,i)·L(ŷ_i, y_i) + η(t)·(1 − v_i)².
Everything else is our reconstruction (docs/method.md lists each formula with its origin, its
params.yaml key and the function that computes it, and says where each choice comes from): the
exact signals, the EMA history, the signal weights, GMR/HMIR as running statistics, the label-free
gate inputs and its normalisation across modalities, the modality rebalancing
α·L_fused + (1−α)·Σ_m β_m·L_m, and the pace schedule.

Two implementations of the same objective, chosen by the params key `impl` (the method
catalog's entry, dyncim.methods.catalog, maps it to the class `dyncim.methods.build` makes):
- `fused` (this module, the default): loss and gradients in closed form, built for speed;
- `reference` (dyncim/methods/dyncim_reference.py, a subclass of this one; this module does not
  import it): plain autograd, one function per paper component, written to be read and changed.
  tests/test_dyncim_reference.py checks that the two give the same loss, gradients and state
  step after step, for every switch. Both keep the same per-sample memory and modality
  statistics, so their checkpoints are interchangeable.

All curriculum work is batched tensor work on the training device: per-sample state is indexed by
the data set index, there is no Python loop over samples and no host-device synchronisation.

Hooks (dyncim/methods/base.py says when each fires): setup (the gate and the modality statistics in
model.extra); param_groups (the gate's own group); forward (encoders and heads); loss (the whole
objective and its gradients in closed form; the gradients travel in the StepResult's terms);
backward (hands them to autograd); on_epoch_start (resets the epoch's trace; `self.epoch` drives
the pace); on_epoch_end (the fraction of the epoch's samples the pace admitted, v > 0, kept for the
report through training_record); predict (the gated fusion, label-free); log.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models.multimodal import Output
from .base import Method, StepResult, admitted_summary

EPS = 1e-8


def log_gmr(strength: torch.Tensor) -> torch.Tensor:
    """log GMR_m = log s_m − mean_k log s_k (GMR_m = s_m / geometric mean of s)."""
    logs = strength.clamp_min(EPS).log()
    return logs - logs.sum() * (1 / logs.numel())   # not .mean(): measurably slower in the step


def log_hmir(rates: torch.Tensor, floor: float, clip: float) -> torch.Tensor:
    """log HMIR_m = log(r_m / HM(r)), r clamped to ≥ floor, the result clipped to [−clip, clip]."""
    r = rates.clamp_min(floor)
    hm = r.numel() / (1.0 / r).sum()
    return (r / hm).log().clamp(-clip, clip)


def self_paced_weights(wl: torch.Tensor, lam: float) -> torch.Tensor:
    """Closed-form minimiser of v·wl + η(1−v)² over v ∈ [0,1] for wl ≥ 0: v = clip(1 − wl/(2η), 0, 1)
    = max(2η − wl, 0) / 2η, with 2η the λ-quantile of wl over the batch (the k-th smallest value,
    k = ⌈λ·B⌉, rather than an interpolating quantile). The k-th sample itself gets v = 0, so
    k − 1 = ⌈λ·B⌉ − 1 samples are admitted (v > 0; fewer if values tie), a fraction
    (⌈λB⌉ − 1)/B, just under λ (docs/method.md). (topk + amax: measurably cheaper in the training
    step than kthvalue.)"""
    k = max(1, math.ceil(lam * wl.numel()))
    two_eta = wl.topk(k, largest=False, sorted=False).values.amax().clamp_min_(EPS)
    return (two_eta - wl).clamp_min_(0).div_(two_eta)


# The per-sample memory's columns (`DynCIM.mem`, one row per data set index), by history form. Both
# implementations read and write this layout, and resume checkpoints hold it.
MEMORY_COLUMNS = {
    # deviation at the previous visit (NaN before the first), the history's weight at the next
    # visit (0 before the first visit, then γ), the EMA histories of the 3 signals
    "ema": {"prev_deviation": slice(0, 1), "history_weight": slice(1, 2), "history": slice(2, 5)},
    # deviation at the previous visit, number of visits, mean of D' over the visits, D' at the
    # previous visit
    "hadamard": {"prev_deviation": slice(0, 1), "visits": slice(1, 2), "past_mean": slice(2, 5),
                 "prev_projection": slice(5, 8)},
}


class ModalityStats(nn.Module):
    """MDC running statistics, kept as buffers: saved with the model, frozen at inference."""

    def __init__(self, n_modalities: int, n_classes: int):
        super().__init__()
        M = n_modalities
        self.register_buffer("strength", torch.full((M,), 1.0 / n_classes))
        self.register_buffer("win_sum", torch.zeros(M))
        self.register_buffer("prev_mean", torch.zeros(M))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))
        self.register_buffer("log_hmir", torch.zeros(M))


class Gate(nn.Module):
    """Per sample and modality: label-free features and a one-hot of the modality -> a small MLP
    shared by the modalities -> sigmoid gate g in (0, 1).

    The weights are one flat parameter [W1 ((F + M) x H) | w2 (H) | b2]: the rows of W1 that meet
    the one-hot are the modalities' own first-layer biases. One tensor means one optimiser update
    instead of several, and the training step computes the gate's gradient in closed form
    (`grad`; tests/test_dyncim.py checks it against autograd through `forward`)."""

    N_FEATURES = 5  # confidence, normalised entropy, disagreement with the others; log GMR, log HMIR

    def __init__(self, n_modalities: int, hidden: int):
        super().__init__()
        F_, H, M = self.N_FEATURES, hidden, n_modalities
        self.sizes = ((F_ + M) * H, H, 1)
        self.shapes = ((F_ + M, H), (H,), (1,))
        # nn.Linear's default initialisation, U(±1/sqrt(fan_in)), for weights and biases alike
        self.flat = nn.Parameter(torch.cat([torch.empty((F_ + M) * H).uniform_(-1, 1) / math.sqrt(F_),
                                            torch.empty(H + 1).uniform_(-1, 1) / math.sqrt(H)]))
        self.register_buffer("onehot", torch.eye(M), persistent=False)
        self._views = (None, None)

    def weights(self):
        """W1, w2, b2: views of the flat parameter (with autograd when it is on)."""
        return [t.view(shape) for t, shape in zip(self.flat.split(self.sizes), self.shapes)]

    def cached_weights(self):
        """The same views without autograd, made once: the optimiser updates the parameter in place,
        so they stay current (remade if the parameter moves, e.g. to another device)."""
        ptr = self.flat.data_ptr()
        if self._views[0] != ptr:
            with torch.no_grad():
                self._views = (ptr, self.weights())
        return self._views[1]

    def forward(self, sample_feats: torch.Tensor, modality_feats: torch.Tensor, weights=None):
        """sample_feats: M x B x 3 (per sample), modality_feats: M x 2 (per modality) -> gates g
        (M x B), and the inputs x (MB x (5+M)) and hidden activations h (MB x H) `grad` needs."""
        W1, w2, b2 = self.weights() if weights is None else weights
        M, B, _ = sample_feats.shape
        per_modality = torch.cat([modality_feats, self.onehot], 1)
        x = torch.cat([sample_feats, per_modality[:, None, :].expand(M, B, -1)], -1).view(M * B, -1)
        h = torch.mm(x, W1).relu_()
        return torch.addmv(b2, h, w2).sigmoid_().view(M, B), x, h

    @staticmethod
    def grad(x, h, g, dg, w2):
        """d loss / d flat from d loss / d g (M x B), with the forward's x, h, g and w2, as the
        pieces of the flat parameter (`torch.cat` them)."""
        dpre2 = torch.ops.aten.sigmoid_backward(dg.view(-1), g.view(-1))
        dpre1 = torch.ops.aten.threshold_backward(torch.outer(dpre2, w2), h, 0)   # through the ReLU
        return torch.mm(x.t(), dpre1).view(-1), torch.mv(h.t(), dpre2), dpre2.sum(0, keepdim=True)


def observation_matrices(M: int, device):
    """Constant matrices with which one matmul builds what the step needs from all the rows at once.
    A (K x M, K = 2M+1) maps the logits z^1..z^M to K rows: [z^1..z^M, the mean of the other
    modalities' logits for each m, p^f = Σ_m z^m]. R (K+2M x K) maps the K rows' probabilities to
    themselves followed by the 2M mixtures (p+q)/2 of the two JS pairings: (row m, row M+m) for the
    gate's disagreement and (row m, row 2M) for the SDC consistency. Q (2M x K+2M) maps the rows'
    Σ p·log p to JS = ½Σp·log p + ½Σq·log q − Σm·log m for each pair."""
    eye = torch.eye(M)
    others = (torch.ones(M, M) - eye) / max(M - 1, 1)
    A = torch.cat([eye, others, torch.ones(1, M)])
    K = 2 * M + 1
    pairs = torch.zeros(2 * M, K)
    for m in range(M):
        pairs[m, m] = pairs[m, M + m] = 0.5
        pairs[M + m, m] = pairs[M + m, 2 * M] = 0.5
    R = torch.cat([torch.eye(K), pairs])
    Q = torch.cat([pairs, -torch.eye(2 * M)], 1)
    return A.to(device), R.to(device), Q.to(device)


class DynCIM(Method):
    min_modalities = 2
    fusion = "sum"  # per-modality heads z^m; the fused prediction is the gated sum
    supports_gate_input_grad = False   # the closed-form gradients treat the gate's inputs as constants
    impl = "fused"                     # the params' `impl` this class implements

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if cfg.get("impl", "fused") != self.impl:
            raise ValueError(f"dyncim: impl {cfg['impl']!r} is not {type(self).__name__} (impl: {self.impl}); "
                             f"build the method with dyncim.methods.build, which picks the class")
        if cfg["gate_input_grad"] and not self.supports_gate_input_grad:
            raise ValueError("dyncim: gate_input_grad needs impl: reference (the fused step's "
                             "closed-form gradients treat the gate's inputs as constants)")
        self.signal_on = [cfg["sdc_deviation"], cfg["sdc_consistency"], cfg["sdc_stability"]]
        self.signal_mask = torch.tensor(self.signal_on, dtype=torch.float32, device=ctx.device)
        self.signal_eps = self.signal_mask * 1e-12
        if cfg["sdc"] and not any(self.signal_on):
            raise ValueError("dyncim: sdc is on but every SDC signal is off; turn sdc off instead")
        M, C, N, dev = ctx.n_modalities, ctx.n_classes, ctx.n_samples, ctx.device
        self.use_sdc, self.use_gate = cfg["sdc"], cfg["gate"]
        self.use_gmr = cfg["mdc"] and cfg["gmr"]
        self.use_hmir = cfg["mdc"] and cfg["hmir"]
        self.ema = cfg["history"] == "ema"
        self.alpha, self.gamma, self.rho = cfg["alpha"], cfg["gamma"], cfg["rho"]
        self.A, self.R, self.Q = observation_matrices(M, dev)
        self.eye = torch.eye(C, device=dev)                          # one-hot labels by lookup
        self.zero_m, self.uniform_m = torch.zeros(M, device=dev), torch.full((M,), 1 / M, device=dev)
        self.beta_hmir = cfg["beta_from"] == "gmr_hmir"
        # SDC per-sample memory, indexed by the data set index; columns: MEMORY_COLUMNS. EMA:
        # previous deviation, the history's weight at the next visit (0 before the first visit,
        # then γ) and the history of the 3 signals; Hadamard: previous deviation, visits, running
        # mean of D', previous D'. The previous deviation starts as NaN (no visit yet): the first
        # stability is then 0.
        self.mem = torch.zeros(N, 5 if self.ema else 8, device=dev)
        self.mem[:, 0] = float("nan")
        self._gamma_col = None
        self.loss_ema = torch.zeros(2, device=dev)       # fused, mean unimodal (adaptive α)
        self.win_steps = 0
        self._trace: dict[str, list] = {}
        self.admitted: list[float] = []   # per epoch: the fraction of its samples with v > 0

    # --- set-up -------------------------------------------------------------------------------
    def setup(self, model):
        M = self.ctx.n_modalities
        model.extra["mdc"] = ModalityStats(M, self.ctx.n_classes)
        if self.use_gate:
            model.extra["gate"] = Gate(M, self.cfg["gate_hidden"])

    def param_groups(self, model):
        gate = {id(p) for p in model.extra["gate"].parameters()} if self.use_gate else set()
        groups = [{"params": [p for p in model.parameters() if id(p) not in gate]}]
        if gate:
            # default init, own learning-rate multiplier and no weight decay (a zero-initialised or
            # decayed gate stayed at its start in the prototype)
            groups.append({"params": list(model.extra["gate"].parameters()), "weight_decay": 0.0,
                           "lr_mult": self.cfg["gate_lr_mult"]})
        return groups

    def on_epoch_start(self, run):
        self._trace = {}

    def on_epoch_end(self, run):
        v = self._trace.get("v") or [None]
        frac = 1.0 if v[0] is None else float(torch.cat(v).gt(0).float().mean())   # no pace: all
        del self.admitted[run.epoch:]   # (a resumed run rewrites none)
        self.admitted.append(frac)

    def training_record(self):
        """The self-paced curriculum over training: per epoch, the fraction of the samples whose
        fused loss it admitted (v > 0; the modalities' own losses see every sample)."""
        return admitted_summary(self.admitted)

    # --- modality level -----------------------------------------------------------------------
    def _modality_terms(self, st):
        """log GMR, log HMIR (zeros where switched off) and β/M (the softmax; 1/M with GMR off)
        from the MDC statistics module `st`."""
        lh = st.log_hmir if self.use_hmir else self.zero_m
        if not self.use_gmr:
            return self.zero_m, lh, self.uniform_m
        lg = log_gmr(st.strength)
        return lg, lh, self._beta_share(lg, lh)

    def _beta_share(self, lg, lh):
        """β / M = softmax_m(−ρ·log GMR_m) (or of log GMR + log HMIR with `beta_from: gmr_hmir`)."""
        return torch.softmax((lg + lh if self.beta_hmir else lg) * -self.rho, 0)

    def _update_mdc(self, st, sum_probs_true, sum_losses, batch):
        """EMA of each modality's true-class probability and windowed loss improvement rates,
        from the batch sums of both."""
        mom = self.cfg["strength_momentum"]
        st.strength.mul_(mom).add_(sum_probs_true, alpha=(1 - mom) / batch)
        st.win_sum.add_(sum_losses, alpha=1 / batch)
        self.win_steps += 1  # a Python counter: no device sync
        if self.win_steps >= self.cfg["hmir_window"]:
            mean = st.win_sum / self.win_steps
            rate = (st.prev_mean - mean) / st.prev_mean.clamp_min(EPS)
            new = log_hmir(rate, self.cfg["hmir_floor"], self.cfg["hmir_clip"])
            st.log_hmir.copy_(torch.where(st.has_prev, new, st.log_hmir))
            st.prev_mean.copy_(mean)
            st.has_prev.fill_(True)
            st.win_sum.zero_()
            self.win_steps = 0

    # --- observations (no gradient) -----------------------------------------------------------
    # The step works on "class-major" tensors (classes before samples: M x C x B), where the
    # log-softmax over classes is a fast strided kernel and per-sample weights broadcast.
    def observe(self, zc, C: int, B: int):
        """From the logits in class-major layout zc (M x C·B): log-probabilities `lp` and
        probabilities `prob` of the K = 2M+1 rows [z^m, mean of the others' logits for each m, p^f]
        (K x C x B), Σp·log p per row (`plogp`, K x B), and the divergences
        JS(σ(z^m) ‖ σ(others' mean)) (`dis`, the gate's input) and JS(σ(z^m) ‖ σ(p^f)) (`cons`,
        consistency), each M x B. Three matmuls with the constant matrices of
        `observation_matrices` and one log-softmax cover all of them."""
        M, K = zc.shape[0], 2 * zc.shape[0] + 1
        lp = torch.log_softmax(torch.mm(self.A, zc).view(K, C, B), 1)
        prob = lp.exp()
        both = torch.mm(self.R, prob.view(K, -1)).view(-1, C, B)             # the rows, then the mixtures
        xlogx = both.clamp_min(1e-30).log_().mul_(both).sum(1)                # Σ x·log x, 0·log 0 = 0
        js = torch.mm(self.Q, xlogx)
        return lp, prob, xlogx[:K], js[:M], js[M:]

    # --- gate ---------------------------------------------------------------------------------
    @staticmethod
    def gate_features(prob, plogp, dis, lg, lh):
        """The gate's label-free inputs: per sample and modality (M x B x 3) confidence, normalised
        entropy and disagreement with the other modalities; per modality (M x 2) log GMR, log HMIR."""
        M = dis.shape[0]
        return (torch.stack([prob[:M].amax(1), plogp[:M] * (-1 / math.log(prob.shape[1])), dis], -1),
                torch.stack([lg, lh], 1))

    @torch.no_grad()
    def gates(self, model, z, lg, lh):
        """Raw gates g (B x M) from label-free inputs (inference and diagnostics); z: M x B x C."""
        M, B, C = z.shape
        if not self.use_gate:
            return torch.ones(B, M, device=z.device)
        _, prob, plogp, dis, _ = self.observe(z.transpose(1, 2).reshape(M, -1), C, B)
        return model.extra["gate"](*self.gate_features(prob, plogp, dis, lg, lh))[0].t()

    @staticmethod
    def fuse(z, g):
        """ŷ = Σ_m ĝ^m z^m with ĝ = M·g / Σ_k g^k (normalised across modalities); g is B x M."""
        ghat = g * (g.shape[1] / g.sum(1, keepdim=True))
        return (ghat.t()[..., None] * z).sum(0)

    # --- sample level -------------------------------------------------------------------------
    def _gamma_column(self, B: int):
        """A B x 1 tensor of γ, the memory's history weight after a visit (made once, sliced)."""
        if self._gamma_col is None or self._gamma_col.shape[0] < B:
            self._gamma_col = torch.full((max(B, 256), 1), self.gamma, device=self.mem.device)
        return self._gamma_col[:B]

    def signals(self, idx, dev, cons):
        """Raw SDC signals (B x 3: deviation, consistency, stability) and the samples' memory rows.
        dev: the deviation CE(p^f, y) (B); cons: JS(σ(z^m) ‖ σ(p^f)) (M x B). The consistency is
        the sum over modalities, not the mean: the batch standardisation that follows removes the
        factor 1/M."""
        row = self.mem.index_select(0, idx)
        s = (dev - row[:, 0]).abs_().nan_to_num_(0.0)                     # stability, 0 on a first visit
        return torch.stack([dev, cons.sum(0), s], 1), row

    def _difficulty(self, idx, dev, cons):
        """D_Task (batch mean 1) from the three signals, with per-sample history: one gather and
        one scatter of the samples' memory rows."""
        raw, row = self.signals(idx, dev, cons)
        # D' in (0, 1): each signal standardised over the batch, then the sigmoid
        sd0, mu0 = torch.std_mean(raw, 0, unbiased=False)
        proj = (raw - mu0).div_(sd0.add_(1e-6)).sigmoid_()
        if self.ema:   # e ← γ·e + (1−γ)·D' (e = D' on the first visit: the weight is 0 then)
            e = torch.lerp(proj, row[:, 2:5], row[:, 1:2])
            new = torch.cat([dev[:, None], self._gamma_column(len(idx)), e], 1)
        else:  # hadamard: (mean of D' at t and t−1) ⊙ (mean of D' over the earlier visits)
            n = row[:, 1:2]
            seen = n.clamp(max=1)
            prev = torch.lerp(proj, row[:, 5:8], seen)
            past = torch.lerp(proj, row[:, 2:5], seen)
            e = 0.5 * (proj + prev) * past
            new = torch.cat([dev[:, None], n + 1, (past * n + proj) / (n + 1), proj], 1)
        self.mem.index_copy_(0, idx, new)
        # ω_j ∝ batch std of e^j over the signals that are on; D = e·ω / Σω, and D / mean(D)
        # = (e·ω) / (mean(e)·ω), so ω needs no normalisation (the tiny term: no signal varies)
        sd, mu = torch.std_mean(e, 0, unbiased=False)
        w = torch.addcmul(self.signal_eps, sd, self.signal_mask)
        return torch.mv(e, w).div_(torch.dot(mu, w))

    def _pace(self) -> float | None:
        """λ(t): linear from pace_start to 1 over pace_epochs; None once the pace is over (v = 1)."""
        if not (self.use_sdc and self.cfg["self_paced"]) or self.epoch >= self.cfg["pace_epochs"]:
            return None
        lam0 = self.cfg["pace_start"]
        return lam0 + (1 - lam0) * self.epoch / self.cfg["pace_epochs"]

    # --- the loss -----------------------------------------------------------------------------
    def forward(self, model, xs, idx):
        """The encoders and the modalities' heads; the loss builds its own fusions (no plain sum)."""
        feats = model.encode(xs)
        return Output(feats, [head(h) for head, h in zip(model.fusion.heads, feats)], None)

    def loss(self, model, out, y, idx):
        """total = α·(1/B)Σ_i v_i·D_Task,i·D_Fuse,i·CE(ŷ_i, y_i) + (1−α)·Σ_m β_m·mean_i CE(z_i^m, y_i)
        (docs/method.md). Gradients flow to the logits z and, through ĝ in ŷ, to the gate; v, D_Task,
        D_Fuse, α and β are weights without gradient.

        The loss and its gradients with respect to the logits and the gate's parameter are computed
        together, in closed form and in inference mode (`_objective`); `backward` hands them to
        autograd. On a CPU with small encoders a step's cost is per-op overhead, and the loss, the
        gate and their autograd backward were ~250 small ops. tests/test_dyncim_reference.py checks
        value and gradients against the plain-autograd implementation (`impl: reference`)."""
        with torch.inference_mode():
            value, yhat, grads = self._objective(model, out.logits, y, idx)
        return StepResult(value, yhat, out, y, terms=grads)

    def backward(self, model, res):
        grad_z, grad_gate = res.terms
        torch.autograd.backward(res.out.logits, list(grad_z.unbind(0)))
        if grad_gate is not None:
            flat = model.extra["gate"].flat
            grad = torch.cat(grad_gate)         # outside inference mode: a normal tensor
            if flat.grad is None:
                flat.grad = grad
            else:
                flat.grad.add_(grad)

    def _objective(self, model, logits, y, idx):
        """The loss, the fused prediction (B x C) and the loss's gradients with respect to the
        logits (M x B x C) and the gate's flat parameter, in closed form (run in inference mode)."""
        M, (B, C) = len(logits), logits[0].shape
        st = model.extra["mdc"]
        lg, lh, share = self._modality_terms(st)                          # share = β / M
        Y = self.eye.index_select(1, y)                                   # one-hot labels, C x B
        zc = torch.stack([z.t() for z in logits])                         # class-major, M x C x B
        lp, prob, plogp, dis, cons = self.observe(zc.view(M, -1), C, B)
        nll = (lp * Y).sum(1).neg_()                                      # −log σ(row)_y, (2M+1) x B
        nll_sum = nll[:M].sum(1)                                          # B·L_m
        g = d_task = v = None
        if self.use_gate:
            gate = model.extra["gate"]
            W1, w2, b2 = gate.cached_weights()
            g, x, h = gate(*self.gate_features(prob, plogp, dis, lg, lh), (W1, w2, b2))   # M x B
            d_fuse = g.sum(0).mul_(1 / M)                                 # D_Fuse = mean_m g
            ghat = (g / d_fuse)[:, None, :]                               # normalised: Σ_m ĝ = M
            yhat = (ghat * zc).sum(0)                                     # C x B
            lq = torch.log_softmax(yhat, 0)
            ell = (lq * Y).sum(0).neg_()                                  # CE(ŷ_i, y_i)
            w = d_fuse
        else:                                                             # ŷ = p^f: its row is there
            yhat, lq, ell, w = None, lp[2 * M], nll[2 * M], None
        if self.use_sdc:
            d_task = self._difficulty(idx, nll[2 * M], cons)              # deviation: CE(p^f, y)
            w = d_task if w is None else w * d_task
        lam = self._pace()
        if lam is not None:
            v = self_paced_weights(w * ell, lam)
            w = w * v                                                     # the fused loss's per-sample weight
        alpha = self._alpha(w, ell, nll_sum)
        cf = w * (alpha / B) if w is not None else alpha / B              # d total / d ell_i
        bu = share * (M * (1 - alpha) / B)                                # d total / d nll_sum_m = (1−α)·β_m / B
        fused_term = torch.dot(cf, ell) if w is not None else ell.sum() * cf
        # gradients (class-major): d total / d ŷ_i = cf_i·(σ(ŷ_i) − y_i); d total / d z^m_i adds
        # (1−α)·β_m/B·(σ(z^m_i) − y_i), and through ĝ, d/dĝ^m_i = <d/dŷ_i, z^m_i>, then the normalisation
        dy = lq.exp().sub_(Y).mul_(cf)                                    # C x B
        probm = prob[:M]
        gz = (probm - Y).mul_(bu.view(M, 1, 1))
        grad_gate = None
        if g is not None:
            gz.addcmul_(ghat, dy)
            dghat = (zc * dy).sum(1)                                      # M x B
            dg = torch.sub(dghat, (dghat * ghat[:, 0]).sum(0), alpha=1 / M).div_(d_fuse)
            if lam_rel := self.cfg["gate_reliability"]:
                # λ·mean_{m,i} (g − σ(z^m)_y)², the target detached: a gradient for the gate only
                diff = g - (probm * Y).sum(1)
                fused_term = fused_term + lam_rel * diff.square().mean()
                dg.add_(diff, alpha=2 * lam_rel / diff.numel())
            grad_gate = gate.grad(x, h, g, dg, w2)
        else:
            gz.add_(dy)
        self._update_mdc(st, (probm * Y).sum((1, 2)), nll_sum, B)   # after use: the step saw the earlier statistics
        self._record(g, d_task, v, share, lg, lh, alpha, idx)
        value = torch.add(fused_term, torch.dot(bu, nll_sum))
        return value, (yhat if yhat is not None else lq).t(), (gz.transpose(1, 2), grad_gate)

    def betas(self, lg, lh):
        """β_m = M·softmax_m(−ρ·log GMR_m) (or of log GMR + log HMIR): lagging modalities get more."""
        if not self.use_gmr:
            return torch.ones_like(lg)
        return lg.shape[0] * self._beta_share(lg, lh)

    def _alpha(self, w, ell, nll_sum):
        """α: the constant, or (adaptive_alpha) L̄_fused / (L̄_fused + mean_m L̄_m) from running means."""
        if not self.cfg["adaptive_alpha"]:
            return self.alpha
        l_fused = (w @ ell if w is not None else ell.sum()) / ell.shape[0]
        self.loss_ema.mul_(0.9).add_(0.1 * torch.stack([l_fused, nll_sum.mean() / ell.shape[0]]))
        return self.loss_ema[0] / self.loss_ema.sum().clamp_min(EPS)

    def predict(self, model, out):
        z = torch.stack(out.logits)
        lg, lh, _ = self._modality_terms(model.extra["mdc"])
        return self.fuse(z, self.gates(model, z, lg, lh))

    # --- diagnostics --------------------------------------------------------------------------
    def _record(self, g, d_task, v, beta, lg, lh, alpha, idx):
        """Keep the step's curriculum tensors (no copies, no host sync) for the epoch's log; None
        where a switch is off (g: M x B)."""
        t = self._trace
        for key, value in (("gate", g), ("d_task", d_task), ("v", v), ("idx", idx)):
            t.setdefault(key, []).append(value)
        t["beta"], t["log_gmr"], t["log_hmir"], t["alpha"] = beta, lg, lh, alpha   # beta: β / M

    def log(self, writer, epoch):
        t = self._trace
        if not t:
            return
        names = self.ctx.names
        n, M = sum(len(i) for i in t["idx"]), len(names)
        # None where the switch is off: the value that switch means (g = 1, D_Task = 1, v = 1)
        gate = (torch.cat(t["gate"], 1).t() if t["gate"][0] is not None else torch.ones(n, M)).float().cpu()
        d_task, v = (torch.cat(t[k]).float().cpu() if t[k][0] is not None else torch.ones(n) for k in ("d_task", "v"))
        for m, name in enumerate(names):
            writer.add_scalar(f"dyncim/gmr/{name}", float(t["log_gmr"][m].exp()), epoch)
            writer.add_scalar(f"dyncim/hmir/{name}", float(t["log_hmir"][m].exp()), epoch)
            writer.add_scalar(f"dyncim/beta/{name}", float(t["beta"][m]) * M, epoch)
            writer.add_scalar(f"dyncim/gate_mean/{name}", float(gate[:, m].mean()), epoch)
        writer.add_scalar("dyncim/alpha", float(t["alpha"]), epoch)
        writer.add_scalar("dyncim/pace_admitted", float((v > 0).float().mean()), epoch)
        writer.add_histogram("dyncim/d_task", d_task, epoch)
        writer.add_histogram("dyncim/v", v, epoch)
        writer.add_histogram("dyncim/gate", gate, epoch)
        if self.ctx.corrupted is not None:
            codes = self.ctx.corrupted[torch.cat(t["idx"])].cpu()
            for key, value in gate_by_corruption(gate, codes, names).items():
                writer.add_scalar(f"dyncim/gate_by_corruption/{key}", value, epoch)

    @torch.no_grad()
    def diagnostics(self, model, data, index, batch_size: int | None = None) -> dict:
        """Test-split figures for the report: GMR, HMIR, β, mean gates (by corruption if known).
        `batch_size`: the forward pass in batches of that size (None: all of `index` at once)."""
        z = stacked_logits(model, data, index, batch_size)
        lg, lh, _ = self._modality_terms(model.extra["mdc"])
        beta = self.betas(lg, lh)
        g = self.gates(model, z, lg, lh).cpu()
        res = {}
        for m, name in enumerate(data.names):
            res[f"gmr_{name}"] = float(log_gmr(model.extra["mdc"].strength)[m].exp())
            res[f"hmir_{name}"] = float(model.extra["mdc"].log_hmir[m].exp())
            res[f"beta_{name}"] = float(beta[m])
            res[f"gate_{name}"] = float(g[:, m].mean())
        if data.corrupted is not None:
            res.update(gate_by_corruption(g, data.corrupted[index].cpu(), data.names))
        return res

    # --- resume -------------------------------------------------------------------------------
    TENSORS = ("mem", "loss_ema")

    def state_dict(self):
        return {"win_steps": self.win_steps, "admitted": list(self.admitted),
                **{k: getattr(self, k) for k in self.TENSORS}}

    def load_state_dict(self, state):
        self.win_steps = state["win_steps"]
        self.admitted = list(state.get("admitted", []))
        for k in self.TENSORS:
            getattr(self, k).copy_(state[k])


def stacked_logits(model, data, index, batch_size: int | None = None) -> torch.Tensor:
    """(M, n, C) every modality's logits of the samples `index` (evaluation inputs)."""
    step = len(index) if batch_size is None else batch_size
    return torch.cat([torch.stack(model(data.batch(index[s:s + step])).logits)
                      for s in range(0, len(index), max(step, 1))], 1)


def gate_by_corruption(gate, codes, names) -> dict:
    """Mean gate of modality m on samples whose modality c is clean vs corrupted (c corrupted somewhere)."""
    from ..data.sources.synthetic import CORRUPTION_CODES
    res = {}
    for c, cname in enumerate(names):
        if not (codes[:, c] != 0).any():
            continue
        for kind, code in {"clean": 0, **CORRUPTION_CODES}.items():
            mask = codes[:, c] == code
            if not mask.any():
                continue
            for m, name in enumerate(names):
                key = f"gate_{name}_{kind}" if m == c else f"gate_{name}_when_{cname}_{kind}"
                res[key] = float(gate[mask, m].mean())
    return res
