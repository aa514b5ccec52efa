"""AGM: Shapley mono outputs against explicit zero-padded forwards (the official formulas for two
and three modalities), the coefficient formula, the gradient scaling against the official
backward-hook implementation, the running average, the conditional clipping, a training run."""
import copy
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.data.sets.feature_set import FeatureSet
from torch import nn

from dyncim.methods.agm import AGM, agm_coefficients, mode_dependent
from dyncim.methods.base import Context, StepResult
from dyncim.models import MultimodalModel, build_model
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


class BatchNormEncoder(nn.Module):
    """Linear - BatchNorm - ReLU: like the ResNet-18 encoders, it computes differently in train mode
    (batch statistics, which it also accumulates) and eval mode (running statistics)."""

    def __init__(self, d, out=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, out), nn.BatchNorm1d(out), nn.ReLU())
        self.out_dim = out

    def forward(self, x):
        return self.net(x)


def toy_encoders(n_mod, kind, fusion="concat", seed=0):
    """A float64 model whose encoders are MLPs ("mlp", no dropout), BatchNorm encoders
    ("batchnorm") or MLPs with dropout 0.5 ("dropout"), and a batch whose inputs are far from the
    BatchNorm running statistics' initial values (mean 0, variance 1)."""
    torch.manual_seed(seed)
    dims = [5, 4, 3][:n_mod]
    if kind == "batchnorm":
        model = MultimodalModel([BatchNormEncoder(d) for d in dims], fusion, 3)
    else:
        model = build_model(dims, 3, fusion, {"hidden": [8], "dropout": 0.5 if kind == "dropout" else 0.0})
    model = model.to(torch.float64)
    g = torch.Generator().manual_seed(seed + 10)
    xs = [(2.0 + 3.0 * torch.randn(16, d, generator=g)).double() for d in dims]
    y = torch.randint(0, 3, (16,), generator=g)
    return model, xs, y


F64 = {"dtype": torch.float64}


def assert_close_scaled(got, want, rel=1e-9, msg=None):
    """Equal up to rel times the largest |want|: float64 sums in another order (another BLAS path)
    move any entry by ~1e-16 of the tensor's scale, a small entry relatively more."""
    want = want.detach()
    torch.testing.assert_close(got.detach(), want, rtol=rel, atol=rel * float(want.abs().max()), msg=msg)


def padded(model, xs, zero):
    """The official way: the whole model on inputs with the listed modalities zeroed."""
    return model([torch.zeros_like(x) if m in zero else x for m, x in enumerate(xs)]).fused


def official_passes(model, xs, zeroed, seed=5):
    """GradMod.forward (CREMAD_net.py / URFunny_net.py): f(all) in train mode, then the network in
    eval mode for every zero-padded pass, then back in train mode. {zeroed modalities: logits}."""
    torch.manual_seed(seed)                     # the dropout masks of the train-mode pass
    f = {(): model(xs).fused}
    model.eval()
    f.update({z: padded(model, xs, z) for z in zeroed})
    model.train()
    return f


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_two_modality_mono_outputs_match_official_formula(fusion):
    model, xs, y = toy(2, fusion, dtype=torch.float64)
    out = AGM(dict(PARAMS), ctx(2)).forward(model, xs, None)
    assert all(mod.training for mod in model.modules())  # the eval-mode zero pass is undone
    total, pad_a, pad_v = padded(model, xs, ()), padded(model, xs, (0,)), padded(model, xs, (1,))
    # CREMAD_net.py: m_a = (total - pad_audio + pad_visual) / 2, m_v = (total - pad_visual + pad_audio) / 2
    assert_close_scaled(out.logits[0], 0.5 * (total - pad_a + pad_v))
    assert_close_scaled(out.logits[1], 0.5 * (total - pad_v + pad_a))
    assert_close_scaled(out.fused, total)
    assert_close_scaled(out.logits[0] + out.logits[1], total)


def test_three_modality_mono_outputs_match_official_formula():
    model, xs, y = toy(3, dtype=torch.float64)
    out = AGM(dict(PARAMS), ctx(3)).forward(model, xs, None)
    v, a, t = 0, 1, 2   # URFunny_net.py's formulas, with modalities named v, a, t
    f = {z: padded(model, xs, z) for z in [(), (v,), (a,), (t,), (v, a), (v, t), (a, t)]}
    m_t = (f[()] - f[(t,)] + f[(v, a)]) / 3 + (f[(v,)] - f[(a, t)] + f[(a,)] - f[(v, t)]) / 6
    m_a = (f[()] - f[(a,)] + f[(v, t)]) / 3 + (f[(v,)] - f[(a, t)] + f[(t,)] - f[(v, a)]) / 6
    m_v = (f[()] - f[(v,)] + f[(a, t)]) / 3 + (f[(a,)] - f[(v, t)] + f[(t,)] - f[(v, a)]) / 6
    for got, want in zip(out.logits, [m_v, m_a, m_t]):
        assert_close_scaled(got, want)


