"""DynCIM, the reference implementation (`impl: reference`): the whole objective written to be read.

One function per component of the method, named as in docs/method.md (whose table maps each paper
symbol to its function here, to its counterpart in the fused path and to its params.yaml key),
the per-sample memory read and written by column name, and autograd for every gradient: `loss`
builds the objective as a graph from the modalities' logits and the gate's parameters, and the
default `backward` (`loss.backward()`) differentiates it. To try a variant of DynCIM, change a
function here and train with `impl: reference`.

It shares no formula with the fused path (dyncim/methods/dyncim.py, the default, which computes
the same loss and its gradients in closed form for speed); it subclasses `DynCIM` only for what is
storage or bookkeeping: the configuration switches, the per-sample memory (`mem`, columns
MEMORY_COLUMNS), the modality statistics (`model.extra["mdc"]`), the gate's parameter
(`model.extra["gate"]`), the running loss means of adaptive α (`loss_ema`), the resume state and
the TensorBoard log. So the two implementations' checkpoints are interchangeable, and
tests/test_dyncim_reference.py runs them side by side from identical states and checks that
their loss values, gradients and states agree step after step, for every switch.

Notation: B samples, M modalities, C classes; z (M x B x C) the modalities' logits z^m; y the
labels. Everything that weights the loss (D_Task, D_Fuse, v, α, β) is a measurement without
gradient; gradients flow to z through L_m and L_fused, and to the gate through ĝ in ŷ.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .base import StepResult
from .dyncim import EPS, MEMORY_COLUMNS, DynCIM, gate_by_corruption, stacked_logits

PROJECTION_EPS = 1e-6     # added to a signal's batch standard deviation before dividing by it
SIGNAL_WEIGHT_EPS = 1e-12  # added to each signal's weight, so that D is defined when no signal varies
ADAPTIVE_ALPHA_MOMENTUM = 0.9


# --- the fused views --------------------------------------------------------------------------

def sum_fusion(z: torch.Tensor) -> torch.Tensor:
    """p^f = Σ_m z^m: the un-gated sum of the modalities' logits (B x C). Only the SDC reads it."""
    return z.sum(0)


def normalised_gates(g: torch.Tensor) -> torch.Tensor:
    """ĝ^m = M·g^m / Σ_k g^k: the gates normalised across modalities (M x B), so Σ_m ĝ^m = M."""
    return g.shape[0] * g / g.sum(0, keepdim=True)


