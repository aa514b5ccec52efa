"""LFM: the alignment and classification terms against the official formulas and hand numbers, the
fitted polynomial, the learned weighting's Hessian-vector product against a finite difference,
its update rule (initial weights, step, halving, clip), the validation batch (validation split
only, seeded, saved), and a training run that learns and resumes bit-identically."""
import copy
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim import config as C
from dyncim.methods import lfm as L
from dyncim.methods.base import Context
from dyncim.methods.lfm import LFM, alpha_gradient, alignment_loss, fitted_weights, lfm_terms, pair_alignment
from dyncim.models import build_model
from dyncim.models.multimodal import Output
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, tiny_features

DEFAULTS = {"type": "lfm", **C._fill_defaults(C.load_schema()["$defs"]["method_lfm"], {})}
F64 = {"dtype": torch.float64}


def ctx(n=2):
    return Context(names=["a", "v", "t"][:n], n_classes=3, n_samples=100, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


def official_alignment(p, q):
    """Crema_epoch.py's `Alignment`, written out with torch's own KL (F.kl_div(log x, t) = KL(t || x))."""
    p, q = F.softmax(p, dim=-1), F.softmax(q, dim=-1)
    m = 0.5 * p + 0.5 * q
    return 0.5 * (F.kl_div(p.log(), m, reduction="batchmean") + F.kl_div(q.log(), m, reduction="batchmean"))


def test_defaults_are_the_official_ones():
    assert DEFAULTS["init_align"] == 0.95 and DEFAULTS["lr_alpha"] == 1e-4
    assert (DEFAULTS["align_min"], DEFAULTS["align_max"]) == (0.05, 0.95)
    assert DEFAULTS["lr_alpha_halve_every"] == 20 and DEFAULTS["val_samples"] == 8
    assert DEFAULTS["fusion"] == "sum" and DEFAULTS["hvp_reduce"] == "first"


def test_pair_alignment_by_hand_and_as_the_official_formula():
    za = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]], **F64)
    zb = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]], **F64)

    def softmax(r):
        e = [math.exp(v) for v in r]
        return [v / sum(e) for v in e]

    total = 0.0
    for ra, rb in zip(za.tolist(), zb.tolist()):
        p, q = softmax(ra), softmax(rb)
        m = [(a + b) / 2 for a, b in zip(p, q)]
        kl_mp = sum(mi * math.log(mi / pi) for mi, pi in zip(m, p))
        kl_mq = sum(mi * math.log(mi / qi) for mi, qi in zip(m, q))
        total += 0.5 * (kl_mp + kl_mq)
    assert float(pair_alignment(za, zb)) == pytest.approx(total / 2, rel=1e-12)
    assert float(pair_alignment(za, zb)) == pytest.approx(float(official_alignment(za, zb)), rel=1e-12)
    assert float(pair_alignment(za, za)) == pytest.approx(0.0, abs=1e-15)


def test_three_modalities_average_the_pairs():
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(5, 4, generator=g, **F64) for _ in range(3)]
    want = (official_alignment(z[0], z[1]) + official_alignment(z[0], z[2]) + official_alignment(z[1], z[2])) / 3
    assert float(alignment_loss(z)) == pytest.approx(float(want), rel=1e-12)