def test_coefficients_two_and_three_modalities():
    # float64 against plain-Python doubles (float32 exp kernels differ between CPUs by an ulp or two)
    s, r = torch.tensor([0.9, 0.4], **F64), torch.tensor([1.0, 0.7], **F64)
    ratio, opt, c = agm_coefficients(s, r, alpha=2.0, cap=10.0)
    # run/CREMAD_main.py: ratio_a = exp(s_v - s_a), optimal_a = exp(r_v - r_a), coeff = exp(alpha min(opt - ratio, 10))
    ra, oa = math.exp(0.4 - 0.9), math.exp(0.7 - 1.0)
    rv, ov = 1 / ra, 1 / oa
    assert ratio.tolist() == pytest.approx([ra, rv], rel=1e-12)
    assert c.tolist() == pytest.approx([math.exp(2 * (oa - ra)), math.exp(2 * min(ov - rv, 10))], rel=1e-12)
    # the cap: a large gap is cut at `cap`
    _, _, c = agm_coefficients(torch.tensor([5.0, 0.0], **F64), torch.tensor([0.0, 5.0], **F64),
                               alpha=0.1, cap=7.0)
    assert float(c[0]) == pytest.approx(math.exp(0.1 * 7.0), rel=1e-12)
    # run/URFunny_main.py: ratio_m = exp((mean - s_m) * 3/2)
    s3, r3 = torch.tensor([0.2, 1.1, 0.5], **F64), torch.tensor([0.6, 0.6, 0.9], **F64)
    _, _, c3 = agm_coefficients(s3, r3, alpha=0.5, cap=7.0)
    ms, mr = sum(s3.tolist()) / 3, sum(r3.tolist()) / 3
    want = [math.exp(0.5 * min(math.exp((mr - ri) * 1.5) - math.exp((ms - si) * 1.5), 7))
            for si, ri in zip(s3.tolist(), r3.tolist())]
    assert c3.tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("kind", ["mlp", "batchnorm", "dropout"])