def gated_fusion(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """ŷ = Σ_m ĝ^m·z^m (B x C)."""
    return (normalised_gates(g)[:, :, None] * z).sum(0)


def gate_reliability(g: torch.Tensor, p_true: torch.Tensor, lam: float) -> torch.Tensor:
    """λ·mean_{m,i} (g_i^m − σ(z_i^m)_{y_i})²: an auxiliary loss that trains each raw gate to predict
    its modality's true-class probability on the sample (the target detached: a gradient for the
    gate only; the gate itself stays label-free). `gate_reliability: λ`, 0 = off."""
    return lam * (g - p_true.detach()).square().mean()


def fusion_weight(g: torch.Tensor) -> torch.Tensor:
    """D_Fuse = mean_m g^m of the raw gates (B), detached: as a weight of the loss it carries no
    gradient (else the gate learns to close)."""
    return g.mean(0).detach()


# --- divergences ------------------------------------------------------------------------------

def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE(logits_i, y_i) per sample (B)."""
    return F.cross_entropy(logits, y, reduction="none")


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """JS(σ(p) ‖ σ(q)) = ½·KL(σ(p) ‖ m) + ½·KL(σ(q) ‖ m), m = (σ(p) + σ(q)) / 2, over the last
    dimension (log m in log space, so a probability that underflows to 0 contributes 0)."""
    logp, logq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    logm = torch.logaddexp(logp, logq) - math.log(2.0)
    return 0.5 * (logp.exp() * (logp - logm)).sum(-1) + 0.5 * (logq.exp() * (logq - logm)).sum(-1)


# --- sample-level curriculum (SDC) ------------------------------------------------------------

def deviation(pf: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Prediction deviation d_i = CE(p^f_i, y_i) (B)."""
    return cross_entropy(pf, y)


def consistency(z: torch.Tensor, pf: torch.Tensor) -> torch.Tensor:
    """Consistency c_i = Σ_m JS(σ(z^m_i) ‖ σ(p^f_i)) (B): how much the modalities disagree with the
    fused view. (The design's mean over m differs by the factor 1/M, which the batch
    standardisation of `sigmoid_projection` removes.)"""
    return js_divergence(z, pf.expand_as(z)).sum(0)


def stability(dev: torch.Tensor, prev_dev: torch.Tensor) -> torch.Tensor:
    """Stability s_i = |d_i(t) − d_i(t−1)|, d_i(t−1) the deviation at the sample's previous visit;
    0 on a first visit (no previous deviation: NaN in the memory)."""
    return torch.where(prev_dev.isnan(), torch.zeros_like(dev), (dev - prev_dev).abs())


def sigmoid_projection(raw: torch.Tensor) -> torch.Tensor:
    """D' = sigmoid((x − mean_batch x) / std_batch x), per signal (column of raw, B x 3)."""
    mean = raw.mean(0)
    std = raw.std(0, unbiased=False)
    return torch.sigmoid((raw - mean) / (std + PROJECTION_EPS))


def history_ema(proj, history, history_weight):
    """e ← γ·e + (1−γ)·D' per sample and signal; `history_weight` is the stored weight of the
    history (γ, or 0 before the sample's first visit, when e = D')."""
    return history_weight * history + (1 - history_weight) * proj


def history_hadamard(proj, prev_projection, past_mean, first_visit):
    """e = ½(D'(t) + D'(t−1)) ⊙ mean(D'(1..t−1)), the figure's Hadamard join of the current and
    historical branches; on a first visit both D'(t−1) and the mean are D'(t), so e = D'(t)²."""
    prev = torch.where(first_visit, proj, prev_projection)
    past = torch.where(first_visit, proj, past_mean)
    return 0.5 * (proj + prev) * past


def signal_weights(e: torch.Tensor, signal_on: torch.Tensor) -> torch.Tensor:
    """ω_j ∝ std_batch(e^j) over the signals that are on (0 for those off), Σ_j ω_j = 1: the signal
    that currently separates the samples most counts most."""
    raw = (e.std(0, unbiased=False) + SIGNAL_WEIGHT_EPS) * signal_on
    return raw / raw.sum()


def task_difficulty(e: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """D_i = Σ_j ω_j e_i^j, normalised to batch mean 1: D_Task,i = D_i / mean_batch(D)."""
    d = e @ omega
    return d / d.mean()


# --- self-paced weights -----------------------------------------------------------------------

def pace(epoch: int, lambda0: float, pace_epochs: int) -> float | None:
    """λ(t) = λ_0 + (1 − λ_0)·t / T_pace for epochs t < T_pace; None afterwards (v = 1)."""
    if epoch >= pace_epochs:
        return None
    return lambda0 + (1 - lambda0) * epoch / pace_epochs


def eta(weighted_loss: torch.Tensor, lam: float) -> torch.Tensor:
    """η(t): 2η is the λ(t)-quantile of the weighted losses w_i·ℓ_i over the batch, the k-th smallest
    value with k = ⌈λB⌉. That sample gets v = 0, so k − 1 samples are admitted."""
    k = max(1, math.ceil(lam * weighted_loss.numel()))
    two_eta = torch.kthvalue(weighted_loss, k).values.clamp_min(EPS)
    return two_eta / 2


def self_paced_v(weighted_loss: torch.Tensor, eta_t: torch.Tensor) -> torch.Tensor:
    """v_i = argmin over v ∈ [0, 1] of v·w_i·ℓ_i + η(t)·(1 − v)² = clip(1 − w_i·ℓ_i / (2η(t)), 0, 1)."""
    return (1 - weighted_loss / (2 * eta_t)).clamp(0, 1)


# --- modality-level curriculum (MDC) ----------------------------------------------------------

def gmr(strength: torch.Tensor) -> torch.Tensor:
    """Geometric Mean Ratio GMR_m = s_m / (Π_k s_k)^{1/M}: > 1 dominant, < 1 lagging."""
    s = strength.clamp_min(EPS)
    return s / s.log().mean().exp()


def strength_update(strength, p_true_mean, momentum: float):
    """s_m ← μ·s_m + (1−μ)·mean_batch σ(z^m)_y: the running mean of the true-class probability."""
    return momentum * strength + (1 - momentum) * p_true_mean


def improvement_rates(prev_mean: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """r_m = (L̄_m(previous window) − L̄_m(this window)) / L̄_m(previous window)."""
    return (prev_mean - mean) / prev_mean.clamp_min(EPS)


def hmir(rates: torch.Tensor, floor: float, clip: float) -> torch.Tensor:
    """Harmonic Mean Improvement Rate HMIR_m = r_m / HM(r_1..r_M), the rates floored at ε and the
    ratio bounded to [e^−c, e^c] (with one rate at its floor the raw ratio reached 65)."""
    r = rates.clamp_min(floor)
    harmonic_mean = r.numel() / (1 / r).sum()
    return (r / harmonic_mean).clamp(math.exp(-clip), math.exp(clip))


def beta(gmr_m: torch.Tensor, hmir_m: torch.Tensor, rho: float) -> torch.Tensor:
    """β_m = M·softmax_m(−ρ·log(GMR_m·HMIR_m)): a lagging modality gets more unimodal training.
    With `beta_from: gmr` (the default) HMIR is passed as 1."""
    return gmr_m.numel() * torch.softmax(-rho * (gmr_m * hmir_m).log(), 0)


def adaptive_alpha(loss_ema: torch.Tensor, fused_loss, unimodal_loss):
    """Adaptive α = L̄_fused / (L̄_fused + mean_m L̄_m), from running means (momentum 0.9, starting at
    0) of the fused loss and of the mean unimodal loss. Returns the updated means and α."""
    m = ADAPTIVE_ALPHA_MOMENTUM
    new = m * loss_ema + (1 - m) * torch.stack([fused_loss, unimodal_loss])
    return new, new[0] / new.sum().clamp_min(EPS)


# --- the gate ---------------------------------------------------------------------------------

def gate_inputs(z: torch.Tensor, log_gmr: torch.Tensor, log_hmir: torch.Tensor) -> torch.Tensor:
    """The gate's label-free inputs (M x B x 5): per sample and modality the confidence max σ(z^m),
    the entropy of σ(z^m) / log C and the disagreement JS(σ(z^m) ‖ σ(mean of the other modalities'
    logits)); per modality log GMR_m and log HMIR_m."""
    M, B, C = z.shape
    logp = F.log_softmax(z, -1)
    confidence = logp.exp().amax(-1)
    entropy = -(logp.exp() * logp).sum(-1) / math.log(C)
    others = (z.sum(0, keepdim=True) - z) / (M - 1)
    disagreement = js_divergence(z, others)
    per_modality = torch.stack([log_gmr, log_hmir], 1)[:, None, :].expand(M, B, 2)
    return torch.cat([torch.stack([confidence, entropy, disagreement], -1), per_modality], -1)


def gate_mlp(inputs: torch.Tensor, W1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """g^m_i = sigmoid(w2·ReLU(W_x·x^m_i + b_m) + b2) ∈ (0, 1) (M x B), one small MLP shared by the
    modalities. W1 (the gate module's storage) holds W_x, the weights of the 5 inputs, in its first
    rows, and b_m, modality m's own first-layer bias (the weight of a one-hot of m), in the rest."""
    n_inputs = inputs.shape[-1]
    W_x, b_modality = W1[:n_inputs], W1[n_inputs:]
    hidden = torch.relu(inputs @ W_x + b_modality[:, None, :])
    return torch.sigmoid(hidden @ w2 + b2)


# --- the method -------------------------------------------------------------------------------

class DynCIMReference(DynCIM):
    """DynCIM with plain autograd (`impl: reference`); see the module docstring."""

    supports_gate_input_grad = True
    impl = "reference"

    # modality level (from the statistics before the step; frozen at inference)
    def modality_curriculum(self, st):
        """GMR, HMIR (1 where switched off) and β from the MDC statistics module `st`. β = 1 with GMR
        off (even with `beta_from: gmr_hmir`)."""
        M = st.strength.numel()
        ones = torch.ones(M, dtype=st.strength.dtype, device=st.strength.device)
        gmr_m = gmr(st.strength) if self.use_gmr else ones
        hmir_m = st.log_hmir.exp() if self.use_hmir else ones
        if not self.use_gmr:
            return gmr_m, hmir_m, ones
        return gmr_m, hmir_m, beta(gmr_m, hmir_m if self.beta_hmir else ones, self.rho)

    def update_modality_statistics(self, st, p_true_mean, unimodal_loss):
        """After the step: the strengths' running mean, and at the end of each window of
        `hmir_window` steps the improvement rates over the previous window and HMIR. The first
        window has no previous one: it only sets the reference mean (HMIR stays as it was)."""
        st.strength.copy_(strength_update(st.strength, p_true_mean, self.cfg["strength_momentum"]))
        st.win_sum.add_(unimodal_loss)
        self.win_steps += 1
        if self.win_steps < self.cfg["hmir_window"]:
            return
        window_mean = st.win_sum / self.win_steps
        if bool(st.has_prev):
            rates = improvement_rates(st.prev_mean, window_mean)
            st.log_hmir.copy_(hmir(rates, self.cfg["hmir_floor"], self.cfg["hmir_clip"]).log())
        st.prev_mean.copy_(window_mean)
        st.has_prev.fill_(True)
        st.win_sum.zero_()
        self.win_steps = 0

    # sample level
    def difficulty(self, idx, dev, cons):
        """D_Task (B) from the deviation and the consistency of the batch's samples (data set indices
        idx), with each sample's history from the memory, which it updates."""
        cols = MEMORY_COLUMNS["ema" if self.ema else "hadamard"]
        rows = self.mem[idx]
        prev_dev = rows[:, cols["prev_deviation"]].squeeze(1)
        raw = torch.stack([dev, cons, stability(dev, prev_dev)], 1)
        proj = sigmoid_projection(raw)
        if self.ema:
            e = history_ema(proj, rows[:, cols["history"]], rows[:, cols["history_weight"]])
            self.mem[idx, cols["history"]] = e
            self.mem[idx, cols["history_weight"]] = self.gamma
        else:
            visits = rows[:, cols["visits"]]
            past_mean = rows[:, cols["past_mean"]]
            e = history_hadamard(proj, rows[:, cols["prev_projection"]], past_mean, visits == 0)
            self.mem[idx, cols["past_mean"]] = (past_mean * visits + proj) / (visits + 1)
            self.mem[idx, cols["prev_projection"]] = proj
            self.mem[idx, cols["visits"]] = visits + 1
        self.mem[idx, cols["prev_deviation"]] = dev[:, None]
        signal_on = torch.tensor(self.signal_on, dtype=e.dtype, device=e.device)
        return task_difficulty(e, signal_weights(e, signal_on))

    # the gate
    def gate(self, model, z, gmr_m, hmir_m):
        """Raw gates g (M x B) from the logits z (M x B x C) and the modality-level signals."""
        W1, w2, b2 = model.extra["gate"].weights()
        return gate_mlp(gate_inputs(z, gmr_m.log(), hmir_m.log()), W1, w2, b2)

    # the objective
    def loss(self, model, out, y, idx):
        """total = α·L_fused + (1−α)·Σ_m β_m·L_m, with L_fused = (1/B)·Σ_i v_i·D_Task,i·D_Fuse,i·ℓ_i,
        ℓ_i = CE(ŷ_i, y_i), L_m = mean_i CE(z^m_i, y_i) (docs/method.md)."""
        z = torch.stack(out.logits)                                   # M x B x C
        M, B, _ = z.shape
        st = model.extra["mdc"]
        gmr_m, hmir_m, beta_m = self.modality_curriculum(st)
        unimodal = torch.stack([cross_entropy(z[m], y).mean() for m in range(M)])   # L_m
        if self.use_gate:
            # the gate's inputs are measurements of z (no gradient) unless gate_input_grad
            g = self.gate(model, z if self.cfg["gate_input_grad"] else z.detach(), gmr_m, hmir_m)
            yhat, d_fuse = gated_fusion(z, g), fusion_weight(g)
        else:
            g, yhat, d_fuse = None, sum_fusion(z), torch.ones_like(y, dtype=z.dtype)
        ell = cross_entropy(yhat, y)                                  # ℓ_i
        with torch.no_grad():
            d_task = v = None
            if self.use_sdc:
                zd = z.detach()
                pf = sum_fusion(zd)
                d_task = self.difficulty(idx, deviation(pf, y), consistency(zd, pf))
            weight = d_fuse * (d_task if d_task is not None else 1)
            lam = pace(self.epoch, self.cfg["pace_start"], self.cfg["pace_epochs"]) \
                if self.use_sdc and self.cfg["self_paced"] else None
            if lam is not None:
                v = self_paced_v(weight * ell, eta(weight * ell, lam))
                weight = weight * v
        fused = (weight * ell).mean()                                 # L_fused
        if self.cfg["adaptive_alpha"]:
            running_means, alpha = adaptive_alpha(self.loss_ema, fused.detach(), unimodal.detach().mean())
            self.loss_ema.copy_(running_means)
        else:
            alpha = self.alpha
        total = alpha * fused + (1 - alpha) * (beta_m * unimodal).sum()
        with torch.no_grad():
            p_true = F.softmax(z.detach(), -1).gather(-1, y.expand(M, B)[..., None]).squeeze(-1)
        if g is not None and self.cfg["gate_reliability"]:
            total = total + gate_reliability(g, p_true, self.cfg["gate_reliability"])
        with torch.no_grad():
            self.update_modality_statistics(st, p_true.mean(1), unimodal.detach())
        self._record(None if g is None else g.detach(), d_task, v, beta_m / M, gmr_m.log(), hmir_m.log(),
                     alpha, idx)
        return StepResult(total, yhat.detach(), out, y)

    def backward(self, model, res):
        res.loss.backward()

    # inference (label-free, statistics frozen)
    @torch.no_grad()
    def predict(self, model, out):
        z = torch.stack(out.logits)
        if not self.use_gate:
            return sum_fusion(z)
        gmr_m, hmir_m, _ = self.modality_curriculum(model.extra["mdc"])
        return gated_fusion(z, self.gate(model, z, gmr_m, hmir_m))

    @torch.no_grad()
    def diagnostics(self, model, data, index, batch_size: int | None = None) -> dict:
        """Test-split figures for the report: GMR, HMIR, β, mean gates (by corruption if known).
        `batch_size`: the forward pass in batches of that size (None: all of `index` at once)."""
        z = stacked_logits(model, data, index, batch_size)
        st = model.extra["mdc"]
        gmr_m, hmir_m, beta_m = self.modality_curriculum(st)
        g = (self.gate(model, z, gmr_m, hmir_m) if self.use_gate else torch.ones(z.shape[:2])).t().cpu()
        res = {}
        for m, name in enumerate(data.names):
            res[f"gmr_{name}"] = float(gmr(st.strength)[m])     # reported even where GMR is off
            res[f"hmir_{name}"] = float(st.log_hmir[m].exp())
            res[f"beta_{name}"] = float(beta_m[m])
            res[f"gate_{name}"] = float(g[:, m].mean())
        if data.corrupted is not None:
            res.update(gate_by_corruption(g, data.corrupted[index].cpu(), data.names))
        return res