def test_training_loss_is_twice_the_weighted_terms_at_the_official_initial_weights():
    m = LFM(dict(DEFAULTS), ctx())
    assert (m.w_cls, m.w_align) == pytest.approx((0.05, 0.95), abs=1e-15)   # official cls_k = [0.05, 0.95]
    g = torch.Generator().manual_seed(1)
    za, zv = torch.randn(6, 3, generator=g, **F64), torch.randn(6, 3, generator=g, **F64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    res = m.loss(None, Output([], [za, zv], za + zv), y, None)
    cls = F.cross_entropy(0.5 * zv + 0.5 * za, y)               # the official loss_cls
    want = 2 * (0.05 * cls + 0.95 * official_alignment(za, zv))
    assert float(res.loss) == pytest.approx(float(want), rel=1e-12)
    # prediction: the official 0.5 o_v + 0.5 o_a
    torch.testing.assert_close(m.predict(None, Output([], [za, zv], za + zv)), 0.5 * (za + zv))


def test_fitted_polynomial_by_hand():
    assert fitted_weights(0) == pytest.approx((0.204623704, 0.795376296), abs=1e-15)
    e = 37
    c = [2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11]
    w = c[0] + c[1] * e + c[2] * e ** 2 + c[3] * e ** 3 + c[4] * e ** 4 + c[5] * e ** 5
    assert fitted_weights(e) == pytest.approx((w, 1 - w), rel=1e-12)
    # the official coef_alpha2 is 1 - coef_alpha1's curve: w_align at 37 from its own coefficients
    c2 = [7.95376296e-01, -3.35472727e-03, -1.22989557e-04, 2.92947416e-06, -2.23835486e-08, 5.39717505e-11]
    assert fitted_weights(e)[1] == pytest.approx(sum(ci * e ** i for i, ci in enumerate(c2)), rel=1e-12)
    assert fitted_weights(500) == fitted_weights(199)            # clamped at the fitted range
    m = LFM({**DEFAULTS, "weighting": "fitted"}, ctx())
    m.begin_epoch(_view(epoch=e))
    assert (m.w_cls, m.w_align) == pytest.approx((w, 1 - w), rel=1e-12)


def _view(epoch=0, **fields):
    from types import SimpleNamespace
    return SimpleNamespace(epoch=epoch, **fields)


def _tiny(seed=0, fusion="sum"):
    torch.manual_seed(seed)
    model = build_model([4, 3], 3, fusion, {"hidden": [5], "dropout": 0.0}).double()
    g = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(8, 4, generator=g, **F64), torch.randn(8, 3, generator=g, **F64)]
    y = torch.randint(0, 3, (8,), generator=g)
    return model, xs, y


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_meta_gradient_equals_a_finite_difference_of_the_gradient(fusion):
    """H(L_total) . grad(L_cls), by central differences of grad(L_total) along grad(L_cls),
    with the official loss expressions."""
    model, xs, y = _tiny(fusion=fusion)
    wc, wa = 0.3, 0.7
    params = list(model.parameters())

    def terms():
        out = model(xs)
        za, zv = out.logits
        return F.cross_entropy(0.5 * za + 0.5 * zv, y), official_alignment(za, zv)

    cls, _ = terms()
    v = [g.detach() for g in torch.autograd.grad(cls, params)]
    eps = 1e-6

    def grad_total_at(sign):
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(sign * eps * d)
        c, a = terms()
        g = torch.autograd.grad(wc * c + wa * a, params)
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(sign * eps * d)
        return g

    hvp = [(gp - gm) / (2 * eps) for gp, gm in zip(grad_total_at(1), grad_total_at(-1))]
    first = alpha_gradient(model, xs, y, wc, wa, "first")
    every = alpha_gradient(model, xs, y, wc, wa, "all")
    assert abs(first) > 1e-6                                   # a real curvature, not zero
    assert first == pytest.approx(float(hvp[0].mean()), rel=1e-6)
    assert every == pytest.approx(float(torch.cat([h.flatten() for h in hvp]).mean()), rel=1e-6)
    assert params[0] is model.encoders[0].net[0].weight        # "first": the first encoder's first weight
    assert all(p.grad is None for p in params)                 # no gradients left behind


def _trainer(tmp_path, cfg=None, data=None, epochs=4, name="t.pt", seed=0):
    data = tiny_features(n=150) if data is None else data
    return Trainer(data, {**DEFAULTS, **(cfg or {})}, {**TRAIN_CFG, "epochs": epochs}, seed,
                   torch.device("cpu"), tmp_path / name, None, "lfm-test")


def test_learned_update_rule_step_halving_and_clip(tmp_path, monkeypatch):
    t = _trainer(tmp_path, {"lr_alpha": 0.01})
    grads = iter([3.0, -50.0, 2.0] + [1.0] * 40)
    monkeypatch.setattr(L, "alpha_gradient", lambda *a, **k: next(grads))
    m = t.method
    seen = []
    for e in range(42):
        m.begin_epoch(t.view() if e == 0 else _like_view(t, e))
        seen.append((m.lr_alpha, m.w_align))
    assert seen[0] == pytest.approx((0.01, 0.95 - 0.03))               # epoch 0: no halving
    assert seen[1] == pytest.approx((0.01, 0.95))                      # 0.92 + 0.5, clipped at 0.95
    assert seen[2] == pytest.approx((0.01, 0.93))
    # epochs 3..19 step 0.01 each, epoch 20 halves lr first (0.005), 40 again (0.0025)
    assert seen[19] == pytest.approx((0.01, 0.93 - 17 * 0.01))
    assert seen[20] == pytest.approx((0.005, 0.93 - 17 * 0.01 - 0.005))
    assert seen[39][0] == pytest.approx(0.005) and seen[40][0] == pytest.approx(0.0025)
    assert min(w for _, w in seen) >= 0.05 - 1e-12
    assert m.w_cls == pytest.approx(1 - m.w_align)


def _like_view(t, epoch):
    v = t.view()
    v.epoch = epoch
    return v


