"""InfoReg: the Fisher trace against an independent autograd computation, the window's on/off
epochs on constructed traces, the proximal term and its gradient, which encoder is regularised
(the leading one, each with its own weight),
the three-modality refusal, and a training run that learns and resumes exactly."""
import copy
import math

import pytest
import torch
import yaml
from torch.nn import functional as F

from dyncim import config as C
from dyncim.methods.base import Context
from dyncim.methods.inforeg import InfoReg, window_factor
from dyncim.models import build_model
from dyncim.train.loop import Trainer
from tests.conftest import REPO, TRAIN_CFG, RecordingWriter, at_epoch, tiny_features

PARAMS = {"type": "inforeg", "fusion": "concat", "window": 10, "threshold": 0.05, "beta": 0.95, "beta_other": 0.1}
F64 = {"dtype": torch.float64}


def ctx(n=2, classes=3):
    return Context(names=["a", "v", "t"][:n], n_classes=classes, n_samples=100, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


def _model(method=None, seed=0):
    torch.manual_seed(seed)
    model = build_model([5, 4], 3, "concat", {"hidden": [6], "dropout": 0.0})
    if method is not None:
        method.setup(model)
    return model.double()


def _batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 5, generator=g, **F64) * 2, torch.randn(n, 4, generator=g, **F64) * 0.1]
    return xs, torch.randint(0, 3, (n,), generator=g)


def _lead(model, m, y):
    """Make modality m's head confident in class 0 and the other head uniform; y all class 0."""
    with torch.no_grad():
        for j, head in enumerate(model.extra["inforeg_heads"]):
            head.weight.mul_(0.01)
            head.bias.copy_(torch.tensor([3.0, 0.0, 0.0]) if j == m else torch.zeros(3))
    y.zero_()


def _step(method, model, xs, y):
    model.zero_grad()
    res = method.loss(model, model(xs), y, None)
    res.loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    method.after_backward(model, res)
    return res, before


def test_window_factor_on_constructed_traces():
    # epoch 0: k = 1; epoch 1: tr2 = sum([]) = 0, so k = 1 (the official slicing)
    assert window_factor([], 10) == 1.0
    assert window_factor([5.0], 10) == 1.0
    # epoch 2: tr1 = (4 + 6) / 10, tr2 = 4 / 10 -> k = 0.6
    assert window_factor([4.0, 6.0], 10) == pytest.approx(0.6, rel=1e-12)
    # a full window: traces 1..12, w = 10: tr1 = sum(3..12)/10 = 7.5, tr2 = sum(2..11)/10 = 6.5
    t = [float(i) for i in range(1, 13)]
    assert window_factor(t, 10) == pytest.approx((7.5 - 6.5) / 7.5, rel=1e-12)
    # on / off epochs with threshold 0.05: the trace grows by 50% a step for 4 epochs, then is flat
    traces = [1.0, 1.5, 2.25, 3.375] + [3.375] * 30
    m = InfoReg(dict(PARAMS), ctx())
    on = []
    model = _model()
    for e in range(len(traces) + 1):
        m.traces[0] = traces[:e]
        m.begin_epoch(at_epoch(e, model=model))
        on.append(m.in_window())
    # by hand: k_e = traces[e-1] / sum(traces[:e]) while e <= 10 (tr2 covers traces[:e-1]),
    # then (t[e-1] - t[e-11]) / sum(t[e-10:e])
    expect = []
    for e in range(len(traces) + 1):
        if e <= 1:
            k = 1.0
        elif e <= 10:
            k = traces[e - 1] / sum(traces[:e])
        else:
            k = (traces[e - 1] - traces[e - 11]) / sum(traces[e - 10:e])
        expect.append(k > 0.05)
    assert on == expect
    # on at first, off once the flat traces dominate, never back on when nothing grows
    first_off = on.index(False)
    assert first_off > 4 and not any(on[first_off:])


def test_fisher_trace_matches_independent_autograd():
    m = InfoReg({**PARAMS, "threshold": 1e9}, ctx())   # no regularisation: plain loss gradients
    model = _model(m)
    m.begin_epoch(at_epoch(0, model=model))
    batches = [_batch(s) for s in range(3)]
    for xs, y in batches:
        _step(m, model, xs, y)
    # independent: torch.autograd.grad of the official objective, per Linear weight of each encoder
    expect = []
    for enc in range(2):
        weights = [w for name, w in model.encoders[enc].named_parameters()
                   if name.endswith("weight") and w.dim() == 2]
        acc = [torch.zeros_like(w) for w in weights]
        for xs, y in batches:
            out = model(xs)
            heads = model.extra["inforeg_heads"]
            obj = F.cross_entropy(out.fused, y) + sum(F.cross_entropy(h(f), y)
                                                      for h, f in zip(heads, out.feats))
            for a, g in zip(acc, torch.autograd.grad(obj, weights)):
                a += g * g
        expect.append(sum(float(a.mean()) for a in acc))
    m.on_epoch_end(at_epoch(0))
    assert [t[0] for t in m.traces] == pytest.approx(expect, rel=1e-5)
    assert min(expect) > 0


