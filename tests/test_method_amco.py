"""AMCo: the mask-ratio schedule and the mask against a hand computation, the dependence rule
(plain-Python softmax shares) and its one-step delay, the co-optimised loss, no gradient into a
fully masked modality, the modulation window, three modalities, prediction through linear_star,
and a training run that learns and resumes exactly."""
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.methods.amco import AMCo, class_mask, mask_ratio, modality_shares
from dyncim.methods.base import Context
from dyncim.models import build_model
from dyncim.models.multimodal import Output
from dyncim.train.inference import evaluate_split
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, at_epoch, tiny_features

PARAMS = {"type": "amco", "fusion": "concat", "sigma": 0.5, "eps": 0.3, "progress_rate": 0.1,
          "modulation_starts": 0, "modulation_ends": 80}
F64 = {"dtype": torch.float64}
K = 6


def ctx(n=2, classes=K):
    return Context(names=["a", "v", "t"][:n], n_classes=classes, n_samples=100, epochs=10,
                   steps_per_epoch=4, device=torch.device("cpu"))


def make(n=2, seed=0, **params):
    torch.manual_seed(seed)
    dims = [5, 4, 3][:n]
    model = build_model(dims, K, "concat", {"hidden": [8], "dropout": 0.0}).double()
    m = AMCo({**PARAMS, **params}, ctx(n))
    m.setup(model)
    model.double()
    g = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(12, d, generator=g, **F64) * (4.0 if i == 0 else 0.3) for i, d in enumerate(dims)]
    y = torch.randint(0, K, (12,), generator=g)
    return m, model, xs, y


def test_mask_ratio_schedule_and_mask_by_hand():
    # progress l_t restarts at 0 each epoch and grows by epoch / 10 per step; p = sin(pi/2 min(eps, l) / eps)
    m, model, xs, y = make()
    out = model(xs)
    for epoch, want in [(0, [0, 0, 0, 0]), (1, [0, 0.5, math.sin(math.pi / 3), 1, 1]), (3, [0, 1, 1])]:
        m.begin_epoch(at_epoch(epoch))
        ratios, zeros = [], []
        for _ in want:
            res = m.loss(model, out, y, None)
            ratios.append(res.terms["ratio"])
            zeros.append(int((res.terms["mask"] == 0).sum()))
        assert ratios == pytest.approx(want, abs=1e-12), epoch
        assert zeros == [int(p * K) for p in want], epoch          # floor(p K) masked classes
    torch.manual_seed(0)
    masks = torch.stack([class_mask(K, 0.5, "cpu") for _ in range(300)])
    assert set(masks.unique().tolist()) == {0.0, 1.0} and (masks == 0).sum(1).eq(3).all()
    assert (masks == 0).float().mean(0).sub(0.5).abs().max() < 0.15     # random classes, all of them
    assert mask_ratio(0.15, 0.3) == pytest.approx(math.sin(math.pi / 4))


def hand_shares(zs):
    """Batch mean of the softmax over the concatenated logits, summed per modality's block."""
    rows = [sum((z[i] for z in zs), []) for i in range(len(zs[0]))]
    out = [0.0] * len(zs)
    for row in rows:
        e = [math.exp(v) for v in row]
        for m in range(len(zs)):
            out[m] += sum(e[m * K:(m + 1) * K]) / sum(e) / len(rows)
    return out


def test_dependence_rule_by_hand_and_applied_at_the_next_step():
    m, model, xs, y = make()
    m.begin_epoch(at_epoch(1))
    out = model(xs)
    first = m.loss(model, out, y, None)
    assert not first.terms["dependent"].any()          # every modality starts the epoch independent
    shares = hand_shares([z.tolist() for z in out.logits])
    assert first.terms["shares"].tolist() == pytest.approx(shares, rel=1e-12)
    assert shares[0] > 0.5 > shares[1]                 # the loud modality 0 dominates the softmax
    assert m.dependent.tolist() == [s > 0.5 for s in shares]
    second = m.loss(model, out, y, None)               # p = 0.5: 3 of the 6 classes masked
    mask = second.terms["mask"]
    assert second.terms["dependent"].tolist() == [True, False] and int((mask == 0).sum()) == 3
    torch.testing.assert_close(second.terms["masked"][0], out.logits[0] * mask, rtol=0, atol=0)
    torch.testing.assert_close(second.terms["masked"][1], out.logits[1], rtol=0, atol=0)
    # a new epoch: the flags and the progress restart
    m.begin_epoch(at_epoch(2))
    assert not m.dependent.any() and m.progress == 0.0


