"""DynCIM's curriculum pieces on hand-computed numbers, in both implementations (fused: the training
default; reference: dyncim/methods/dyncim_reference.py): the MDC update (strength EMA, windowed
improvement rates, the first-window guard, the floor and the clip), adaptive α, β from GMR and from
GMR·HMIR, the Hadamard difficulty and the self-paced step's admitted count."""

import math

import pytest
import torch

from dyncim import config as C
from dyncim.methods import build
from dyncim.methods.base import Context
from dyncim.methods.dyncim import MEMORY_COLUMNS, self_paced_weights
from dyncim.methods.dyncim_reference import DynCIMReference, adaptive_alpha, eta, self_paced_v
from dyncim.models import build_model

DEFAULTS = {"type": "dyncim", **C._fill_defaults(C.load_schema()["$defs"]["method_dyncim"], {})}
IMPLS = ["fused", "reference"]
A, B_ = 1 / (1 + math.e), 1 / (1 + math.exp(-1))       # sigmoid(−1) = 0.268941, sigmoid(1) = 0.731059


def method(impl, cfg=None, n_modalities=2, n_classes=4, n_samples=10):
    ctx = Context([f"m{i}" for i in range(n_modalities)], n_classes, n_samples, 10, 5, torch.device("cpu"))
    m = build({**DEFAULTS, **(cfg or {}), "impl": impl}, ctx)
    model = build_model([3] * n_modalities, n_classes, "sum", {"hidden": [8], "dropout": 0.0})
    m.setup(model)
    return m, model.extra["mdc"]


def mdc_step(m, st, p_true_mean, loss_mean, batch=4):
    """One step's MDC update from the batch means of σ(z^m)_y and of CE(z^m, y)."""
    p, loss = torch.tensor(p_true_mean), torch.tensor(loss_mean)
    if isinstance(m, DynCIMReference):
        m.update_modality_statistics(st, p, loss)
    else:                                                   # the fused step passes batch sums
        m._update_mdc(st, p * batch, loss * batch, batch)


