"""MMPareto: the two-task min-norm closed form, the non-conflict guarantee, the official magnitude
rule, the hook on a real model (2 and 3 modalities), and a short training run."""
import copy
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.methods.base import Context
from dyncim.methods.mmpareto import MMPareto, pareto_combine
from dyncim.models import build_model
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, tiny_features

PARAMS = {"type": "mmpareto", "gamma": 1.5, "rescale": "tensor"}
TRAIN = TRAIN_CFG


def ctx(n=2):
    return Context(names=["a", "b", "c"][:n], n_classes=3, n_samples=100, epochs=3,
                   steps_per_epoch=4, device=torch.device("cpu"))


def dot(xs, ys):
    return sum(float((x * y).sum()) for x, y in zip(xs, ys))


# Exact-formula comparisons run in float64: nearly cancelling gradients (g_uni ~ -g_mm) amplify
# float32 rounding, which differs between CPUs with the kernels' summation order.
F64 = {"dtype": torch.float64}


def assert_close_scaled(got, want, rel=1e-9):
    """Equal up to rel times the largest |want| (float64; another summation order moves any entry
    by ~1e-16 of the tensor's scale)."""
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.abs().max()))


def test_closed_form_on_a_2d_conflict():
    g_mm, g_uni = [torch.tensor([1.0, 0.0], **F64)], [torch.tensor([-1.0, 1.0], **F64)]
    # by hand: |c (1,0) + (1-c) (-1,1)|^2 = (2c-1)^2 + (1-c)^2, minimum at c = 0.6
    grid = [i / 10000 for i in range(10001)]
    c = min(grid, key=lambda c: (2 * c - 1) ** 2 + (1 - c) ** 2)
    assert c == pytest.approx(0.6)
    d = [2 * (c * 1.0 + (1 - c) * -1.0), 2 * (1 - c) * 1.0]          # (0.4, 0.8)
    scale = max(1.0 / math.hypot(*d), 1.0)                         # |g_mm + g_uni| = |(0, 1)| = 1
    new, conflict, cos = pareto_combine(g_mm, g_uni, gamma=1.0)
    assert bool(conflict) and float(cos) == pytest.approx(-1 / math.sqrt(2))
    assert new[0].tolist() == pytest.approx([d[0] * scale, d[1] * scale], rel=1e-12)
    # the min-norm element is equally aligned with both tasks
    assert dot(new, g_mm) == pytest.approx(dot(new, g_uni), rel=1e-12)
    assert dot(new, g_mm) > 0
    new15, _, _ = pareto_combine(g_mm, g_uni, gamma=1.5)
    assert new15[0].tolist() == pytest.approx([1.5 * d[0] * scale, 1.5 * d[1] * scale], rel=1e-12)


def test_no_conflict_is_the_plain_sum_times_gamma():
    g_mm = [torch.tensor([1.0, 0.0]), torch.tensor([2.0])]
    g_uni = [torch.tensor([1.0, 1.0]), torch.tensor([0.5])]
    new, conflict, _ = pareto_combine(g_mm, g_uni, gamma=1.5)
    assert not bool(conflict)
    assert new[0].tolist() == pytest.approx([3.0, 1.5])
    assert new[1].tolist() == pytest.approx([3.75])


@pytest.mark.parametrize("seed", range(20))
def test_combined_gradient_never_opposes_either_task(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (4,), (2, 4), (2,)]
    g_mm = [torch.randn(s, generator=g, **F64) * 3 for s in shapes]
    # half of the seeds strongly conflicting
    g_uni = [(-0.8 if seed % 2 else 0.3) * a + torch.randn(a.shape, generator=g, **F64) for a in g_mm]
    new, conflict, _ = pareto_combine(g_mm, g_uni, gamma=1.5, scope="encoder")
    assert bool(conflict) == (dot(g_mm, g_uni) <= 0)
    assert dot(new, g_mm) >= -1e-9 and dot(new, g_uni) >= -1e-9
    # magnitude: max(|g_mm + g_uni|, |d|) * gamma where d = 2 (c g_mm + (1 - c) g_uni)
    ref = math.sqrt(sum(float(((a + b) ** 2).sum()) for a, b in zip(g_mm, g_uni)))
    norm = math.sqrt(dot(new, new))
    assert norm >= 1.5 * ref * (1 - 1e-9)


