"""AGM: Shapley mono outputs against explicit zero-padded forwards (the official formulas for two
and three modalities), the coefficient formula, the gradient scaling against the official
backward-hook implementation, the running average, the conditional clipping, a training run."""
import copy
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.data.features import FeatureSet
from dyncim.methods.agm import AGM, agm_coefficients
from dyncim.methods.base import Context, StepResult
from dyncim.models import build_model
from dyncim.train.loop import Trainer
from tests.conftest import RecordingWriter, at_epoch

PARAMS = {"type": "agm", "fusion": "concat", "alpha": 1.0, "modulation_starts": 0,
          "modulation_ends": 20, "cap": 10.0, "grad_clip": 0.0}


def ctx(n=2):
    return Context(names=["a", "v", "t"][:n], n_classes=3, n_samples=100, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


def toy(n_mod, fusion="concat", seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    dims = [5, 4, 3][:n_mod]
    model = build_model(dims, 3, fusion, {"hidden": [8], "dropout": 0.0}).to(dtype)
    g = torch.Generator().manual_seed(seed + 10)
    xs = [torch.randn(16, d, generator=g).to(dtype) for d in dims]
    y = torch.randint(0, 3, (16,), generator=g)
    return model, xs, y


def padded(model, xs, zero):
    """The official way: the whole model on inputs with the listed modalities zeroed."""
    return model([torch.zeros_like(x) if m in zero else x for m, x in enumerate(xs)]).fused


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_two_modality_mono_outputs_match_official_formula(fusion):
    model, xs, y = toy(2, fusion)
    out = AGM(dict(PARAMS), ctx(2)).forward(model, xs, None)
    assert all(mod.training for mod in model.modules())  # the eval-mode zero pass is undone
    total, pad_a, pad_v = padded(model, xs, ()), padded(model, xs, (0,)), padded(model, xs, (1,))
    # CREMAD_net.py: m_a = (total - pad_audio + pad_visual) / 2, m_v = (total - pad_visual + pad_audio) / 2
    torch.testing.assert_close(out.logits[0], 0.5 * (total - pad_a + pad_v))
    torch.testing.assert_close(out.logits[1], 0.5 * (total - pad_v + pad_a))
    torch.testing.assert_close(out.fused, total)
    torch.testing.assert_close(out.logits[0] + out.logits[1], total)


def test_three_modality_mono_outputs_match_official_formula():
    model, xs, y = toy(3)
    out = AGM(dict(PARAMS), ctx(3)).forward(model, xs, None)
    v, a, t = 0, 1, 2   # URFunny_net.py's formulas, with modalities named v, a, t
    f = {z: padded(model, xs, z) for z in [(), (v,), (a,), (t,), (v, a), (v, t), (a, t)]}
    m_t = (f[()] - f[(t,)] + f[(v, a)]) / 3 + (f[(v,)] - f[(a, t)] + f[(a,)] - f[(v, t)]) / 6
    m_a = (f[()] - f[(a,)] + f[(v, t)]) / 3 + (f[(v,)] - f[(a, t)] + f[(t,)] - f[(v, a)]) / 6
    m_v = (f[()] - f[(v,)] + f[(a, t)]) / 3 + (f[(a,)] - f[(v, t)] + f[(t,)] - f[(v, a)]) / 6
    for got, want in zip(out.logits, [m_v, m_a, m_t]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_coefficients_two_and_three_modalities():
    s, r = torch.tensor([0.9, 0.4]), torch.tensor([1.0, 0.7])
    ratio, opt, c = agm_coefficients(s, r, alpha=2.0, cap=10.0)
    # run/CREMAD_main.py: ratio_a = exp(s_v - s_a), optimal_a = exp(r_v - r_a), coeff = exp(alpha min(opt - ratio, 10))
    ra, oa = math.exp(0.4 - 0.9), math.exp(0.7 - 1.0)
    rv, ov = 1 / ra, 1 / oa
    assert ratio.tolist() == pytest.approx([ra, rv], rel=1e-6)
    assert c.tolist() == pytest.approx([math.exp(2 * (oa - ra)), math.exp(2 * min(ov - rv, 10))], rel=1e-5)
    # the cap: a large gap is cut at `cap`
    _, _, c = agm_coefficients(torch.tensor([5.0, 0.0]), torch.tensor([0.0, 5.0]), alpha=0.1, cap=7.0)
    assert float(c[0]) == pytest.approx(math.exp(0.1 * 7.0), rel=1e-6)
    # run/URFunny_main.py: ratio_m = exp((mean - s_m) * 3/2)
    s3, r3 = torch.tensor([0.2, 1.1, 0.5]), torch.tensor([0.6, 0.6, 0.9])
    _, _, c3 = agm_coefficients(s3, r3, alpha=0.5, cap=7.0)
    ms, mr = sum(s3.tolist()) / 3, sum(r3.tolist()) / 3
    want = [math.exp(0.5 * min(math.exp((mr - ri) * 1.5) - math.exp((ms - si) * 1.5), 7))
            for si, ri in zip(s3.tolist(), r3.tolist())]
    assert c3.tolist() == pytest.approx(want, rel=1e-5)


def test_gradients_equal_official_hook_implementation_and_running_average():
    # float64 on both sides: gradients reach ~17 here, and float32 summation order (which BLAS
    # kernel runs) alone moves them by ~1e-5, more than a tight tolerance allows
    model, xs, y = toy(2, dtype=torch.float64)
    ref = copy.deepcopy(model)
    m = AGM({**PARAMS, "alpha": 1.5}, ctx(2))
    m.begin_epoch(at_epoch(0))
    m.running.copy_(torch.tensor([0.3, 1.9]))
    m.iteration = 9
    out = m.forward(model, xs, None)
    loss = m.loss(model, out, y, None).loss
    loss.backward()

    # independent: scores by hand, coefficients by the official formula, backward hooks
    refo = ref(xs).fused
    total, pad_a, pad_v = refo, padded(ref, xs, (0,)), padded(ref, xs, (1,))
    mono = [0.5 * (total - pad_a + pad_v), 0.5 * (total - pad_v + pad_a)]
    s = [float(-F.log_softmax(z.detach(), 1)[torch.arange(16), y].clamp(min=math.log(1e-8)).mean()) for z in mono]
    coef = [math.exp(1.5 * min(math.exp(1.9 - 0.3) - math.exp(s[1] - s[0]), 10)),
            math.exp(1.5 * min(math.exp(0.3 - 1.9) - math.exp(s[0] - s[1]), 10))]
    assert abs(coef[0] - 1) > 0.1 and abs(coef[1] - 1) > 0.1  # a real modulation
    for z, c in zip(mono, coef):
        z.register_hook(lambda g, c=c: g * c)
    F.cross_entropy(mono[0] + mono[1], y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    # running average over all steps: r <- r (t-1)/t + s/t with t = 10
    torch.testing.assert_close(m.running, torch.tensor([0.3 * 0.9 + s[0] / 10, 1.9 * 0.9 + s[1] / 10]))
    assert m.iteration == 10


def test_no_modulation_outside_window_but_running_average_moves():
    model, xs, y = toy(2)
    ref = copy.deepcopy(model)
    m = AGM({**PARAMS, "modulation_starts": 2, "modulation_ends": 3}, ctx(2))
    m.begin_epoch(at_epoch(3))   # 0-based epoch 3 = official epoch 4: outside 2..3
    m.running.copy_(torch.tensor([0.3, 1.9]))
    m.iteration = 4
    loss = m.loss(model, m.forward(model, xs, None), y, None).loss
    loss.backward()
    F.cross_entropy(ref(xs).fused, y).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(m.running, torch.tensor([0.3, 1.9]))


def test_clipping_only_when_a_head_gradient_leaves_the_range():
    model, xs, y = toy(2)
    m = AGM({**PARAMS, "grad_clip": 1.0}, ctx(2))
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.1)
    m.after_backward(model, StepResult(None, None, None, y))
    assert all(torch.equal(p.grad, torch.full_like(p, 0.1)) for p in model.parameters())
    model.fusion.fc.weight.grad[0, 0] = -3.0
    m.after_backward(model, StepResult(None, None, None, y))
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert float(total) == pytest.approx(1.0, rel=1e-4)


def test_training_runs_and_changes_the_model(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    n = 60
    data = FeatureSet(["a", "v", "t"], 3, [torch.randn(n, d, generator=g) for d in (5, 4, 3)],
                      torch.arange(n) % 3, torch.tensor([0] * 36 + [1] * 12 + [2] * 12), None)
    train = {"epochs": 3, "batch_size": 16, "eval_batch_size": 64, "optimizer": "sgd", "lr": 0.05,
             "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 0, "lr_gamma": 0.1, "hidden": [8],
             "dropout": 0.1, "checkpoint_every": 1}
    tr = Trainer(data, {**PARAMS, "grad_clip": 1.0}, train, 0, torch.device("cpu"), tmp_path / "last.pt",
                 None, "x")
    start = copy.deepcopy(tr.model.state_dict())
    tr.fit()
    assert all(math.isfinite(r["train_loss"]) for r in tr.history)
    assert any(not torch.equal(start[k], v) for k, v in tr.model.state_dict().items())
    assert tr.method.iteration == 3 * 3 and torch.isfinite(tr.method.running).all()
    writer = RecordingWriter()
    tr.method.log(writer, 3)
    logged = writer.scalars
    assert math.isfinite(logged["agm/coefficient_a"])
