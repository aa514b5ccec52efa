"""PMR: prototypes as class means, the prototype cross-entropy and its coefficients against a
plain-Python hand computation, the entropy term and its schedule, momentum, a training run."""
import copy
import math

import pytest
import torch

from dyncim.methods.base import Context
from dyncim.methods.pmr import PMR, class_prototypes
from dyncim.models.multimodal import Output
from dyncim.train.inference import evaluate_split
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, tiny_features

PARAMS = {"type": "pmr", "fusion": "concat", "alpha": 1.0, "modulation_starts": 0,
          "modulation_ends": 100, "momentum_coef": 0.2, "coefficient": "clip", "mu": 0.0,
          "per_epochs": 10}


def ctx(n=2, classes=3):
    return Context(names=["a", "v", "t"][:n], n_classes=classes, n_samples=100, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


# fixed inputs: 2-d features, 3 classes, 4 samples
HA = [[0.0, 0.0], [1.0, 0.5], [2.0, 2.0], [0.2, -0.1]]
HV = [[0.5, 0.5], [0.4, 0.6], [0.6, 0.4], [0.5, 0.5]]
CA = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]
CV = [[0.0, 0.0], [1.0, 1.0], [0.5, -1.0]]
Y = [0, 1, 2, 0]
FUSED = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.5], [0.3, 0.3, 0.3], [0.0, 0.0, 1.0]]


def hand_probs(h, c):
    """softmax over k of -||h - c_k||, in plain Python."""
    out = []
    for hi in h:
        e = [math.exp(-math.sqrt(sum((a - b) ** 2 for a, b in zip(hi, ck)))) for ck in c]
        out.append([v / sum(e) for v in e])
    return out


def hand_ce(rows, y):
    return -sum(math.log(r[c]) for r, c in zip(rows, y)) / len(y)


def hand_softmax(z):
    return [[math.exp(v) / sum(math.exp(u) for u in r) for v in r] for r in z]


# The loss tests run in float64 against plain-Python doubles: float32 distances, softmax and logs
# differ between CPUs by a few ulps, float64 leaves tolerances far below any wrong term's effect.
F64 = {"dtype": torch.float64}


def make(params, n=2):
    m = PMR({**PARAMS, **params}, ctx(n))
    m.epoch = 0
    m.protos = [torch.tensor(CA, **F64), torch.tensor(CV, **F64)]
    return m


def output():
    return Output([torch.tensor(HA, **F64), torch.tensor(HV, **F64)], [], torch.tensor(FUSED, **F64))


