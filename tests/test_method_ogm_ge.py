"""OGM-GE: the coefficients against the paper's formula, the exact gradient scaling, the epoch
window, the GE noise level, and a short training run."""
import copy
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.methods.base import Context, StepResult
from dyncim.methods.ogm_ge import OGMGE, confidence_scores, ogm_coefficients
from dyncim.models import build_model
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, at_epoch, tiny_features

PARAMS = {"type": "ogm-ge", "fusion": "concat", "alpha": 0.8, "modulation_starts": 0,
          "modulation_ends": 50, "ge": False}


def ctx(n=2, classes=3):
    return Context(names=["a", "b", "c"][:n], n_classes=classes, n_samples=100, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


# The formula tests run in float64 against plain-Python doubles, with tolerances far below any
# wrong formula's effect: float32 softmax/tanh kernels differ between CPUs by a few ulps.
F64 = {"dtype": torch.float64}


def test_coefficients_two_modalities_match_paper_formula():
    za = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0], [1.0, 0.0, 0.0]], **F64)
    zv = torch.tensor([[0.0, 0.2, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.0, 1.0]], **F64)
    y = torch.tensor([0, 1, 2, 0])

    def score(z):  # sum_i softmax(z_i)[y_i], written out in plain Python
        rows, labels = z.tolist(), y.tolist()
        return sum(math.exp(r[c]) / sum(math.exp(v) for v in r) for r, c in zip(rows, labels))

    s_a, s_v = score(za), score(zv)
    scores = confidence_scores([za, zv], y)
    assert scores.tolist() == pytest.approx([s_a, s_v], rel=1e-12)
    ratio, k = ogm_coefficients(scores, 0.8)
    rho_a = s_a / s_v
    assert rho_a > 1  # audio is the confident one here
    assert ratio.tolist() == pytest.approx([rho_a, 1 / rho_a], rel=1e-12)
    # Eq. (10): k = 1 - tanh(alpha rho) for the dominant modality, 1 for the other
    assert k.tolist() == pytest.approx([1 - math.tanh(0.8 * rho_a), 1.0], rel=1e-10)


def test_three_modalities_compare_with_mean_of_others():
    scores = torch.tensor([6.0, 3.0, 1.0], **F64)
    ratio, k = ogm_coefficients(scores, 0.5)
    expect = [6 / 2.0, 3 / 3.5, 1 / 4.5]
    assert ratio.tolist() == pytest.approx(expect, rel=1e-12)
    assert k.tolist() == pytest.approx([1 - math.tanh(0.5 * 3.0), 1.0, 1.0], rel=1e-12)


def _step(method, model, xs, y):
    out = model(xs)
    model.zero_grad()
    F.cross_entropy(out.fused, y).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    method.after_backward(model, StepResult(None, out.fused, out, y))
    return out, before


def _batch(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 5, generator=g) * 3, torch.randn(n, 4, generator=g)]
    y = torch.randint(0, 3, (n,), generator=g)
    return xs, y


def test_encoder_weight_gradients_scaled_by_exactly_the_coefficient():
    torch.manual_seed(0)      # float64: k is compared with a double-precision formula
    model = build_model([5, 4], 3, "concat", {"hidden": [8], "dropout": 0.0}).double()
    m = OGMGE(dict(PARAMS), ctx())
    m.begin_epoch(at_epoch(0))
    xs, y = _batch()
    xs = [x.double() for x in xs]
    out, before = _step(m, model, xs, y)
    # independent: per-modality logits from the concat head's weight slices + half the bias
    w, b = model.fusion.fc.weight.detach(), model.fusion.fc.bias.detach()
    ha, hv = (h.detach() for h in out.feats)
    s = [F.softmax(ha @ w[:, :8].T + b / 2, 1)[torch.arange(32), y].sum(),
         F.softmax(hv @ w[:, 8:].T + b / 2, 1)[torch.arange(32), y].sum()]
    rho = [float(s[0] / s[1]), float(s[1] / s[0])]
    k = [1 - math.tanh(0.8 * r) if r > 1 else 1.0 for r in rho]
    assert min(k) < 0.99  # a real modulation, not a no-op
    for name, p in model.named_parameters():
        if name.startswith("encoders.") and p.dim() >= 2:
            mod = int(name.split(".")[1])
            torch.testing.assert_close(p.grad, before[name] * k[mod], rtol=1e-10, atol=0)
        else:  # biases and the fusion head keep their gradient
            torch.testing.assert_close(p.grad, before[name], rtol=0, atol=0)


def test_no_modulation_outside_the_epoch_window():
    torch.manual_seed(0)
    model = build_model([5, 4], 3, "concat", {"hidden": [8], "dropout": 0.0})
    m = OGMGE({**PARAMS, "modulation_starts": 2, "modulation_ends": 3, "ge": True}, ctx())
    xs, y = _batch()
    for epoch, changed in [(1, False), (2, True), (3, True), (4, False)]:
        m.begin_epoch(at_epoch(epoch))
        _, before = _step(m, model, xs, y)
        w = model.encoders[0].net[0].weight
        assert (not torch.equal(w.grad, before["encoders.0.net.0.weight"])) == changed, epoch


def test_ge_noise_has_the_std_of_the_unmodulated_gradient():
    torch.manual_seed(1)
    model = build_model([400, 300], 3, "concat", {"hidden": [64], "dropout": 0.0})
    m = OGMGE({**PARAMS, "ge": True}, ctx())
    m.begin_epoch(at_epoch(0))
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(64, 400, generator=g), torch.randn(64, 300, generator=g)]
    y = torch.randint(0, 3, (64,), generator=g)
    out, before = _step(m, model, xs, y)
    k = m.last_coef
    for mod in range(2):
        name = f"encoders.{mod}.net.0.weight"
        g0 = before[name]
        resid = dict(model.named_parameters())[name].grad - k[mod] * g0
        assert float(resid.std()) == pytest.approx(float(g0.std()), rel=0.05)
        assert abs(float(resid.mean())) < 0.05 * float(g0.std())


def test_training_runs_and_changes_the_model(tmp_path, monkeypatch):
    data = tiny_features(n=60, informative=False)   # 36 train, 12 val, 12 test; pure noise
    train = dict(TRAIN_CFG)
    tr = Trainer(data, {**PARAMS, "ge": True}, train, 0, torch.device("cpu"), tmp_path / "last.pt",
                 None, "x")
    start = copy.deepcopy(tr.model.state_dict())
    tr.fit()
    assert all(math.isfinite(r["train_loss"]) for r in tr.history)
    assert len(tr.history) == 3
    assert any(not torch.equal(start[k], v) for k, v in tr.model.state_dict().items())
    assert tr.method.last_coef is not None and torch.isfinite(tr.method.last_coef).all()
    writer = RecordingWriter()
    tr.method.log(writer, 3)
    logged = writer.scalars
    assert math.isfinite(logged["ogm/coefficient_m0"])
