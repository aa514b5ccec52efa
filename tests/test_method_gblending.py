"""G-Blending: the OGR weights against a hand computation, the blended loss, the unimodal heads,
the estimate on train/validation (never test), and short training runs (probe and trajectory)."""
import copy
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.methods.base import Context
from dyncim.methods.gblending import GBlending, ogr_weights
from dyncim.models import build_model
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, tiny_features

PARAMS = {"type": "gblending", "super_epoch": 2, "estimate": "probe", "unimodal_heads": "separate",
          "eps": 1e-8}
TRAIN = TRAIN_CFG


def ctx(n=2):
    return Context(names=["a", "b", "c"][:n], n_classes=3, n_samples=100, epochs=3,
                   steps_per_epoch=4, device=torch.device("cpu"))


# Exact-formula comparisons run in float64: differences of nearly equal losses, squared, amplify
# float32 rounding (and the kernels' summation order, which differs between CPUs).
F64 = {"dtype": torch.float64}


def assert_close_scaled(got, want, rel=1e-9):
    """Equal up to rel times the largest |want| (float64; another summation order moves any entry
    by ~1e-16 of the tensor's scale)."""
    want = want.detach()
    torch.testing.assert_close(got.detach(), want, rtol=rel, atol=rel * float(want.abs().max()))


def test_weights_from_given_losses_match_hand_computation():
    t0 = torch.tensor([1.0, 1.0, 1.0], **F64)
    v0 = torch.tensor([1.2, 1.1, 1.2], **F64)
    t1 = torch.tensor([0.5, 0.8, 0.3], **F64)
    v1 = torch.tensor([0.9, 0.8, 1.3], **F64)
    # head a: dG = 1.2 - 0.9 = 0.3, dO = (0.9 - 0.5) - (1.2 - 1.0) = 0.2 -> 0.3 / 0.04 = 7.5
    # head b: dG = 0.3, dO = (0.8 - 0.8) - (1.1 - 1.0) = -0.1 -> 0.3 / 0.01 = 30
    # fused: validation loss rose (dG = -0.1): no generalisation gain, weight 0
    w = ogr_weights(t0, v0, t1, v1)
    assert w.tolist() == pytest.approx([7.5 / 37.5, 30 / 37.5, 0.0], rel=1e-12)
    assert float(w.sum()) == pytest.approx(1.0, rel=1e-12)


def test_no_gain_anywhere_gives_uniform_weights_and_zero_do_is_floored():
    w = ogr_weights(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]),
                    torch.tensor([0.5, 0.4]), torch.tensor([1.1, 1.0]))
    assert w.tolist() == pytest.approx([0.5, 0.5])
    # dO = 0 for the first head: it gets (nearly) all the weight, and nothing is inf/nan
    w = ogr_weights(torch.tensor([1.0, 1.0]), torch.tensor([1.5, 1.5]),
                    torch.tensor([0.5, 0.5]), torch.tensor([1.0, 1.2]), eps=1e-8)
    assert torch.isfinite(w).all() and float(w[0]) > 0.999


@pytest.mark.parametrize("n_mod", [2, 3])
def test_loss_is_the_weighted_sum_of_unimodal_and_fused_cross_entropies(n_mod):
    torch.manual_seed(0)
    dims = [5, 4, 6][:n_mod]
    model = build_model(dims, 3, GBlending.fusion, {"hidden": [8], "dropout": 0.0})
    method = GBlending(dict(PARAMS), ctx(n_mod))
    method.setup(model)
    model.double()
    method.weights = torch.arange(1.0, n_mod + 2, **F64) / sum(range(1, n_mod + 2))
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(20, d, generator=g).double() for d in dims]
    y = torch.randint(0, 3, (20,), generator=g)
    out = method.forward(model, xs, None)
    res = method.loss(model, out, y, None)
    loss, logits = res.loss, res.logits
    with torch.no_grad():
        feats = [e(x) for e, x in zip(model.encoders, xs)]
        ces = [F.cross_entropy(h(f), y) for h, f in zip(model.extra["gb_heads"], feats)]
        ces.append(F.cross_entropy(model.fusion.fc(torch.cat(feats, 1)), y))
    expect = sum(float(w) * float(c) for w, c in zip(method.weights, ces))
    assert float(loss.detach()) == pytest.approx(expect, rel=1e-12)
    assert torch.equal(logits, out.fused)