def test_proximal_term_and_its_gradient():
    m = InfoReg(dict(PARAMS), ctx())
    model = _model(m)
    m.begin_epoch(at_epoch(0, model=model))
    theta0 = [p.detach().clone() for p in model.encoders[0].parameters()]
    with torch.no_grad():   # move away from the snapshot
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    xs, y = _batch()
    _lead(model, 0, y)
    res, before = _step(m, model, xs, y)
    heads = [h.detach() for h in res.terms]
    s = [float(F.softmax(z, 1)[torch.arange(len(y)), y].sum()) for z in heads]
    assert s[0] > s[1]     # modality 0 (scaled-up inputs) leads here
    beta = 0.95 * math.exp(math.tanh(s[0] - s[1]))
    # the added gradient is that of (beta / 2) ||theta - theta0||^2, by autograd
    enc0 = list(model.encoders[0].parameters())
    prox = sum((p - p0).pow(2).sum() for p, p0 in zip(enc0, theta0)) * beta / 2
    grads = torch.autograd.grad(prox, enc0)
    names = [n for n, _ in model.named_parameters()]
    for name, p in zip(names, model.parameters()):
        if name.startswith("encoders.0."):
            i = [q is p for q in enc0].index(True)
            torch.testing.assert_close(p.grad, before[name] + grads[i], rtol=1e-12, atol=1e-14)
            assert float(grads[i].abs().max()) > 0
        else:   # the other encoder and the heads keep their gradient
            torch.testing.assert_close(p.grad, before[name], rtol=0, atol=0)


@pytest.mark.parametrize("beta_other", [0.1, 0.0])
def test_modality_1_leading_regularises_encoder_1_with_beta_other_and_nothing_outside_the_window(beta_other):
    m = InfoReg({**PARAMS, "beta_other": beta_other}, ctx())
    model = _model(m)
    m.begin_epoch(at_epoch(0, model=model))
    theta0 = [p.detach().clone() for p in model.encoders[1].parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    xs, y = _batch()
    # modality 1 leads: current official code (ea7b9d5) adds 0.1 exp(tanh(s_1 - s_0)) (theta - theta0)
    # to encoder 1 only; beta_other 0 is the first release, where that branch never ran
    _lead(model, 1, y)
    res, before = _step(m, model, xs, y)
    s = [float(F.softmax(z.detach(), 1)[torch.arange(len(y)), y].sum()) for z in res.terms]
    assert s[0] < s[1] and m.in_window()
    b = beta_other * math.exp(math.tanh(s[1] - s[0]))
    enc1 = list(model.encoders[1].parameters())
    for name, p in model.named_parameters():
        if name.startswith("encoders.1."):
            i = [q is p for q in enc1].index(True)
            torch.testing.assert_close(p.grad, before[name] + b * (p.detach() - theta0[i]), rtol=1e-12, atol=1e-14)
            assert (b > 0) == bool((p.grad != before[name]).any())
        else:   # encoder 0 and the heads keep their gradient
            torch.testing.assert_close(p.grad, before[name], rtol=0, atol=0)
    _lead(model, 0, y)
    # outside the window (k <= threshold): modality 0 leading, still no change
    m.traces[0] = [1.0] * 12
    m.begin_epoch(at_epoch(12, model=model))
    assert not m.in_window()
    _, before = _step(m, model, xs, y)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, before[name], rtol=0, atol=0)


def test_three_modalities_refused_by_the_params_check():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["run"]["methods"] = ["inforeg"]
    raw["run"]["datasets"].append("mfeat-fou-zer-mor")
    with pytest.raises(C.ParamsError, match="'inforeg'.*at most 2 modalities.*mfeat-fou-zer-mor"):
        C.resolve(raw)


def test_defaults_in_params():
    p = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert {k: p["methods"]["inforeg"][k] for k in ("window", "threshold", "beta", "beta_other")} == \
        {"window": 10, "threshold": 0.05, "beta": 0.95, "beta_other": 0.1}


def _trainer(path, epochs, data):
    return Trainer(data, dict(PARAMS), {**TRAIN_CFG, "epochs": epochs}, 0, torch.device("cpu"), path,
                   None, "x")


def test_training_learns_and_resumes_exactly(tmp_path):
    data = tiny_features(n=90)
    a = _trainer(tmp_path / "a.pt", 4, data)
    start = copy.deepcopy(a.model.state_dict())
    a.fit()
    losses = [r["train_loss"] for r in a.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert any(not torch.equal(start[k], v) for k, v in a.model.state_dict().items())
    assert all(len(t) == 4 and min(t) > 0 for t in a.method.traces)
    w = RecordingWriter()
    a.method.log(w, 4)
    assert math.isfinite(w.scalars["inforeg/fisher_trace_m0"])
    fractions = [w.scalars[f"inforeg/regularised_fraction_{n}"] for n in ("m0", "m1")]
    assert all(0 <= f <= 1 for f in fractions) and 0 < sum(fractions) <= 1   # one leader per step
    _trainer(tmp_path / "b.pt", 2, data).fit()
    b = _trainer(tmp_path / "b.pt", 4, data)
    b.fit()
    assert b.history == a.history
    assert b.method.traces == a.method.traces
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
