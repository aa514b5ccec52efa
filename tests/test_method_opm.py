"""OPM: the drop probabilities against the paper's formula (plain Python), the keep masks and the
1 / (1 - theta) rescaling, the execution probability, the loss on the dropped features, the
warm-up window, three modalities, and a training run that learns and resumes exactly."""
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.methods.base import Context
from dyncim.methods.opm import OPM, confidence_scores, drop_features, drop_probabilities
from dyncim.models import build_model
from dyncim.train.inference import evaluate_split
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, at_epoch, tiny_features

PARAMS = {"type": "opm", "fusion": "concat", "q_base": 0.5, "lam": 0.5, "p_exe": 0.7, "warmup_epochs": 6}
F64 = {"dtype": torch.float64}


def ctx(n=2):
    return Context(names=["a", "v", "t"][:n], n_classes=3, n_samples=100, epochs=10,
                   steps_per_epoch=4, device=torch.device("cpu"))


def hand_q(scores, q_base, lam):
    """The official calcu_q, generalised with the mean of the other scores, in plain Python."""
    out = []
    for m, s in enumerate(scores):
        others = [v for j, v in enumerate(scores) if j != m]
        r = math.tanh(max(0.0, s / (sum(others) / len(others)) - 1))
        out.append(min(1.0, q_base * (1 + lam * r)) if r > 0 else 0.0)
    return out


def test_drop_probability_two_modalities_matches_the_official_formula():
    za = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0], [1.0, 0.0, 0.0]], **F64)
    zv = torch.tensor([[0.0, 0.2, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.1], [0.0, 0.0, 1.0]], **F64)
    y = torch.tensor([0, 1, 2, 0])

    def score(z):
        return sum(math.exp(r[c]) / sum(math.exp(v) for v in r) for r, c in zip(z.tolist(), y.tolist()))

    s_a, s_v = score(za), score(zv)
    scores = confidence_scores([za, zv], y)
    assert scores.tolist() == pytest.approx([s_a, s_v], rel=1e-12)
    assert s_a > s_v
    r, q = drop_probabilities(scores, 0.5, 0.5)
    want_r = math.tanh(s_a / s_v - 1)      # ratio_1 = tanh(relu(p1 / p2 - 1)); ratio_2 = 0
    assert r.tolist() == pytest.approx([want_r, 0.0], rel=1e-12)
    assert q.tolist() == pytest.approx([0.5 * (1 + 0.5 * want_r), 0.0], rel=1e-12)
    # clip at 1; a tie drops nobody
    _, q = drop_probabilities(scores, 0.9, 1.0)
    assert q.tolist() == pytest.approx([min(1.0, 0.9 * (1 + want_r)), 0.0]) and q[0] == 1.0
    _, q = drop_probabilities(torch.tensor([2.0, 2.0], **F64), 0.5, 0.5)
    assert q.tolist() == [0.0, 0.0]


def test_three_modalities_compare_with_the_mean_of_the_others_and_keep_the_weakest():
    for scores in ([6.0, 3.0, 1.0], [5.0, 5.0, 1.0], [1.0, 2.0, 3.5]):
        _, q = drop_probabilities(torch.tensor(scores, **F64), 0.5, 0.5)
        assert q.tolist() == pytest.approx(hand_q(scores, 0.5, 0.5), rel=1e-12), scores
    _, q = drop_probabilities(torch.tensor([5.0, 5.0, 1.0], **F64), 0.5, 0.5)
    assert q[0] > 0 and q[1] > 0 and q[2] == 0         # two lead, the third is never dropped
    g = torch.Generator().manual_seed(0)
    for _ in range(200):   # any scores: the weakest modality has q = 0, so every sample keeps it
        s = torch.rand(3, generator=g, **F64) * 10
        _, q = drop_probabilities(s, 1.0, 1.0)
        assert q[s.argmin()] == 0 and (q > 0).sum() <= 2


