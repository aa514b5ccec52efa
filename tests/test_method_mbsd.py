"""MBSD: its weights, agreement and non-standard KL terms on a hand-made example (plain Python),
the loss and its gradients against a sample-by-sample re-implementation of BalanceBenchmark's two
branches (two modalities: agreement on logits; three: on probabilities, mean over the pairs), the
epoch window, and a short training run through the real Trainer."""
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.methods.base import Context
from dyncim.methods.mbsd import MBSD, mbsd_terms, prob_kl_div
from dyncim.models.multimodal import Output
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, at_epoch, tiny_features

PARAMS = {"type": "mbsd", "fusion": "concat", "modulation_starts": 0, "modulation_ends": 80}
F64 = {"dtype": torch.float64}


def ctx(n_mod):
    return Context(names=["a", "b", "c"][:n_mod], n_classes=3, n_samples=100, epochs=3,
                   steps_per_epoch=4, device=torch.device("cpu"))


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def argmax(row):
    return max(range(len(row)), key=row.__getitem__)


# sample 0: a right, b wrong; sample 1: both right; sample 2: neither right (weight 0)
ZA = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.5]]
ZB = [[1.0, 1.2, 0.0], [0.5, 2.0, 0.0], [0.0, 1.0, 0.2]]
Y = [0, 1, 2]


def test_terms_on_a_hand_made_example_with_the_non_standard_kl():
    w, rs, kl, kl_proper = [], [], [], []
    for za, zb, y in zip(ZA, ZB, Y):
        pa, pb = softmax(za), softmax(zb)
        ps, pw = max(pa[y], pb[y]), min(pa[y], pb[y])
        w.append(ps - pw if y in (argmax(pa), argmax(pb)) else 0.0)
        rs.append(sum((a - b) ** 2 for a, b in zip(za, zb)) / 3)      # two modalities: logits
        kl.append(pw * (math.log(pw) - ps))                            # F.kl_div(ps, pw): ps not logged
        kl_proper.append(pw * (math.log(pw) - math.log(ps)))
    assert w[0] > 0 and w[1] > 0 and w[2] == 0.0
    want_rs = sum(a * b for a, b in zip(w, rs)) / 3
    want_kl = sum(a * b for a, b in zip(w, kl)) / 3
    proper = sum(a * b for a, b in zip(w, kl_proper)) / 3
    za, zb, y = torch.tensor(ZA, **F64), torch.tensor(ZB, **F64), torch.tensor(Y)
    got_rs, got_kl, got_w = mbsd_terms([za, zb], y)
    assert float(got_rs) == pytest.approx(want_rs, rel=1e-12)
    assert float(got_kl) == pytest.approx(want_kl, rel=1e-12)
    assert float(got_w) == pytest.approx(sum(w) / 3, rel=1e-12)
    assert abs(want_kl - proper) > 0.05                                # the non-standard KL is not a KL
    # the named function is the reference's call on probabilities
    ps, pw = torch.tensor([0.7, 0.4], **F64), torch.tensor([0.2, 0.4], **F64)
    assert prob_kl_div(ps, pw).tolist() == pytest.approx([0.2 * (math.log(0.2) - 0.7),
                                                          0.4 * (math.log(0.4) - 0.4)], rel=1e-12)
    # the whole loss: fused + each modality's CE + the pair's two terms
    fused = torch.tensor([[0.3, 0.1, 0.0], [0.0, 0.4, 0.1], [0.2, 0.2, 0.9]], **F64)
    m = MBSD(dict(PARAMS), ctx(2))
    m.begin_epoch(at_epoch(0))
    res = m.loss(None, Output(None, [za, zb], fused), y, None)
    ce = sum(float(F.cross_entropy(z, y)) for z in (fused, za, zb))
    assert float(res.loss) == pytest.approx(ce + want_rs + want_kl, rel=1e-12)