def test_tensor_scope_follows_the_official_per_tensor_rule():
    g = torch.Generator().manual_seed(3)
    g_mm = [torch.randn(3, 2, generator=g).double(), torch.randn(5, generator=g).double() * 10]
    g_uni = [-a + 0.1 * torch.randn(a.shape, generator=g).double() for a in g_mm]
    # a tensor whose two gradients cancel: |g_mm + g_uni| = 0 there, so its part is never scaled down
    g_mm.append(torch.tensor([1.0, 0.0], **F64))
    g_uni.append(torch.tensor([-1.0, 0.0], **F64))
    flat1 = torch.cat([a.flatten() for a in g_mm])
    flat2 = torch.cat([b.flatten() for b in g_uni])
    # c minimising |c g1 + (1-c) g2| in closed form, written out independently
    c = float(((flat2 - flat1) @ flat2) / ((flat1 - flat2) @ (flat1 - flat2)))
    new, conflict, _ = pareto_combine(g_mm, g_uni, gamma=1.5, scope="tensor")
    assert bool(conflict)
    for a, b, n in zip(g_mm, g_uni, new):
        d = 2 * (c * a + (1 - c) * b)
        factor = max(float((a + b).norm() / d.norm()), 1.0)
        want = d * factor * 1.5
        torch.testing.assert_close(n, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))
    assert float(new[2].norm()) > 1e-3  # kept (times gamma), not scaled to |g_mm + g_uni| = 0


@pytest.mark.parametrize("n_mod", [2, 3])
def test_backward_hook_sets_pareto_grads_and_head_grads(n_mod):
    torch.manual_seed(0)
    dims = [5, 4, 6][:n_mod]
    model = build_model(dims, 3, MMPareto.fusion, {"hidden": [8], "dropout": 0.0})
    method = MMPareto({**PARAMS, "rescale": "encoder"}, ctx(n_mod))
    method.setup(model)
    model.double()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(24, d, generator=g).double() for d in dims]
    y = torch.randint(0, 3, (24,), generator=g)
    ref = copy.deepcopy(model)

    out = method.forward(model, xs, None)
    res = method.loss(model, out, y, None)
    loss, logits = res.loss, res.logits
    model.zero_grad(set_to_none=True)
    method.backward(model, res)

    # independent gradients on an identical copy
    o = ref(xs)
    l_mm = F.cross_entropy(o.fused, y)
    l_uni = [F.cross_entropy(h(f), y) for h, f in zip(ref.extra["uni_heads"], o.feats)]
    assert float(loss.detach()) == pytest.approx(float((l_mm + sum(l_uni)).detach()), rel=1e-12)
    assert torch.equal(logits, out.fused)
    gf = torch.autograd.grad(l_mm, list(ref.fusion.parameters()), retain_graph=True)
    for p, e in zip(model.fusion.parameters(), gf):
        assert_close_scaled(p.grad, e)
    for m in range(n_mod):
        enc_ref = list(ref.encoders[m].parameters())
        g_mm = torch.autograd.grad(l_mm, enc_ref, retain_graph=True)
        g_uni = torch.autograd.grad(l_uni[m], enc_ref + list(ref.extra["uni_heads"][m].parameters()),
                                    retain_graph=True)
        got = [p.grad for p in model.encoders[m].parameters()]
        assert dot(got, g_mm) >= -1e-7 and dot(got, g_uni[:len(enc_ref)]) >= -1e-7
        expect, _, _ = pareto_combine(list(g_mm), list(g_uni[:len(enc_ref)]), 1.5, "encoder")
        for a, b in zip(got, expect):
            assert_close_scaled(a, b)
        for p, e in zip(model.extra["uni_heads"][m].parameters(), g_uni[len(enc_ref):]):
            assert_close_scaled(p.grad, e)




@pytest.mark.parametrize("n_mod", [2, 3])
def test_training_runs_and_changes_the_model(n_mod, tmp_path, monkeypatch):
    tr = Trainer(tiny_features(n=60, dims=(5, 4, 6)[:n_mod]), dict(PARAMS), dict(TRAIN), 0, torch.device("cpu"), tmp_path / "last.pt",
                 None, "x")
    before = copy.deepcopy(tr.model.state_dict())
    tr.fit()
    assert len(tr.history) == 3
    assert all(math.isfinite(r["train_loss"]) for r in tr.history)
    after = tr.model.state_dict()
    for key in ["encoders.0.net.0.weight", f"encoders.{n_mod - 1}.net.0.weight", "fusion.fc.weight",
                "extra.uni_heads.0.weight"]:
        assert not torch.equal(before[key], after[key]), key