def test_keep_masks_and_the_common_rescaling():
    torch.manual_seed(0)
    B = 4000
    ha, hv = torch.randn(B, 5, **F64), torch.randn(B, 3, **F64)
    q = torch.tensor([0.6, 0.0], **F64)
    (da, dv), keep = drop_features([ha, hv], q, torch.tensor(True))
    theta = (5 * 0.6 + 3 * 0.0) / (5 + 3)          # sum_m d_m q_m / sum_m d_m
    assert set(keep[0].tolist()) == {0.0, 1.0} and keep[1].eq(1).all()
    # kept rows: h / (1 - theta) (the not-dropped modality too); dropped rows: 0
    torch.testing.assert_close(da, keep[0][:, None] * ha / (1 - theta), rtol=1e-14, atol=0)
    torch.testing.assert_close(dv, hv / (1 - theta), rtol=1e-14, atol=0)
    assert da[keep[0] == 0].eq(0).all()
    # each sample is kept with probability 1 - q (3 sigma of a binomial of 4000)
    assert abs(float(keep[0].mean()) - 0.4) < 3 * math.sqrt(0.24 / B)
    # no execution: nothing changes
    (da, dv), keep = drop_features([ha, hv], q, torch.tensor(False))
    assert torch.equal(da, ha) and torch.equal(dv, hv) and keep.eq(1).all()


def _model(dims=(5, 3), seed=0):
    torch.manual_seed(seed)
    return build_model(list(dims), 3, "concat", {"hidden": [8], "dropout": 0.0}).double()


def _batch(dims=(5, 3), n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, d, generator=g, **F64) * (3.0 if m == 0 else 1.0) for m, d in enumerate(dims)]
    return xs, torch.randint(0, 3, (n,), generator=g)


def test_loss_is_the_fused_head_on_the_dropped_features():
    model = _model()
    xs, y = _batch()
    m = OPM({**PARAMS, "p_exe": 1.0, "q_base": 0.8}, ctx())
    m.begin_epoch(at_epoch(6))
    out = model(xs)
    res = m.loss(model, out, y, None)
    # independent: per-modality logits from the concat head's slices + half the bias
    w, b = model.fusion.fc.weight.detach(), model.fusion.fc.bias.detach()
    ha, hv = (h.detach() for h in out.feats)
    s = [float(F.softmax(ha @ w[:, :8].T + b / 2, 1)[torch.arange(32), y].sum()),
         float(F.softmax(hv @ w[:, 8:].T + b / 2, 1)[torch.arange(32), y].sum())]
    q = hand_q(s, 0.8, 0.5)
    assert res.terms["q"].tolist() == pytest.approx(q, rel=1e-12) and max(q) > 0
    lead = 0 if q[0] > 0 else 1
    keep = res.terms["keep"]
    assert keep[1 - lead].eq(1).all() and keep[lead].eq(0).any() and keep[lead].eq(1).any()
    theta = 8 * max(q) / 16
    feats = [ha * keep[0][:, None] / (1 - theta), hv * keep[1][:, None] / (1 - theta)]
    fused = torch.cat(feats, 1) @ w.T + b
    assert float(res.loss.detach()) == pytest.approx(float(F.cross_entropy(fused, y)), rel=1e-12)
    torch.testing.assert_close(res.logits.detach(), fused, rtol=1e-12, atol=1e-12)
    # the gradient reaches the encoders through the dropped features
    res.loss.backward()
    assert all(p.grad is not None for p in model.encoders.parameters())


def test_the_drop_runs_with_probability_p_exe():
    model = _model()
    xs, y = _batch(n=8)
    out = model(xs)
    for p_exe, want in [(0.7, 0.7), (0.0, 0.0), (1.0, 1.0)]:
        torch.manual_seed(3)
        m = OPM({**PARAMS, "p_exe": p_exe, "q_base": 0.9}, ctx())
        m.begin_epoch(at_epoch(10))
        runs = [bool(m.loss(model, out, y, None).terms["execute"]) for _ in range(1000)]
        assert abs(sum(runs) / 1000 - want) <= 3 * math.sqrt(0.21 / 1000), p_exe
        w = RecordingWriter()
        m.log(w, 1)
        assert w.scalars["opm/executed"] == pytest.approx(sum(runs) / 1000)


