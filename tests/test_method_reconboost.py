"""ReconBoost: the boosting loss by hand, the stage schedule, only the active learner updating, training."""
import math
from types import SimpleNamespace

import pytest
import torch

from dyncim.config import TRAIN_DEFAULTS
from dyncim.methods.base import Context
from dyncim.methods.reconboost import ReconBoost
from dyncim.models import Output, build_model
from tests.conftest import tiny_features

CFG = {"type": "reconboost", "epochs_per_stage": 4, "correct_epochs": 4, "weight1": 5.0,
       "weight2": 1.0, "boost_rate": 1.0, "shared_head": True, "reset_optimizer": True}


F64 = {"dtype": torch.float64}


def make(n_mod=2, **over):
    names = ["a", "b", "c"][:n_mod]
    method = ReconBoost({**CFG, **over}, Context(names=names, n_classes=3, n_samples=8, epochs=10,
                                                 steps_per_epoch=1, device=torch.device("cpu")))
    torch.manual_seed(0)
    model = build_model([5, 4, 6][:n_mod], 3, method.fusion, {"hidden": [8], "dropout": 0.0})
    method.setup(model)
    return method, model


def view(epoch, model, opt=None):
    """The fields of the RunView that ReconBoost's epoch hook reads."""
    return SimpleNamespace(epoch=epoch, model=model, optimizer=opt or torch.optim.SGD(model.parameters(), lr=0.1))


def test_boosting_loss_by_hand():
    method, model = make(2, weight1=5.0, weight2=1.0)
    with torch.no_grad():
        model.extra["reconboost"].boost_rate.fill_(1.5)
    method.begin_epoch(view(8 + 8 + 0, model))       # stage 2: learner a again, b in the ensemble
    assert (method.stage, method.boosting, method.active) == (2, True, 0)
    za = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
    zb = [[0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]
    y = [2, 1]
    expected = 0.0
    for i in range(2):
        pa = math.exp(za[i][y[i]]) / sum(math.exp(v) for v in za[i])
        pe = math.exp(1.5 * zb[i][y[i]]) / sum(math.exp(1.5 * v) for v in zb[i])
        # per sample, mean over the 3 classes: only the true class is non-zero
        expected += (-5.0 * math.log(pa) + 1.0 * pe * math.log(pa)) / 3
    expected /= 2
    # float64 against plain-Python doubles: float32 kernels differ between CPUs by a few ulps
    out = Output([None, None], [torch.tensor(za, **F64), torch.tensor(zb, **F64)], torch.zeros(2, 3, **F64))
    loss = method.loss(model, out, torch.tensor(y), None).loss
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # the same loss, written as (1/C) [w1 CE - w2 KL(q || p_a)] + (1/C) w2 sum q log q, q = y * p_ens
    za_t, zb_t, y_t = torch.tensor(za, **F64), torch.tensor(zb, **F64), torch.tensor(y)
    q = torch.nn.functional.one_hot(y_t, 3) * torch.softmax(1.5 * zb_t, 1)
    logp = torch.log_softmax(za_t, 1)
    kl = (q * (torch.log(q.clamp_min(1e-30)) - logp)).sum(1)
    ent = (q * torch.log(q.clamp_min(1e-30))).sum(1)
    alt = ((5.0 * -logp.gather(1, y_t[:, None])[:, 0] - 1.0 * kl + 1.0 * ent) / 3).mean()
    assert loss.item() == pytest.approx(alt.item(), rel=1e-12)


def test_first_stage_has_no_ensemble_and_rectification_is_ensemble_ce():
    method, model = make(2)
    method.begin_epoch(view(0, model))
    za = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], **F64)
    zb = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]], **F64)
    y = torch.tensor([2, 1])
    out = Output([None, None], [za, zb], torch.zeros(2, 3, **F64))
    loss = method.loss(model, out, y, None).loss
    pa = torch.softmax(za, 1)[[0, 1], y]
    assert loss.item() == pytest.approx(((1.0 - 5.0) * torch.log(pa)).mean().item() / 3, rel=1e-12)
    method.begin_epoch(view(4, model))               # stage 0 rectification: members {a}
    out = method.forward(model, [torch.randn(2, 5), torch.randn(2, 4)], None)
    loss = method.loss(model, out, y, None).loss
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits[0], y).item(), rel=1e-6)


