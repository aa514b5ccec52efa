"""CGGM: the coefficients from constructed accuracy changes (with the zero-change guard), the
direction term by hand, one step's encoder-gradient scaling and auxiliary update (the second
optimiser steps the auxiliary heads only), and a training run that learns and resumes
bit-identically (the auxiliary optimiser's state included)."""
import pytest
import torch
from torch.nn import functional as F

from dyncim import config as C
from dyncim.methods.cggm import coefficients, direction_loss
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, tiny_features

DEFAULTS = {"type": "cggm", **C._fill_defaults(C.load_schema()["$defs"]["method_cggm"], {})}


def _trainer(tmp_path, cfg=None, dims=(5, 4), epochs=4, name="t.pt", n=150):
    return Trainer(tiny_features(n=n, dims=dims), {**DEFAULTS, **(cfg or {})},
                   {**TRAIN_CFG, "epochs": epochs}, 0, torch.device("cpu"), tmp_path / name, None, "cggm-test")


def test_defaults_are_the_official_ones():
    assert (DEFAULTS["rou"], DEFAULTS["lamda"], DEFAULTS["cls_lr"]) == (1.3, 0.05, 5e-4)
    assert (DEFAULTS["cls_weight_decay"], DEFAULTS["clip"], DEFAULTS["fusion"]) == (3e-3, 0.8, "concat")


def test_coefficients_by_hand():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)
    # d = (0.25, 0): the improving modality is slowed to ~0, the other kept at ~1
    b = coefficients(t(0.5, 0.25), t(0.25, 0.25))
    assert b.tolist() == pytest.approx([1e-8 / (0.25 + 1e-8), 1.0], abs=1e-12)
    # three modalities: d = (0.1, 0.2, 0.3), D = 0.6: B = (0.5, 0.4, 0.3) / 0.6; sum B = M - 1
    b = coefficients(t(0.1, 0.2, 0.3), t(0, 0, 0))
    assert b.tolist() == pytest.approx([5 / 6, 4 / 6, 3 / 6], abs=1e-7)
    assert float(b.sum()) == pytest.approx(2.0, abs=1e-7)
    # a drop in one: d = (-0.1, 0.3), D = 0.2: B = (1.5, -0.5) (official: a reversed gradient)
    assert coefficients(t(0.4, 0.8), t(0.5, 0.5)).tolist() == pytest.approx([1.5, -0.5], abs=1e-7)


def test_zero_change_guard():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)
    # cancelling changes: the official (1e-8 - d) / 1e-8 would be -1e7 and +1e7
    d = t(0.1, -0.1)
    assert ((d.sum() + 1e-8 - d) / (d.sum() + 1e-8)).abs().min() > 1e6
    assert coefficients(t(0.6, 0.4), t(0.5, 0.5)).tolist() == [1.0, 1.0]
    # no change at all: 1, as the official formula gives
    assert coefficients(t(0.5, 0.5, 0.5), t(0.5, 0.5, 0.5)).tolist() == [1.0, 1.0, 1.0]


def test_direction_term_by_hand():
    a = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]])]
    w = [torch.tensor([[2.0, 0.0], [0.0, 2.0]], requires_grad=True),     # cos 1
         torch.tensor([[1.0, 1.0, 0.0]], requires_grad=True)]            # cos 1/sqrt2
    a[0].requires_grad_(True)
    coeff = torch.tensor([0.5, -2.0])
    got = direction_loss(coeff, a, w)
    want = (2.5 - (0.5 * 1.0 + (-2.0) / 2 ** 0.5)) / 2
    assert got.item() == pytest.approx(want, abs=1e-6)
    got.backward()
    assert a[0].grad is None and w[1].grad is not None and w[0].grad.abs().max() < 1e-6   # cos 1: a maximum


def test_one_step_scales_encoder_gradients_and_steps_only_the_auxiliary_heads(tmp_path):
    t = _trainer(tmp_path, {"clip": 1e9, "rou": 1.3})
    m, model = t.method, t.model
    aux = list(model.extra["cggm_heads"].parameters())
    main = [p for g in t.optimizer.param_groups for p in g["params"]]
    assert not {id(p) for p in aux} & {id(p) for p in main}
    assert {id(p) for g in m.aux_opt.param_groups for p in g["params"]} == {id(p) for p in aux}
    m.acc = torch.tensor([0.25, 0.5])
    idx = t.train_idx[:16]
    xs, y = t.data.batch(idx, train=True), t.data.labels[idx]
    out = m.forward(model, xs, idx)
    res = m.loss(model, out, y, idx)
    assert res.loss.item() == pytest.approx(F.cross_entropy(out.fused, y).item())   # no L_gm at step 1
    res.loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        acc = torch.stack([(h(f).argmax(1) == y).float().mean() for h, f in zip(model.extra["cggm_heads"], out.feats)])
    d = acc - torch.tensor([0.25, 0.5])
    want_b = (d.sum() + 1e-8 - d) / (d.sum() + 1e-8) if abs(float(d.sum())) >= 1e-6 else torch.ones(2)
    m.after_backward(model, res)
    assert m.coeff.tolist() == pytest.approx(want_b.tolist(), rel=1e-6)
    for n, p in model.named_parameters():
        if n.startswith("encoders."):
            k = int(n.split(".")[1])
            assert torch.allclose(p.grad, before[n] * 1.3 * want_b[k], rtol=1e-5, atol=1e-8), n
            assert torch.equal(p.detach(), values[n])                  # only the run's optimiser moves them
        elif n.startswith("extra.cggm_heads"):
            assert not torch.equal(p.detach(), values[n]), n           # the second optimiser stepped
        else:
            assert torch.equal(p.detach(), values[n]) and torch.equal(p.grad, before[n]), n
    # the next step's loss carries lamda L_gm with these coefficients
    out = m.forward(model, xs, idx)
    res = m.loss(model, out, y, idx)
    lgm = direction_loss(m.coeff, [h.weight for h in model.extra["cggm_heads"]], m.fusion_weights(model))
    assert res.loss.item() == pytest.approx((F.cross_entropy(out.fused, y) + 0.05 * lgm).item(), rel=1e-6)


def test_training_learns_and_resumes_bit_identically(tmp_path):
    full = _trainer(tmp_path, epochs=6, name="full.pt")
    full.fit()
    h = full.history
    assert h[-1]["train_loss"] < h[0]["train_loss"] and max(r["val_acc"] for r in h) > 0.8
    _trainer(tmp_path, epochs=3, name="part.pt").fit()
    resumed = _trainer(tmp_path, epochs=6, name="part.pt")
    resumed.fit()
    for (k, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), k
    assert resumed.history == full.history and torch.equal(resumed.method.coeff, full.method.coeff)
    sa, sb = full.method.aux_opt.state_dict()["state"], resumed.method.aux_opt.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    w = RecordingWriter()
    full.method.log(w, 6)
    assert set(w.scalars) >= {"cggm/coeff_m0", "cggm/aux_acc_m1", "cggm/cos_m0"}


def test_three_modalities_and_sum_fusion(tmp_path):
    t = _trainer(tmp_path, {"fusion": "sum"}, dims=(5, 4, 3), epochs=2)
    t.fit()
    assert t.method.coeff.shape == (3,) and torch.isfinite(t.method.coeff).all()