def test_co_optimised_loss_equals_an_independent_computation():
    m, model, xs, y = make()
    m.begin_epoch(at_epoch(1))
    out = model(xs)
    m.loss(model, out, y, None)
    res = m.loss(model, out, y, None)
    mask, star = res.terms["mask"], model.extra["amco_linear_star"]
    w, b = model.fusion.fc.weight, model.fusion.fc.bias
    za = out.feats[0] @ w[:, :8].T + b / 2            # concat slice + half the bias
    zv = out.feats[1] @ w[:, 8:].T + b / 2
    za = za * mask                                     # modality 0 is the dependent one
    fused = (za + zv) @ star.weight.T + star.bias
    want = F.cross_entropy(fused, y) + F.cross_entropy(za, y) + F.cross_entropy(zv, y)
    assert float(res.loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    torch.testing.assert_close(res.logits, fused, rtol=1e-12, atol=1e-12)


def test_a_fully_masked_modality_gets_no_gradient():
    m, model, xs, y = make()
    m.begin_epoch(at_epoch(3))
    out = model(xs)
    m.loss(model, out, y, None)                         # marks modality 0 dependent
    model.zero_grad()
    out = model(xs)
    res = m.loss(model, out, y, None)                   # p = 1: every class masked
    assert res.terms["mask"].eq(0).all() and res.terms["dependent"].tolist() == [True, False]
    res.loss.backward()
    assert all(p.grad is None or p.grad.eq(0).all() for p in model.encoders[0].parameters())
    assert model.fusion.fc.weight.grad[:, :8].eq(0).all()
    assert model.fusion.fc.weight.grad[:, 8:].abs().sum() > 0
    assert any(p.grad.abs().sum() > 0 for p in model.encoders[1].parameters())


def test_outside_the_window_the_plain_fused_loss_and_no_mask():
    m, model, xs, y = make(modulation_starts=2, modulation_ends=4)
    out = model(xs)
    star = model.extra["amco_linear_star"]
    for epoch, inside in [(1, False), (2, True), (4, True), (5, False)]:
        m.begin_epoch(at_epoch(epoch))
        for _ in range(3):
            res = m.loss(model, out, y, None)
        if inside:
            assert res.terms is not None
        else:
            assert res.terms is None and not m.dependent.any()
            want = F.cross_entropy(star(out.logits[0] + out.logits[1]), y)
            assert float(res.loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)


def test_three_modalities_at_most_one_dependent():
    m, model, xs, y = make(n=3)
    m.begin_epoch(at_epoch(1))
    g = torch.Generator().manual_seed(5)
    logits = [torch.randn(12, K, generator=g, **F64) * c for c in (4.0, 0.5, 0.5)]   # modality 0 loud
    out = Output(model(xs).feats, logits, sum(logits))
    res = m.loss(model, out, y, None)
    shares = hand_shares([z.tolist() for z in out.logits])
    assert res.terms["shares"].tolist() == pytest.approx(shares, rel=1e-12)
    assert sum(shares) == pytest.approx(1.0) and m.dependent.tolist() == [True, False, False]
    g = torch.Generator().manual_seed(0)
    for _ in range(50):      # shares sum to 1: with sigma = 0.5 at most one modality is over it
        zs = [torch.randn(4, K, generator=g, **F64) * 3 for _ in range(3)]
        assert int((modality_shares(zs) > 0.5).sum()) <= 1


def test_one_modality_is_refused():
    with pytest.raises(ValueError, match="amco: needs at least 2 modalities"):
        AMCo(PARAMS, ctx(1))


def _trainer(path, epochs, data):
    return Trainer(data, dict(PARAMS), {**TRAIN_CFG, "epochs": epochs}, 0, torch.device("cpu"), path,
                   None, "x")


def test_training_learns_predicts_through_linear_star_and_resumes_exactly(tmp_path):
    data = tiny_features(n=90)
    a = _trainer(tmp_path / "a.pt", 4, data)
    a.fit()
    losses = [r["train_loss"] for r in a.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert a.method._steps > 0
    w = RecordingWriter()
    a.method.log(w, 4)
    assert math.isfinite(w.scalars["amco/share_m0"]) and w.scalars["amco/mask_ratio"] > 0
    # prediction: linear_star on the unmasked sum of the per-modality logits
    fused, parts, _ = evaluate_split(a.model, a.method, a.data, a.val_idx, 64)
    star = a.model.extra["amco_linear_star"]
    with torch.no_grad():
        torch.testing.assert_close(fused, star(parts[0] + parts[1]))
        assert not torch.allclose(fused, a.model(a.data.batch(a.val_idx)).fused)
    # stopped after 2 epochs and resumed: the same run (mask draws from torch's generator)
    _trainer(tmp_path / "b.pt", 2, data).fit()
    b = _trainer(tmp_path / "b.pt", 4, data)
    b.fit()
    assert b.history == a.history
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
