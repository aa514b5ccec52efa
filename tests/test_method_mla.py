"""MLA: modalities alternate update by update through one shared head, the head's gradient is
projected orthogonally to the stored directions, entropy-weighted fusion at test time, and short
training runs (2 and 3 modalities, both alternation schedules)."""
import copy
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.data.sets.feature_set import FeatureSet
from dyncim.methods.base import Context
from dyncim.methods.mla import MLA
from dyncim.models import build_model
from dyncim.models.multimodal import Output
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG

PARAMS = {"type": "mla", "alternate": "batch", "owm_alpha": 0.1, "normalize_projector": True,
          "dynamic_fusion": True, "fusion_weights": []}
TRAIN = TRAIN_CFG
DIMS = [5, 4, 6]


def ctx(n=2, steps=4):
    return Context(names=["a", "b", "c"][:n], n_classes=3, n_samples=100, epochs=3,
                   steps_per_epoch=steps, device=torch.device("cpu"))


def build(n_mod, params, hidden=(8,)):
    torch.manual_seed(0)
    model = build_model(DIMS[:n_mod], 3, MLA.fusion, {"hidden": list(hidden), "dropout": 0.0})
    method = MLA(params, ctx(n_mod))
    method.setup(model)
    return model, method


def batch(n_mod, n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) for d in DIMS[:n_mod]], torch.randint(0, 3, (n,), generator=g)


def test_head_is_shared_and_aliased_into_the_fusion():
    model, _ = build(3, dict(PARAMS))
    head = model.extra["mla_head"]
    assert all(h is head for h in model.fusion.heads)
    assert sum(p is head.weight for p in model.parameters()) == 1  # one parameter set, once
    xs, _ = batch(3)
    out = model(xs)
    for m in range(3):
        assert torch.allclose(out.logits[m], head(out.feats[m]))


@pytest.mark.parametrize("n_mod", [2, 3])
def test_step_schedule_alternates_one_modality_per_step(n_mod):
    model, method = build(n_mod, {**PARAMS, "alternate": "step"})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for step in range(2 * n_mod + 1):
        xs, y = batch(n_mod, seed=step)
        out = method.forward(model, xs, None)
        res = method.loss(model, out, y, None)
        loss, logits = res.loss, res.logits
        opt.zero_grad(set_to_none=True)
        method.backward(model, res)
        with_grad = [m for m, e in enumerate(model.encoders) if e.net[0].weight.grad is not None]
        assert model.extra["mla_head"].weight.grad is not None
        # only this step's modality ran and got gradients; the loss is its unimodal cross-entropy
        assert [f is not None for f in out.feats].count(True) == 1
        seen.append(with_grad)
        m = with_grad[0]
        head = model.extra["mla_head"]
        assert float(loss.detach()) == pytest.approx(
            float(F.cross_entropy(head(model.encoders[m](xs[m])), y).detach()), rel=1e-5)
        opt.step()
    assert seen == [[t % n_mod] for t in range(2 * n_mod + 1)]
    assert method.updates == 2 * n_mod + 1


@pytest.mark.parametrize("n_mod", [2, 3])
def test_batch_schedule_updates_every_modality_in_turn(n_mod, monkeypatch):
    model, method = build(n_mod, dict(PARAMS))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method.optimizer = opt
    order, steps = [], []
    orig_modify, orig_step = method._modify, opt.step
    monkeypatch.setattr(method, "_modify", lambda mdl, m, h: order.append(m) or orig_modify(mdl, m, h))
    monkeypatch.setattr(opt, "step", lambda *a, **k: steps.append(
        [m for m, e in enumerate(model.encoders) if e.net[0].weight.grad is not None]) or orig_step(*a, **k))
    start = copy.deepcopy(model.state_dict())
    xs, y = batch(n_mod)
    out = method.forward(model, xs, None)
    res = method.loss(model, out, y, None)
    opt.zero_grad(set_to_none=True)
    method.backward(model, res)
    opt.step()                                     # the loop's step: the last modality
    assert order == list(range(n_mod))
    assert steps == [[m] for m in range(n_mod)]    # one optimiser step per modality, alone
    assert method.updates == n_mod and method.batch == 1
    now = model.state_dict()
    for m in range(n_mod):
        key = f"encoders.{m}.net.0.weight"
        assert not torch.equal(start[key], now[key]), key