def test_slice_heads_are_the_concat_head_slices():
    torch.manual_seed(0)
    model = build_model([5, 4], 3, "concat", {"hidden": [8], "dropout": 0.0})
    method = GBlending({**PARAMS, "unimodal_heads": "slice"}, ctx())
    method.setup(model)
    assert "gb_heads" not in model.extra
    model.double()
    xs = [torch.randn(7, 5, **F64), torch.randn(7, 4, **F64)]
    out = method.forward(model, xs, None)
    w, b = model.fusion.fc.weight, model.fusion.fc.bias
    assert_close_scaled(out.logits[1], out.feats[1] @ w[:, 8:].T + b / 2)
    assert_close_scaled(method._head_logits(model, xs, 0), out.logits[0])




def trainer(n_mod, params, tmp_path, epochs=3):
    return Trainer(tiny_features(n=60, dims=(5, 4, 6)[:n_mod]), params, {**TRAIN, "epochs": epochs}, 0, torch.device("cpu"),
                   tmp_path / "last.pt", None, "x")


@pytest.mark.parametrize("n_mod", [2, 3])
def test_probe_training_runs_and_reweights(n_mod, tmp_path, monkeypatch):
    tr = trainer(n_mod, dict(PARAMS), tmp_path)
    before = copy.deepcopy(tr.model.state_dict())
    probes = []
    orig = tr.method._probe
    monkeypatch.setattr(tr.method, "_probe", lambda run: probes.append(run.epoch) or orig(run))
    tr.fit()
    assert probes == [0, 2]                          # every super_epoch = 2 epochs, from the start
    w = tr.method.weights
    assert w.shape == (n_mod + 1,) and torch.isfinite(w).all() and (w >= 0).all()
    assert float(w.sum()) == pytest.approx(1.0, rel=1e-5)      # float32 weights: a few ulps
    assert not torch.allclose(w, torch.full_like(w, 1 / (n_mod + 1)))
    assert all(math.isfinite(r["train_loss"]) for r in tr.history)
    after = tr.model.state_dict()
    for key in ["encoders.0.net.0.weight", "fusion.fc.weight", "extra.gb_heads.0.weight"]:
        assert not torch.equal(before[key], after[key]), key


def test_trajectory_estimate_uses_train_and_validation_losses(tmp_path, monkeypatch):
    tr = trainer(2, {**PARAMS, "estimate": "trajectory"}, tmp_path, epochs=4)
    tr.fit()
    m, model, data = tr.method, tr.model, tr.data
    assert float(m.weights.sum()) == pytest.approx(1.0, rel=1e-5) and torch.isfinite(m.weights).all()
    # the stored checkpoint losses are those of the final model on train and on val (not test)
    model.eval()
    with torch.no_grad():
        for part, stored in zip(("train", "val"), m.ref):
            idx = data.index(part)
            feats = [e(v[idx]) for e, v in zip(model.encoders, data.views)]
            logits = [h(f) for h, f in zip(model.extra["gb_heads"], feats)] + [model(
                [v[idx] for v in data.views]).fused]
            expect = [float(F.cross_entropy(z, data.labels[idx])) for z in logits]
            assert stored.tolist() == pytest.approx(expect, rel=1e-5)
    state = m.state_dict()
    fresh = GBlending({**PARAMS, "estimate": "trajectory"}, tr.method.ctx)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weights, m.weights) and torch.equal(fresh.ref[1], m.ref[1])