def test_warm_up_trains_the_plain_fused_loss():
    model = _model()
    xs, y = _batch()
    m = OPM({**PARAMS, "p_exe": 1.0, "q_base": 0.9}, ctx())
    out = model(xs)
    for epoch in range(8):
        m.begin_epoch(at_epoch(epoch))
        res = m.loss(model, out, y, None)
        if epoch < 6:     # official: warm_up = 1 if epoch <= 5
            assert res.terms is None and torch.equal(res.logits, out.fused)
            assert float(res.loss.detach()) == float(F.cross_entropy(out.fused, y).detach())
        else:
            assert res.terms is not None and not torch.equal(res.logits, out.fused)
    assert OPM({**PARAMS, "warmup_epochs": 0}, ctx()).dropping()


def test_three_modality_step_drops_only_the_leaders():
    dims = (5, 3, 4)
    model = _model(dims)
    xs, y = _batch(dims)
    m = OPM({**PARAMS, "p_exe": 1.0, "q_base": 0.7}, ctx(3))
    m.begin_epoch(at_epoch(6))
    out = model(xs)
    res = m.loss(model, out, y, None)
    q, keep = res.terms["q"], res.terms["keep"]
    assert q.tolist() == pytest.approx(hand_q(confidence_scores(out.logits, y).tolist(), 0.7, 0.5), rel=1e-12)
    for mod in range(3):
        assert keep[mod].eq(1).all() == (q[mod] == 0)
    assert (keep.sum(0) > 0).all()         # every sample keeps a modality


def test_one_modality_is_refused():
    with pytest.raises(ValueError, match="opm: needs at least 2 modalities"):
        OPM(PARAMS, ctx(1))


def _trainer(path, epochs, data):
    return Trainer(data, {**PARAMS, "warmup_epochs": 1}, {**TRAIN_CFG, "epochs": epochs}, 0,
                   torch.device("cpu"), path, None, "x")


def test_training_learns_predicts_without_drops_and_resumes_exactly(tmp_path):
    data = tiny_features(n=90)
    a = _trainer(tmp_path / "a.pt", 5, data)
    a.fit()
    losses = [r["train_loss"] for r in a.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert a.method._steps > 0 and float(a.method._exe_sum) > 0     # drops ran after the warm-up
    # prediction never drops: evaluation's fused logits are the plain model's
    fused, _, _ = evaluate_split(a.model, a.method, a.data, a.val_idx, 64)
    a.model.eval()
    with torch.no_grad():
        plain = a.model(a.data.batch(a.val_idx)).fused
    assert torch.equal(fused, plain)
    # a run stopped after 2 epochs and resumed ends as the uninterrupted one (the drops' draws
    # come from torch's generator, which the checkpoint restores)
    _trainer(tmp_path / "b.pt", 2, data).fit()
    b = _trainer(tmp_path / "b.pt", 5, data)
    b.fit()
    assert b.history == a.history
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_drop_path_under_bf16_autocast_keeps_float32(tmp_path):
    """The shared device test trains 2 epochs, inside the default warm-up: run the drops here."""
    t = Trainer(tiny_features(n=60), {**PARAMS, "warmup_epochs": 0, "p_exe": 1.0},
                {**TRAIN_CFG, "epochs": 1, "amp": "bf16"}, 0, torch.device("cpu"), tmp_path / "c.pt", None, "x")
    t.fit()
    assert all(enc.amp == torch.bfloat16 for enc in t.model.encoders) and t.method._steps > 0
    assert math.isfinite(t.history[0]["train_loss"])
    assert all(p.grad.dtype == torch.float32 for p in t.model.parameters() if p.grad is not None)
    assert t.method._q_sum.dtype == torch.float32