def test_projected_head_gradient_is_orthogonal_to_the_stored_direction():
    model, method = build(2, {**PARAMS, "owm_alpha": 1e-9}, hidden=(4,))
    w = model.extra["mla_head"].weight
    h0 = torch.tensor([[1.0, 2.0, 0.0, 1.0], [3.0, 0.0, 1.0, 1.0]])   # mean r0 = (2, 1, .5, 1)
    g0 = torch.randn(3, 4)
    w.grad = g0.clone()
    method._modify(model, 0, h0)                   # first update: P = I, gradient unchanged
    assert torch.equal(w.grad, g0)
    r0 = h0.mean(0, keepdim=True)
    g1 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, -1.0, 2.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    w.grad = g1.clone()
    method._modify(model, 1, torch.randn(5, 4))
    # by hand: P1 = (I - r0^T r0 / (alpha + |r0|^2)) / ||.||_F, projected gradient g1 P1^T
    alpha = 1e-9
    p1 = torch.eye(4) - r0.t() @ r0 / (alpha + float(r0 @ r0.t()))
    p1 = p1 / p1.norm()
    # float32 (the projector is the method's float32 state): a tolerance scaled to the gradient's
    # size, ~100 times the rounding of another summation order, far below a missing term's effect
    want = g1 @ p1.t()
    torch.testing.assert_close(w.grad, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    cos = (w.grad @ r0.t()).abs().squeeze(1) / (w.grad.norm(dim=1) * r0.norm())
    assert float(cos.max()) < 1e-5                 # every row orthogonal to the stored direction
    assert float((g1 @ r0.t()).abs().max()) > 1.0  # and it was not before


def test_dynamic_fusion_weights_by_per_sample_entropy():
    model, method = build(2, dict(PARAMS), hidden=(3,))
    head = model.extra["mla_head"]
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
        head.bias.zero_()
    za = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.2]])   # confident, then unsure
    zb = torch.tensor([[0.0, 0.3, 0.0], [0.0, 5.0, 0.0]])   # unsure, then confident
    pred = method.predict(model, Output([za, zb], [None, None], None))

    def entropy(row):
        e = [math.exp(v) for v in row]
        p = [v / sum(e) for v in e]
        return -sum(q * math.log(q) for q in p)

    for i in range(2):
        ea, eb = entropy(za[i].tolist()), entropy(zb[i].tolist())
        mx = max(ea, eb)
        wa, wb = math.exp(mx - ea), math.exp(mx - eb)
        wa, wb = wa / (wa + wb), wb / (wa + wb)
        expect = [wa * a + wb * b for a, b in zip(za[i].tolist(), zb[i].tolist())]
        assert pred[i].tolist() == pytest.approx(expect, rel=1e-5)
    assert pred[0].argmax() == 0 and pred[1].argmax() == 1  # the confident modality decides
    _, fixed = build(2, {**PARAMS, "dynamic_fusion": False, "fusion_weights": [0.25, 0.75]}, hidden=(3,))
    assert torch.allclose(fixed.predict(model, Output([za, zb], [None, None], None)), 0.25 * za + 0.75 * zb)


def tiny(n_mod, n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    views = [(torch.randn(3, d, generator=g)[labels] + torch.randn(n, d, generator=g)).float()
             for d in DIMS[:n_mod]]
    split = torch.zeros(n, dtype=torch.int8)
    split[36:48], split[48:] = 1, 2
    return FeatureSet(["a", "b", "c"][:n_mod], 3, views, labels, split, None)


@pytest.mark.parametrize("n_mod,alternate", [(2, "batch"), (3, "batch"), (2, "step"), (3, "step")])
def test_training_runs_and_changes_the_model(n_mod, alternate, tmp_path, monkeypatch):
    tr = Trainer(tiny(n_mod), {**PARAMS, "alternate": alternate}, dict(TRAIN), 0, torch.device("cpu"),
                 tmp_path / "last.pt", None, "x")
    before = copy.deepcopy(tr.model.state_dict())
    tr.fit()
    assert all(math.isfinite(r["train_loss"]) for r in tr.history) and len(tr.history) == 3
    after = tr.model.state_dict()
    for key in [f"encoders.{m}.net.0.weight" for m in range(n_mod)] + ["extra.mla_head.weight"]:
        assert not torch.equal(before[key], after[key]), key
    steps = tr.method.ctx.steps_per_epoch * 3
    assert tr.method.updates == (steps * n_mod if alternate == "batch" else steps)
    assert torch.isfinite(tr.method.P).all()
    # resume state restores the projector and the update count
    fresh = MLA({**PARAMS, "alternate": alternate}, tr.method.ctx)
    fresh.load_state_dict(tr.method.state_dict())
    assert torch.equal(fresh.P, tr.method.P) and fresh.updates == tr.method.updates