def test_gradients_equal_official_hook_implementation_and_running_average(kind):
    # float64 on both sides: gradients reach ~17 here, and float32 summation order (which BLAS
    # kernel runs) alone moves them by ~1e-5, so float32 could only be compared loosely
    model, xs, y = toy_encoders(2, kind)
    ref = copy.deepcopy(model)
    m = AGM({**PARAMS, "alpha": 1.5}, ctx(2))
    m.begin_epoch(at_epoch(0))
    m.running = torch.tensor([0.3, 1.9], dtype=torch.float64)   # float64 coefficients too
    m.iteration = 9
    torch.manual_seed(5)
    out = m.forward(model, xs, None)
    loss = m.loss(model, out, y, None).loss
    loss.backward()

    # independent: the official passes, scores by hand, coefficients by the official formula,
    # the official backward hooks
    f = official_passes(ref, xs, [(0,), (1,)])
    total, pad_a, pad_v = f[()], f[(0,)], f[(1,)]
    mono = [0.5 * (total - pad_a + pad_v), 0.5 * (total - pad_v + pad_a)]
    s = [float(-F.log_softmax(z.detach(), 1)[torch.arange(16), y].clamp(min=math.log(1e-8)).mean()) for z in mono]
    coef = [math.exp(1.5 * min(math.exp(1.9 - 0.3) - math.exp(s[1] - s[0]), 10)),
            math.exp(1.5 * min(math.exp(0.3 - 1.9) - math.exp(s[0] - s[1]), 10))]
    assert abs(coef[0] - 1) > 0.1 and abs(coef[1] - 1) > 0.1  # a real modulation
    for z, c in zip(mono, coef):
        z.register_hook(lambda g, c=c: g * c)
    F.cross_entropy(mono[0] + mono[1], y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert float(q.grad.abs().max()) > 1e-3, name             # a gradient to compare
        assert_close_scaled(p.grad, q.grad, msg=name)
    # running average over all steps: r <- r (t-1)/t + s/t with t = 10
    torch.testing.assert_close(m.running, torch.tensor([0.3 * 0.9 + s[0] / 10, 1.9 * 0.9 + s[1] / 10],
                                                       dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert m.iteration == 10


def official_mono(f, n_mod):
    """The official mono outputs from the passes {zeroed modalities: logits} (CREMAD_net.py for
    two modalities, URFunny_net.py for three, modalities there named (v, a, t) = (0, 1, 2))."""
    if n_mod == 2:
        return [0.5 * (f[()] - f[(0,)] + f[(1,)]), 0.5 * (f[()] - f[(1,)] + f[(0,)])]
    v, a, t = 0, 1, 2
    m_t = (f[()] - f[(t,)] + f[(v, a)]) / 3 + (f[(v,)] - f[(a, t)] + f[(a,)] - f[(v, t)]) / 6
    m_a = (f[()] - f[(a,)] + f[(v, t)]) / 3 + (f[(v,)] - f[(a, t)] + f[(t,)] - f[(v, a)]) / 6
    m_v = (f[()] - f[(v,)] + f[(a, t)]) / 3 + (f[(a,)] - f[(v, t)] + f[(t,)] - f[(v, a)]) / 6
    return [m_v, m_a, m_t]


def zero_sets(n_mod):
    """Every non-empty proper subset of the modalities, as the official zero-padded passes."""
    return [tuple(m for m in range(n_mod) if s >> m & 1) for s in range(1, 2 ** n_mod - 1)]


def test_mode_dependent_detects_batchnorm_and_dropout_only():
    assert not mode_dependent(toy_encoders(2, "mlp")[0])           # the default: MLPs, dropout 0
    assert not mode_dependent(build_model([5, 4], 3, "sum", {"hidden": [8, 4], "dropout": 0.0}))
    assert mode_dependent(toy_encoders(2, "batchnorm")[0])
    assert mode_dependent(toy_encoders(2, "dropout")[0])
    from dyncim.models.resnet import ResNet18Encoder
    assert mode_dependent(MultimodalModel([ResNet18Encoder(1), BatchNormEncoder(4)], "concat", 3))


@pytest.mark.parametrize("n_mod", [2, 3])
@pytest.mark.parametrize("kind", ["batchnorm", "dropout"])
def test_mode_dependent_encoders_get_the_official_eval_mode_zeroed_passes(kind, n_mod):
    model, xs, y = toy_encoders(n_mod, kind)
    ref, shortcut = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(5)
    out = AGM(dict(PARAMS), ctx(n_mod)).forward(model, xs, None)
    assert all(mod.training for mod in model.modules())           # every module back in train mode
    f = official_passes(ref, xs, zero_sets(n_mod))
    torch.testing.assert_close(out.fused, f[()], rtol=1e-12, atol=1e-12)   # f(all): train mode
    for got, want in zip(out.logits, official_mono(f, n_mod)):
        assert_close_scaled(got, want)
    # the training-mode pass alone updates the BatchNorm statistics, once (as the official forward)
    for (name, buf), want in zip(model.named_buffers(), ref.buffers()):
        torch.testing.assert_close(buf, want, rtol=1e-12, atol=1e-12, msg=name)
        assert not name.endswith("num_batches_tracked") or int(buf) == 1
    # reusing the training-mode features (the shortcut for mode-independent encoders) differs here
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dyncim.methods.agm.mode_dependent", lambda model: False)
        torch.manual_seed(5)
        cut = AGM(dict(PARAMS), ctx(n_mod)).forward(shortcut, xs, None)
    assert max(float((a - b).detach().abs().max()) for a, b in zip(cut.logits, out.logits)) > 1e-2


def test_batchnorm_zeroed_passes_use_no_batch_statistics():
    # m_a - m_v = f({a}) - f({v}) holds only the eval-mode passes: each row must depend on its own
    # sample alone (running statistics, frozen here by momentum 0), while f(all), in train mode,
    # normalises with the batch's statistics
    model, xs, y = toy_encoders(2, "batchnorm")
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.momentum = 0.0
    sub = copy.deepcopy(model)
    full = AGM(dict(PARAMS), ctx(2)).forward(model, xs, None)
    part = AGM(dict(PARAMS), ctx(2)).forward(sub, [x[:5] for x in xs], None)
    diff_full, diff_part = full.logits[0] - full.logits[1], part.logits[0] - part.logits[1]
    assert_close_scaled(diff_full[:5], diff_part)
    assert float((full.fused[:5] - part.fused).detach().abs().max()) > 1e-2


def test_no_modulation_outside_window_but_running_average_moves():
    model, xs, y = toy(2, dtype=torch.float64)
    ref = copy.deepcopy(model)
    m = AGM({**PARAMS, "modulation_starts": 2, "modulation_ends": 3}, ctx(2))
    m.begin_epoch(at_epoch(3))   # 0-based epoch 3 = official epoch 4: outside 2..3
    m.running.copy_(torch.tensor([0.3, 1.9]))
    m.iteration = 4
    loss = m.loss(model, m.forward(model, xs, None), y, None).loss
    loss.backward()
    F.cross_entropy(ref(xs).fused, y).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert_close_scaled(p.grad, q.grad)
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