def test_class_prototypes_are_class_means():
    h = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [5.0, 6.0]])
    y = torch.tensor([0, 0, 2, 0])
    p = class_prototypes(h, y, 4)
    torch.testing.assert_close(p, torch.tensor([[3.0, 4.0], [0.0, 0.0], [10.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("rule", ["clip", "binary"])
def test_prototype_ce_loss_equals_hand_computation(rule):
    m = make({"alpha": 2.0, "coefficient": rule})
    res = m.loss(None, output(), torch.tensor(Y), None)
    loss, logits = res.loss, res.logits
    pa, pv = hand_probs(HA, CA), hand_probs(HV, CV)
    sa, sv = sum(r[c] for r, c in zip(pa, Y)), sum(r[c] for r, c in zip(pv, Y))
    assert sa > sv  # audio leads: the visual prototype loss is switched on
    if rule == "clip":
        beta_v = 2.0 * min(max(sa / sv - 1, 0), 1)
    else:
        beta_v = 2.0
    want = hand_ce(hand_softmax(FUSED), Y) + beta_v * hand_ce(pv, Y)
    assert float(loss) == pytest.approx(want, rel=1e-12)
    torch.testing.assert_close(logits, torch.tensor(FUSED, **F64))


def test_entropy_regularisation_and_its_schedule():
    y = torch.tensor(Y)
    pa, pv = hand_probs(HA, CA), hand_probs(HV, CV)
    sa, sv = sum(r[c] for r, c in zip(pa, Y)), sum(r[c] for r, c in zip(pv, Y))
    beta_v, gamma_a = min(max(sa / sv - 1, 0), 1), min(max(sa / sv - 1, 0), 1)
    ent_a = -sum(sum(p * math.log(p) for p in r) for r in pa) / len(pa)
    base = hand_ce(hand_softmax(FUSED), Y) + beta_v * hand_ce(pv, Y)
    m = make({"mu": 0.5, "modulation_starts": 2, "per_epochs": 3})
    for epoch, with_per in [(2, True), (5, True), (6, False)]:
        m.epoch = epoch
        res = m.loss(None, output(), y, None)
        loss, _ = res.loss, res.logits
        want = base - 0.5 * gamma_a * ent_a if with_per else base
        assert float(loss) == pytest.approx(want, rel=1e-12), epoch
    m.epoch = 101   # past modulation_ends: the fused cross-entropy alone
    res = m.loss(None, output(), y, None)
    loss, _ = res.loss, res.logits
    assert float(loss) == pytest.approx(hand_ce(hand_softmax(FUSED), Y), rel=1e-12)


def test_gradient_pulls_only_the_slow_modality_towards_its_prototypes():
    m = make({"alpha": 1.0})
    ha = torch.tensor(HA, **F64, requires_grad=True)
    hv = torch.tensor(HV, **F64, requires_grad=True)
    res = m.loss(None, Output([ha, hv], [], torch.tensor(FUSED, **F64)), torch.tensor(Y), None)
    loss, _ = res.loss, res.logits
    loss.backward()
    assert ha.grad is None or torch.count_nonzero(ha.grad) == 0
    assert torch.count_nonzero(hv.grad) > 0


def test_momentum_blends_prototypes():
    m = PMR(dict(PARAMS), ctx(2))
    y = torch.tensor([0, 1, 2])
    f1 = [torch.eye(3), 2 * torch.eye(3)]
    f2 = [torch.zeros(3, 3), torch.ones(3, 3)]
    m.update_prototypes(f1, y)
    torch.testing.assert_close(m.protos[0], torch.eye(3))
    m.update_prototypes(f2, y)
    torch.testing.assert_close(m.protos[0], 0.2 * torch.eye(3))
    torch.testing.assert_close(m.protos[1], 0.8 * torch.ones(3, 3) + 0.4 * torch.eye(3))
    state = m.state_dict()
    m2 = PMR(dict(PARAMS), ctx(2))
    m2.load_state_dict(state)
    torch.testing.assert_close(m2.protos[1], m.protos[1])


def test_training_runs_and_prototypes_are_train_class_means(tmp_path, monkeypatch):
    data = tiny_features(n=60, informative=False)   # 36 train, 12 val, 12 test; pure noise
    train = dict(TRAIN_CFG)
    tr = Trainer(data, {**PARAMS, "momentum_coef": 0.0, "mu": 0.01}, train, 0, torch.device("cpu"),
                 tmp_path / "last.pt", None, "x")
    start = copy.deepcopy(tr.model.state_dict())
    tr.method.begin_epoch(tr.view())
    _, _, feats = evaluate_split(tr.model, tr.method, tr.data, tr.train_idx, 64)
    y = data.labels[tr.train_idx]
    for h, c in zip(feats, tr.method.protos):
        torch.testing.assert_close(c[1], h[y == 1].mean(0))
    tr.fit()
    assert all(math.isfinite(r["train_loss"]) for r in tr.history)
    assert any(not torch.equal(start[k], v) for k, v in tr.model.state_dict().items())
    assert tr.method._steps > 0
    writer = RecordingWriter()
    tr.method.log(writer, 3)
    logged = writer.scalars
    assert math.isfinite(logged["pmr/beta_m0"])