def reference_loss(fused, logits, y):
    """BalanceBenchmark's MBSD_trainer.training_step rewritten sample by sample (its in-place writes
    into fresh tensors carry gradients); RS on logits with two modalities, on probabilities with three."""
    n, C = fused.shape
    pred = [F.softmax(z, dim=1) for z in logits]
    pairs = [(0, 1)] if len(logits) == 2 else [(0, 1), (0, 2), (1, 2)]
    rs_terms, kl_terms = [], []
    for a, b in pairs:
        w, ps, pw = (torch.zeros(n, **F64) for _ in range(3))
        for i in range(n):
            qa, qb = pred[a][i][y[i]], pred[b][i][y[i]]
            if pred[a][i].argmax() == y[i] or pred[b][i].argmax() == y[i]:
                w[i] = max(qa, qb) - min(qa, qb)
            ps[i], pw[i] = max(qa, qb), min(qa, qb)
        src = logits if len(logits) == 2 else pred
        rs = ((src[a] - src[b]) ** 2).sum(1) / C
        kl = pw * (torch.log(pw) - ps)
        rs_terms.append((w @ rs) / n)
        kl_terms.append((w @ kl) / n)
    extra = sum(rs_terms) / len(pairs) + sum(kl_terms) / len(pairs)
    return F.cross_entropy(fused, y) + sum(F.cross_entropy(z, y) for z in logits) + extra


@pytest.mark.parametrize("n_mod", [2, 3])
def test_loss_and_gradients_match_the_reference_branches(n_mod):
    g = torch.Generator().manual_seed(n_mod)
    raw = [torch.randn(16, 4, generator=g, **F64) * 2 for _ in range(n_mod + 1)]
    y = torch.randint(0, 4, (16,), generator=g)
    m = MBSD(dict(PARAMS), Context(["a", "b", "c"][:n_mod], 4, 100, 3, 4, torch.device("cpu")))
    m.begin_epoch(at_epoch(0))
    mine = [t.clone().requires_grad_(True) for t in raw]
    res = m.loss(None, Output(None, mine[1:], mine[0]), y, None)
    res.loss.backward()
    ref = [t.clone().requires_grad_(True) for t in raw]
    want = reference_loss(ref[0], ref[1:], y)
    want.backward()
    assert float(res.loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    assert float(res.terms["rs"].detach()) > 0 and float(res.terms["kl"].detach()) != 0   # both terms are live
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_outside_the_window_only_the_fused_cross_entropy():
    za, zb, y = torch.tensor(ZA), torch.tensor(ZB), torch.tensor(Y)
    fused = za + zb
    m = MBSD({**PARAMS, "modulation_starts": 1, "modulation_ends": 1}, ctx(2))
    for epoch, extra in [(0, False), (1, True), (2, False)]:
        m.begin_epoch(at_epoch(epoch))
        loss = float(m.loss(None, Output(None, [za, zb], fused), y, None).loss)
        assert (loss != pytest.approx(float(F.cross_entropy(fused, y)), rel=1e-6)) == extra, epoch


def test_single_modality_refused():
    with pytest.raises(ValueError, match="mbsd: needs at least 2 modalities"):
        MBSD(dict(PARAMS), ctx(1))


@pytest.mark.parametrize("n_mod", [2, 3])
def test_training_learns_through_the_trainer(n_mod, tmp_path):
    data = tiny_features(n=90, dims=(5, 4, 6)[:n_mod], n_classes=3, seed=0)
    tr = Trainer(data, dict(PARAMS), {**TRAIN_CFG, "epochs": 4}, 0, torch.device("cpu"), tmp_path / "last.pt",
                 None, "x")
    tr.fit()
    assert all(math.isfinite(r["train_loss"]) for r in tr.history)
    assert tr.history[-1]["train_loss"] < tr.history[0]["train_loss"]
    assert max(r["val_acc"] for r in tr.history) > 0.6
    w = RecordingWriter()
    tr.method.log(w, 4)
    assert set(w.scalars) == {"mbsd/agreement_rs", "mbsd/kl_nonstandard", "mbsd/weight_mean"}
    assert all(math.isfinite(v) for v in w.scalars.values()) and w.scalars["mbsd/weight_mean"] > 0