@pytest.mark.parametrize("impl", IMPLS)
def test_mdc_update_by_hand(impl):
    m, st = method(impl, {"strength_momentum": 0.9, "hmir_window": 2, "hmir_floor": 1e-3, "hmir_clip": 2.0})
    st.log_hmir.copy_(torch.tensor([0.3, -0.3]))           # to see that the first window leaves it
    # strength: s ← 0.9·s + 0.1·mean σ(z^m)_y, from 1/C = 0.25
    mdc_step(m, st, [0.5, 0.1], [2.0, 1.0])
    assert torch.allclose(st.strength, torch.tensor([0.275, 0.235]))       # 0.225 + 0.05, 0.225 + 0.01
    assert m.win_steps == 1 and not st.has_prev
    mdc_step(m, st, [0.5, 0.1], [1.0, 1.0])
    assert torch.allclose(st.strength, torch.tensor([0.2975, 0.2215]))     # 0.2475 + 0.05, 0.2115 + 0.01
    # end of the first window: its mean loss [1.5, 1.0] becomes the reference; no rate yet, HMIR kept
    assert torch.allclose(st.prev_mean, torch.tensor([1.5, 1.0])) and st.has_prev
    assert torch.allclose(st.log_hmir, torch.tensor([0.3, -0.3])) and m.win_steps == 0
    mdc_step(m, st, [0.5, 0.1], [0.9, 0.9])
    assert torch.allclose(st.log_hmir, torch.tensor([0.3, -0.3]))          # mid-window: unchanged
    mdc_step(m, st, [0.5, 0.1], [0.6, 0.9])
    # window mean [0.75, 0.9]: r = [(1.5 − 0.75)/1.5, (1 − 0.9)/1] = [0.5, 0.1];
    # HM = 2 / (1/0.5 + 1/0.1) = 1/6; HMIR = r / HM = [3, 0.6]
    assert torch.allclose(st.log_hmir, torch.tensor([math.log(3), math.log(0.6)]), atol=1e-5)
    assert torch.allclose(st.prev_mean, torch.tensor([0.75, 0.9]))
    mdc_step(m, st, [0.5, 0.1], [0.75, 0.95])
    mdc_step(m, st, [0.5, 0.1], [0.75, 0.95])
    # r = [0, −0.056]: both floored to 1e-3, HMIR = [1, 1]
    assert torch.allclose(st.log_hmir, torch.zeros(2), atol=1e-5)
    mdc_step(m, st, [0.5, 0.1], [0.375, 1.14])
    mdc_step(m, st, [0.5, 0.1], [0.375, 1.14])
    # r = [0.5, −0.2] → [0.5, 1e-3]; HM = 2 / (2 + 1000); HMIR = [250.5, 0.501]: log 5.52 clipped to 2
    assert torch.allclose(st.log_hmir, torch.tensor([2.0, math.log(0.001 * 1002 / 2)]), atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_adaptive_alpha_by_hand(impl):
    """α = L̄_fused / (L̄_fused + L̄_uni), running means with momentum 0.9 from 0."""
    m, _ = method(impl, {"adaptive_alpha": True})

    def alpha_step(w, ell, unimodal):       # fused loss (1/B)Σ w·ℓ; unimodal: L_m per modality
        ell, unimodal = torch.tensor(ell), torch.tensor(unimodal)
        if impl == "reference":
            fused = (ell if w is None else torch.tensor(w) * ell).mean()
            running, alpha = adaptive_alpha(m.loss_ema, fused, unimodal.mean())
            m.loss_ema.copy_(running)
            return float(alpha)
        return float(m._alpha(None if w is None else torch.tensor(w), ell, unimodal * len(ell)))
    # L_fused = 0.8, mean L_m = 1.2: means [0.08, 0.12], α = 0.4
    assert alpha_step(None, [0.6, 1.0], [1.0, 1.4]) == pytest.approx(0.4)
    # L_fused = (0.5·1.0 + 1.5·0.2)/2 = 0.4, mean L_m = 1.6: means [0.112, 0.268], α = 0.112/0.38
    assert alpha_step([0.5, 1.5], [1.0, 0.2], [1.2, 2.0]) == pytest.approx(0.112 / 0.38)
    assert torch.allclose(m.loss_ema, torch.tensor([0.112, 0.268]))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cfg,want", [
    ({}, [0.4, 1.6]),                                       # GMR [2, 0.5]: 2·[1/2, 2]/2.5
    ({"rho": 2.0}, [2 / 17, 32 / 17]),                      # 2·[1/4, 4]/4.25
    ({"beta_from": "gmr_hmir"}, [2 / 21, 40 / 21]),         # GMR·HMIR = [6, 0.3]: 2·[1/6, 10/3]/3.5
    ({"beta_from": "gmr_hmir", "hmir": False}, [0.4, 1.6]),  # HMIR off: GMR alone
    ({"beta_from": "gmr_hmir", "gmr": False}, [1.0, 1.0]),   # GMR off: β = 1
])
def test_beta_by_hand(impl, cfg, want):
    """β_m = M·softmax_m(−ρ·log(GMR_m [·HMIR_m])), strengths [0.8, 0.2] (GMR [2, 0.5]), HMIR [3, 0.6]."""
    m, st = method(impl, cfg)
    st.strength.copy_(torch.tensor([0.8, 0.2]))
    st.log_hmir.copy_(torch.tensor([math.log(3), math.log(0.6)]))
    beta = m.modality_curriculum(st)[2] if impl == "reference" else m.betas(*m._modality_terms(st)[:2])
    assert torch.allclose(beta, torch.tensor(want), atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_hadamard_difficulty_by_hand(impl):
    """Two samples, deviation and stability on (consistency off), over two visits. With two samples,
    the batch standardisation gives ±1, so D' is sigmoid(±1) = A or B_ (A + B_ = 1), or ½ where a
    signal does not vary."""
    m, _ = method(impl, {"history": "hadamard", "sdc_consistency": False}, n_samples=2)
    idx = torch.tensor([0, 1])

    def visit(dev):
        dev, cons = torch.tensor(dev), torch.tensor([0.3, 0.1])
        return m.difficulty(idx, dev, cons) if impl == "reference" else m._difficulty(idx, dev, cons[None])
    # visit 1: deviation [1, 3] → D' = [A, B_]; stability [0, 0] → ½ (and weight ~0: no spread).
    # e = ½(D' + D') ⊙ D' = D'²; D_Task ∝ e_dev: [A², B_²] / mean
    d1 = visit([1.0, 3.0])
    assert torch.allclose(d1, torch.tensor([A * A, B_ * B_]) / ((A * A + B_ * B_) / 2), atol=1e-5)
    assert torch.allclose(d1, torch.tensor([0.238406, 1.761594]), atol=1e-5)
    # visit 2: deviation [2, 1] → D' = [B_, A]; stability |[2, 1] − [1, 3]| = [1, 2] → D' = [A, B_].
    # e = ½(D'(2) + D'(1)) ⊙ mean(D'(1)) = ½(D'(2) + D'(1)) ⊙ D'(1):
    #   deviation ½(B_ + A)·[A, B_] = [A/2, B_/2]; stability ½([A, B_] + ½)·½ = [(A + ½)/4, (B_ + ½)/4].
    # ω ∝ std: (B_ − A)/4 and (B_ − A)/8 → [2/3, 1/3]; both e columns have mean ¼, so D_Task = 4·D:
    #   4·(⅔·A/2 + ⅓·(A + ½)/4) = (5A + ½)/3, and (5B_ + ½)/3
    d2 = visit([2.0, 1.0])
    assert torch.allclose(d2, torch.tensor([(5 * A + 0.5) / 3, (5 * B_ + 0.5) / 3]), atol=1e-5)
    assert torch.allclose(d2, torch.tensor([0.614902, 1.385098]), atol=1e-5)
    cols = MEMORY_COLUMNS["hadamard"]
    assert torch.equal(m.mem[:, cols["visits"]].squeeze(1), torch.tensor([2.0, 2.0]))
    assert torch.equal(m.mem[:, cols["prev_deviation"]].squeeze(1), torch.tensor([2.0, 1.0]))
    past = m.mem[:, cols["past_mean"]]                     # mean of D' over the two visits
    assert torch.allclose(past[:, 0], torch.tensor([0.5, 0.5]), atol=1e-5)
    assert torch.allclose(past[:, 2], torch.tensor([(A + 0.5) / 2, (B_ + 0.5) / 2]), atol=1e-5)
    prev = m.mem[:, cols["prev_projection"]]               # D' of visit 2
    assert torch.allclose(prev[:, 0], torch.tensor([B_, A]), atol=1e-5)
    assert torch.allclose(prev[:, 2], torch.tensor([A, B_]), atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_self_paced_step_admits_k_minus_one_samples(impl):
    """2η is the k-th smallest weighted loss, k = ⌈λB⌉; that sample gets v = 0, so k − 1 samples are
    admitted: with B = 10 and λ = 0.55, k = 6 and 5 samples (the 5 smallest) have v > 0."""
    wl = torch.tensor([0.9, 0.1, 1.7, 0.4, 2.2, 0.3, 1.2, 0.8, 0.6, 1.5])
    if impl == "reference":
        v = self_paced_v(wl, eta(wl, 0.55))
    else:
        v = self_paced_weights(wl, 0.55)
    two_eta = 0.9                                           # sorted: 0.1 0.3 0.4 0.6 0.8 [0.9] ...
    assert int((v > 0).sum()) == 5 and torch.equal(v > 0, wl < two_eta)
    assert torch.allclose(v, (1 - wl / two_eta).clamp(0, 1))
    assert v[0] == 0                                        # the threshold sample itself
