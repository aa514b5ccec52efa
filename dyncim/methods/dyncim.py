"""DynCIM (Qian et al., "Dynamic Curriculum for Imbalanced Multimodal Learning", arXiv 2503.06456).

From the paper (abstract and framework figure): a sample-level dynamic curriculum (SDC: per-sample
difficulty from prediction deviation, consistency and stability, sigmoid-projected, combined with
a history weighted by γ, normalised into D_Task), a modality-level dynamic curriculum (MDC: the
Geometric Mean Ratio GMR and the Harmonic Mean Improvement Rate HMIR per modality), a gate giving
one weight g^m per modality with ŷ = Σ_m g^m·z^m and D_Fuse = mean_m g^m, and the joint objective
    min_v Σ_i v_i·(D_Task,i·D_Fuse,i)·L(ŷ_i, y_i) + η(t)·(1 − v_i)².
Everything else is our reconstruction (../shared/design/dyncim-method.md; docs/method.md lists
each formula with its origin and its params.yaml key): the exact signals, the EMA history, the
signal weights, GMR/HMIR as running statistics, the label-free gate inputs and its normalisation
across modalities, the modality rebalancing α·L_fused + (1−α)·Σ_m β_m·L_m, and the pace schedule.

All curriculum work is batched tensor work on the training device: per-sample state is indexed by
the data set index, there is no Python loop over samples and no host-device synchronisation.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method

EPS = 1e-8


def js_divergence(logp: torch.Tensor, logq: torch.Tensor, p=None, q=None) -> torch.Tensor:
    """Jensen-Shannon divergence between distributions given as log-probabilities (last dim);
    p, q (the probabilities) may be passed when the caller has them already."""
    p = logp.exp() if p is None else p
    q = logq.exp() if q is None else q
    logm = torch.log((p + q) / 2 + EPS)
    return 0.5 * ((p * (logp - logm)).sum(-1) + (q * (logq - logm)).sum(-1))


def log_gmr(strength: torch.Tensor) -> torch.Tensor:
    """log GMR_m = log s_m − mean_k log s_k (GMR_m = s_m / geometric mean of s)."""
    logs = strength.clamp_min(EPS).log()
    return logs - logs.mean()


def log_hmir(rates: torch.Tensor, floor: float, clip: float) -> torch.Tensor:
    """log HMIR_m = log(r_m / HM(r)), r clamped to ≥ floor, the result clipped to [−clip, clip]."""
    r = rates.clamp_min(floor)
    hm = r.numel() / (1.0 / r).sum()
    return (r / hm).log().clamp(-clip, clip)


def self_paced_weights(wl: torch.Tensor, lam: float) -> torch.Tensor:
    """Closed-form minimiser of v·wl + η(1−v)² over v ∈ [0,1]: v = clip(1 − wl/(2η), 0, 1), with
    2η the λ-quantile of wl over the batch (the k-th smallest value, k = ⌈λ·B⌉: one kthvalue call
    instead of an interpolating quantile), so about a fraction λ of the samples is admitted."""
    k = max(1, math.ceil(lam * wl.numel()))
    two_eta = wl.kthvalue(k).values.clamp_min(EPS)
    return (1 - wl / two_eta).clamp(0, 1)


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
    """Per sample and modality: label-free features -> small MLP shared by the modalities ->
    sigmoid gate. The modality's identity enters as a learned bias of the first layer (the same
    function as a one-hot input, without building one)."""

    N_FEATURES = 5  # log GMR, log HMIR, confidence, normalised entropy, disagreement with the others

    def __init__(self, n_modalities: int, hidden: int):
        super().__init__()
        self.inp = nn.Linear(self.N_FEATURES, hidden)
        self.modality = nn.Parameter(torch.empty(n_modalities, hidden).uniform_(-1, 1) / math.sqrt(self.N_FEATURES + n_modalities))
        self.out = nn.Linear(hidden, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # feats: M x B x N_FEATURES
        h = torch.relu(self.inp(feats) + self.modality[:, None, :])
        return torch.sigmoid(self.out(h).squeeze(-1)).t()      # B x M, in (0, 1)


class DynCIM(Method):
    fusion = "sum"  # per-modality heads z^m; the fused prediction is the gated sum

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.signal_on = [cfg["sdc_deviation"], cfg["sdc_consistency"], cfg["sdc_stability"]]
        self.signal_mask = torch.tensor(self.signal_on, dtype=torch.float32, device=ctx.device)
        if cfg["sdc"] and not any(self.signal_on):
            raise ValueError("dyncim: sdc is on but every SDC signal is off; turn sdc off instead")
        if ctx.n_modalities < 2:
            raise ValueError("dyncim: needs at least two modalities")
        self.use_gmr = cfg["mdc"] and cfg["gmr"]
        self.use_hmir = cfg["mdc"] and cfg["hmir"]
        N, dev = ctx.n_samples, ctx.device
        # SDC per-sample memory, indexed by the data set index: previous deviation, visits,
        # history of the three signals (EMA, or their running mean for the Hadamard form), and
        # for the Hadamard form D' at the previous visit
        self.mem = torch.zeros(N, 5 if cfg["history"] == "ema" else 8, device=dev)
        self.loss_ema = torch.zeros(2, device=dev)       # fused, mean unimodal (adaptive α)
        self.epoch = 0
        self.win_steps = 0
        self._trace: dict[str, list] = {}

    # --- set-up -------------------------------------------------------------------------------
    def setup(self, model):
        M = self.ctx.n_modalities
        self._model = model  # the loss needs the gate and the modality statistics
        model.extra["mdc"] = ModalityStats(M, self.ctx.n_classes)
        if self.cfg["gate"]:
            model.extra["gate"] = Gate(M, self.cfg["gate_hidden"])

    def param_groups(self, model):
        gate = set(id(p) for p in model.extra["gate"].parameters()) if self.cfg["gate"] else set()
        groups = [{"params": [p for p in model.parameters() if id(p) not in gate]}]
        if gate:
            # default init, own learning-rate multiplier and no weight decay (a zero-initialised or
            # decayed gate stayed at its start in the prototype)
            groups.append({"params": list(model.extra["gate"].parameters()), "weight_decay": 0.0,
                           "lr_mult": self.cfg["gate_lr_mult"]})
        return groups

    def on_epoch_start(self, epoch, trainer):
        self.epoch = epoch
        self._trace = {}

    # --- modality level -----------------------------------------------------------------------
    def _modality_terms(self, model):
        st = model.extra["mdc"]
        lg = log_gmr(st.strength) if self.use_gmr else torch.zeros_like(st.strength)
        lh = st.log_hmir if self.use_hmir else torch.zeros_like(st.strength)
        return st, lg, lh

    @torch.no_grad()
    def _update_mdc(self, st, probs_true, uni_losses):
        """EMA of each modality's true-class probability; windowed loss improvement rates."""
        mom = self.cfg["strength_momentum"]
        st.strength.mul_(mom).add_((1 - mom) * probs_true)
        st.win_sum.add_(uni_losses)
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

    # --- gate ---------------------------------------------------------------------------------
    def gates(self, model, logp, z, lg, lh, p=None):
        """Raw gates g (B x M) from label-free inputs; ones when the gate is off."""
        B, M = z.shape[1], z.shape[0]
        if not self.cfg["gate"]:
            return torch.ones(B, M, device=z.device)
        with torch.no_grad():  # the gate's inputs are observations, not paths for gradients
            C = z.shape[-1]
            logp = logp.detach()
            p = logp.exp() if p is None else p
            conf = p.amax(-1)                                            # M x B
            ent = (p * logp).sum(-1) * (-1 / math.log(C))
            others = (z.sum(0, keepdim=True) - z) * (1 / (M - 1))       # mean logits of the others
            dis = js_divergence(logp, F.log_softmax(others.detach(), -1), p=p)
            feats = torch.stack([lg[:, None].expand(M, B), lh[:, None].expand(M, B), conf, ent, dis], -1)
        return model.extra["gate"](feats)                               # B x M

    @staticmethod
    def fuse(z, g):
        """ŷ = Σ_m ĝ^m z^m with ĝ = M·g / Σ_k g^k (normalised across modalities)."""
        ghat = g * (g.shape[1] / g.sum(1, keepdim=True))
        return (ghat.t()[..., None] * z).sum(0)

    # --- sample level -------------------------------------------------------------------------
    @torch.no_grad()
    def signals(self, idx, pf, logp, p, y):
        """Raw SDC signals (B x 3: deviation, consistency, stability) and the samples' memory rows."""
        logpf = F.log_softmax(pf, -1)
        d = -logpf.gather(1, y[:, None]).squeeze(1)                      # deviation: CE(p^f, y)
        c = js_divergence(logp, logpf[None], p=p).mean(0)                 # consistency
        row = self.mem[idx]
        s = (d - row[:, 0]).abs() * (row[:, 1] > 0)                       # stability (0 on a first visit)
        return torch.stack([d, c, s], 1), row

    @torch.no_grad()
    def _difficulty(self, idx, pf, logp, p, y):
        """D_Task (batch mean 1) from the three signals, with per-sample history.

        One gather and one scatter of the per-sample memory row (columns: previous deviation,
        visits, history of the 3 signals, and for the Hadamard form the previous D')."""
        raw, row = self.signals(idx, pf, logp, p, y)
        d, seen = raw[:, 0], (row[:, 1] > 0).float()
        sd, mu = torch.std_mean(raw, 0, unbiased=False)
        proj = torch.sigmoid((raw - mu) / (sd + 1e-6))                    # D' in (0, 1)
        hist = row[:, 2:5]
        if self.cfg["history"] == "ema":   # e ← γ·e + (1−γ)·D' (e = D' on the first visit)
            e = torch.lerp(proj, hist, self.cfg["gamma"] * seen[:, None])
            new = torch.cat([d[:, None], row[:, 1:2] + 1, e], 1)
        else:  # hadamard: (mean of D' at t and t−1) ⊙ (mean of D' over the earlier visits)
            n = row[:, 1:2]
            prev = torch.lerp(proj, row[:, 5:8], seen[:, None])
            past = torch.lerp(proj, hist, seen[:, None])
            e = 0.5 * (proj + prev) * past
            new = torch.cat([d[:, None], n + 1, (past * n + proj) / (n + 1), proj], 1)
        self.mem[idx] = new
        # ω_j ∝ batch std of e^j over the signals that are on (uniform when none varies)
        w = (e.std(0, unbiased=False) + 1e-12) * self.signal_mask
        D = e @ (w / w.sum())
        return D / D.mean().clamp_min(EPS)

    def _pace(self) -> float | None:
        """λ(t): linear from pace_start to 1 over pace_epochs; None once the pace is over (v = 1)."""
        if not (self.cfg["sdc"] and self.cfg["self_paced"]) or self.epoch >= self.cfg["pace_epochs"]:
            return None
        lam0 = self.cfg["pace_start"]
        return lam0 + (1 - lam0) * self.epoch / self.cfg["pace_epochs"]

    # --- the loss -----------------------------------------------------------------------------
    def loss(self, out, y, idx):
        model = self._model
        z = torch.stack(out.logits)                                   # M x B x C
        M, B = z.shape[0], z.shape[1]
        st, lg, lh = self._modality_terms(model)
        # one fused cross-entropy node for the M unimodal losses (a cheaper graph than
        # log-softmax + gather); the curricula's probabilities are computed without gradient
        uni = F.cross_entropy(z.view(M * B, -1), y.repeat(M), reduction="none").view(M, B)
        l_uni = uni.mean(1)                                                     # M
        with torch.no_grad():
            logp = F.log_softmax(z, -1)
            p = logp.exp()
            self._update_mdc(st, (-uni).exp().mean(1), l_uni)   # true-class probability = exp(−CE)
        g = self.gates(model, logp, z, lg, lh, p=p)
        yhat = self.fuse(z, g)
        ell = F.cross_entropy(yhat, y, reduction="none")
        d_fuse = g.mean(1).detach()
        if self.cfg["sdc"]:
            d_task = self._difficulty(idx, out.fused.detach(), logp, p, y)
        else:
            d_task = torch.ones_like(ell)
        w = d_task * d_fuse
        lam = self._pace()
        v = self_paced_weights((w * ell).detach(), lam) if lam is not None else torch.ones_like(ell)
        l_fused = (v * w * ell).mean()
        beta = self.betas(lg, lh)
        alpha = self._alpha(l_fused.detach(), l_uni.detach().mean())
        total = alpha * l_fused + (1 - alpha) * (beta * l_uni).sum()
        self._record(g, d_task, v, beta, lg, lh, alpha, idx)
        return total, yhat

    def betas(self, lg, lh):
        """β_m = M·softmax_m(−ρ·log GMR_m) (or of log GMR + log HMIR): lagging modalities get more."""
        M = lg.shape[0]
        if not self.use_gmr:
            return torch.ones_like(lg)
        score = lg + lh if self.cfg["beta_from"] == "gmr_hmir" else lg
        return M * torch.softmax(-self.cfg["rho"] * score, 0)

    def _alpha(self, l_fused, l_uni_mean):
        if not self.cfg["adaptive_alpha"]:
            return self.cfg["alpha"]
        self.loss_ema.mul_(0.9).add_(0.1 * torch.stack([l_fused, l_uni_mean]))
        return (self.loss_ema[0] / self.loss_ema.sum().clamp_min(EPS)).detach()

    def predict(self, model, out):
        z = torch.stack(out.logits)
        _, lg, lh = self._modality_terms(model)
        return self.fuse(z, self.gates(model, F.log_softmax(z, -1), z, lg, lh))

    # --- diagnostics --------------------------------------------------------------------------
    @torch.no_grad()
    def _record(self, g, d_task, v, beta, lg, lh, alpha, idx):
        t = self._trace
        t.setdefault("gate", []).append(g.detach())
        t.setdefault("d_task", []).append(d_task.detach())
        t.setdefault("v", []).append(v.detach())
        t.setdefault("idx", []).append(idx)
        t["beta"], t["log_gmr"], t["log_hmir"] = beta.detach(), lg.detach(), lh.detach()
        t["alpha"] = alpha

    def log(self, writer, epoch, trainer):
        t = self._trace
        if not t:
            return
        names = self.ctx.names
        gate, d_task, v = (torch.cat(t[k]).float().cpu() for k in ("gate", "d_task", "v"))
        for m, name in enumerate(names):
            writer.add_scalar(f"dyncim/gmr/{name}", float(t["log_gmr"][m].exp()), epoch)
            writer.add_scalar(f"dyncim/hmir/{name}", float(t["log_hmir"][m].exp()), epoch)
            writer.add_scalar(f"dyncim/beta/{name}", float(t["beta"][m]), epoch)
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
    def diagnostics(self, model, data, index) -> dict:
        """Test-split figures for the report: GMR, HMIR, β, mean gates (by corruption if known)."""
        out = model([v[index] for v in data.views])
        z = torch.stack(out.logits)
        _, lg, lh = self._modality_terms(model)
        g = self.gates(model, F.log_softmax(z, -1), z, lg, lh).cpu()
        beta = self.betas(lg, lh)
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
        return {"win_steps": self.win_steps, **{k: getattr(self, k) for k in self.TENSORS}}

    def load_state_dict(self, state):
        self.win_steps = state["win_steps"]
        for k in self.TENSORS:
            getattr(self, k).copy_(state[k])


def gate_by_corruption(gate, codes, names) -> dict:
    """Mean gate of modality m on samples whose modality c is clean vs corrupted (c corrupted somewhere)."""
    from ..data.synthetic import CORRUPTION_CODES
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