@pytest.mark.parametrize("n_mod, order", [(2, "ABABA"), (3, "ABCAB")])
def test_forty_epochs_are_five_stages(n_mod, order):
    # docs/baselines.md: 40 epochs of 4 + 4 are 5 whole stages; with three modalities the third
    # gets one boosting phase and joins the ensemble at epoch 16
    method, _ = make(n_mod)
    sched = [method.schedule(e) for e in range(40)]
    assert [s[0] for s in sched] == [e // 8 for e in range(40)]
    assert "".join("ABC"[sched[8 * s][2]] for s in range(5)) == order
    boosting = [e for e, s in enumerate(sched) if s[1] and s[2] == n_mod - 1]
    assert boosting == ([8, 9, 10, 11, 24, 25, 26, 27] if n_mod == 2 else [16, 17, 18, 19])


@pytest.mark.parametrize("n_mod, per, cor, expected", [
    (2, 2, 1, [(0, True, 0), (0, True, 0), (0, False, 0), (1, True, 1), (1, True, 1), (1, False, 1),
               (2, True, 0), (2, True, 0), (2, False, 0)]),
    (3, 2, 0, [(0, True, 0), (0, True, 0), (1, True, 1), (1, True, 1), (2, True, 2), (2, True, 2),
               (3, True, 0)]),
])
def test_stages_alternate(n_mod, per, cor, expected):
    method, model = make(n_mod, epochs_per_stage=per, correct_epochs=cor)
    got, members = [], []
    for e in range(len(expected)):
        method.begin_epoch(view(e, model))
        got.append((method.stage, method.boosting, method.active))
        members.append(model.extra["reconboost"].members.tolist())
    assert got == expected
    # learners join the ensemble in their first stage
    for (stage, _, _), mem in zip(expected, members):
        assert mem == [1.0 if m <= stage else 0.0 for m in range(n_mod)]


def test_optimizer_state_reset_at_phase_start():
    method, model = make(2, epochs_per_stage=2, correct_epochs=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    p = next(model.parameters())
    for e, reset in [(0, True), (1, False), (2, True), (3, True), (4, False)]:
        opt.state[p]["momentum_buffer"] = torch.ones_like(p)
        method.begin_epoch(view(e, model, opt))
        assert (p not in opt.state) == reset


def params_of(module):
    return [q.detach().clone() for q in module.parameters()]


def changed(module, before):
    return any(not torch.equal(q, b) for q, b in zip(module.parameters(), before))


def one_step(method, model, n_mod):
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    xs = [torch.randn(8, d) for d in (5, 4, 6)[:n_mod]]
    y = torch.arange(8) % 3
    out = method.forward(model, xs, None)
    res = method.loss(model, out, y, None)
    opt.zero_grad(set_to_none=True)
    method.backward(model, res)
    method.after_backward(model, res)
    opt.step()


@pytest.mark.parametrize("n_mod", [2, 3])
@pytest.mark.parametrize("shared", [False, True])
def test_only_active_learner_changes(n_mod, shared):
    method, model = make(n_mod, epochs_per_stage=1, correct_epochs=1, shared_head=shared)
    epoch = 2 * (n_mod + 1)                 # stage n_mod + 1: every learner a member, active = 1
    method.begin_epoch(view(epoch, model))
    assert method.boosting and method.active == 1 and model.extra["reconboost"].members.tolist() == [1.0] * n_mod
    enc = [params_of(e) for e in model.encoders]
    heads = [params_of(h) for h in model.fusion.heads]
    boost = model.extra["reconboost"].boost_rate.detach().clone()
    one_step(method, model, n_mod)
    for m in range(n_mod):
        assert changed(model.encoders[m], enc[m]) == (m == 1)
        assert changed(model.fusion.heads[m], heads[m]) == (shared or m == 1)
    assert torch.equal(model.extra["reconboost"].boost_rate, boost)
    # the rectification phase that follows trains every learner and the boost rate
    method.begin_epoch(view(epoch + 1, model))
    assert not method.boosting
    enc = [params_of(e) for e in model.encoders]
    one_step(method, model, n_mod)
    assert all(changed(model.encoders[m], enc[m]) for m in range(n_mod))
    assert not torch.equal(model.extra["reconboost"].boost_rate, boost)


def test_predict_uses_ensemble_members_and_shared_head_survives_reload():
    method, model = make(2)
    method.begin_epoch(view(0, model))
    assert model.fusion.heads[0] is model.fusion.heads[1]
    with torch.no_grad():
        model.extra["reconboost"].boost_rate.fill_(2.0)
    out = model([torch.randn(4, 5), torch.randn(4, 4)])
    assert torch.allclose(method.predict(model, out), 2.0 * out.logits[0])          # stage 0: {a}
    method.begin_epoch(view(8, model))
    assert torch.allclose(method.predict(model, out), 2.0 * (out.logits[0] + out.logits[1]))
    method2, model2 = make(2)
    model2.load_state_dict(model.state_dict())
    assert model2.fusion.heads[0] is model2.fusion.heads[1]
    assert torch.allclose(method2.predict(model2, out), method.predict(model, out))




@pytest.mark.parametrize("n_mod", [2, 3])
def test_training_runs(tmp_path, monkeypatch, n_mod):
    from dyncim.train.loop import Trainer
    cfg = {**CFG, "epochs_per_stage": 1, "correct_epochs": 1}
    tcfg = {**TRAIN_DEFAULTS, "epochs": 2 * n_mod + 1, "batch_size": 16, "hidden": [8]}
    tr = Trainer(tiny_features(n=60, dims=(6, 5, 4)[:n_mod]), cfg, tcfg, seed=0, device=torch.device("cpu"),
                 ckpt_path=tmp_path / "last.pt", log_dir=None, fingerprint="x")
    start = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit()
    assert all(math.isfinite(r["train_loss"]) for r in tr.history)
    assert tr.model.extra["reconboost"].members.tolist() == [1.0] * n_mod
    for m in range(n_mod):                  # every learner was trained in its stage
        sd = tr.model.encoders[m].state_dict()
        assert any(not torch.equal(v, start[f"encoders.{m}.{k}"]) for k, v in sd.items())