def test_the_update_reads_only_a_seeded_validation_batch(tmp_path, monkeypatch):
    t = _trainer(tmp_path, epochs=3)
    reads, inside = [], [False]
    batch = t.data.batch

    def recording(idx, *a, **k):
        if inside[0]:
            reads.append(idx.clone())
        return batch(idx, *a, **k)
    monkeypatch.setattr(t.data, "batch", recording)
    start = t.method.on_epoch_start

    def wrapped(run):
        inside[0] = True
        try:
            start(run)
        finally:
            inside[0] = False
    monkeypatch.setattr(t.method, "on_epoch_start", wrapped)
    t.fit()
    val = set(t.val_idx.tolist())
    assert len(reads) == 3 and all(len(r) == 8 for r in reads)
    assert all(set(r.tolist()) <= val for r in reads)
    assert all(torch.equal(r, reads[0]) for r in reads)           # val_draw: once
    g = torch.Generator().manual_seed(0 + L.LFM_SEED)               # the seeded draw, by hand
    assert torch.equal(reads[0], t.val_idx[torch.randperm(len(t.val_idx), generator=g)[:8]])
    other = _trainer(tmp_path, {"val_draw": "epoch"}, epochs=3, name="o.pt")
    other.fit()
    assert set(other.method.val_ids.tolist()) <= val


def test_the_test_split_is_never_touched(tmp_path):
    data = tiny_features(n=150)
    scrambled = copy.deepcopy(data)
    test = (scrambled.split == 2).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(5)
    for v in scrambled.views:
        v[test] = torch.randn(len(test), v.shape[1], generator=g) * 50
    scrambled.labels[test] = torch.randint(0, 3, (len(test),), generator=g)
    cfg = {"lr_alpha": 100.0, "val_draw": "epoch"}
    a = _trainer(tmp_path, cfg, data=data, name="a.pt")
    b = _trainer(tmp_path, cfg, data=scrambled, name="b.pt")
    a.fit(), b.fit()
    assert not torch.equal(a.data.labels, b.data.labels)
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), n
    assert a.history == b.history and a.method.w_align == b.method.w_align


@pytest.mark.parametrize("weighting", ["learned", "fitted"])
def test_training_learns_and_resumes_bit_identically(tmp_path, weighting):
    cfg = {"weighting": weighting, "lr_alpha": 100.0, "val_draw": "epoch"}
    full = _trainer(tmp_path, cfg, epochs=6, name="full.pt")
    full.fit()
    h = full.history
    # the weighted training loss moves with the weights; the prediction's validation loss falls
    assert h[-1]["val_loss"] < h[0]["val_loss"] and max(r["val_acc"] for r in h) > 0.6
    if weighting == "learned":
        assert full.method.w_align != 0.95 and 0.05 <= full.method.w_align <= 0.95
    _trainer(tmp_path, cfg, epochs=3, name="part.pt").fit()
    resumed = _trainer(tmp_path, cfg, epochs=6, name="part.pt")
    resumed.fit()
    for (n, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), n
    assert resumed.history == full.history
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert (a["w_align"], a["lr_alpha"], a["alpha_grad"]) == (b["w_align"], b["lr_alpha"], b["alpha_grad"])
    if weighting == "learned":
        assert torch.equal(a["val_ids"], b["val_ids"]) and torch.equal(a["gen"], b["gen"])
    w = RecordingWriter()
    full.method.log(w, 6)
    assert all(math.isfinite(v) for v in w.scalars.values())
    assert w.scalars["lfm/weight_align"] == pytest.approx(full.method.w_align)


def test_needs_two_modalities_and_checks_its_settings():
    with pytest.raises(ValueError, match="needs at least 2 modalities"):
        LFM(dict(DEFAULTS), Context(["a"], 3, 10, 2, 1, torch.device("cpu")))
    with pytest.raises(ValueError, match="weighting"):
        LFM({**DEFAULTS, "weighting": "other"}, ctx())
    with pytest.raises(ValueError, match="init_align"):
        LFM({**DEFAULTS, "init_align": 0.99}, ctx())
    assert lfm_terms([torch.zeros(2, 3), torch.zeros(2, 3)], torch.tensor([0, 1]))[1] == 0


def test_the_learned_weighting_differentiates_twice_through_attention():
    """A sequence modality's transformer encoder: the meta-gradient's second backward goes through
    scaled_dot_product_attention, whose fused kernels have no double backward."""
    import torch
    from dyncim.methods.lfm import alpha_gradient
    from dyncim.models import build_model
    torch.manual_seed(0)
    model = build_model([(5, 6), (5, 4)], 3, "sum", {"encoder": "auto", "hidden": [8], "dropout": 0.0,
                                                      "seq_dim": 8, "seq_layers": 1})
    xs = [torch.randn(4, 5, 6), torch.randn(4, 5, 4)]
    y = torch.tensor([0, 1, 2, 0])
    assert math.isfinite(alpha_gradient(model, xs, y, 0.05, 0.95))
