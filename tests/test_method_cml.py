"""CML: the official ranking loss with its per-sample sign on a hand-made example where the sign
(and the per-sample ReLU) matter, the chain of nested subsets against the fused head on zeroed
features (concat) and the kept heads (sum), the whole loss recomputed by hand, the per-epoch
removal order, the epoch window, three modalities, and training + resume through the Trainer."""
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.methods.base import Context
from dyncim.methods.cml import CML, rank_loss, subset_chain
from dyncim.models import build_model
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, at_epoch, tiny_features

PARAMS = {"type": "cml", "fusion": "concat", "lam": 0.1, "modulation_starts": 0, "modulation_ends": 80}
F64 = {"dtype": torch.float64}
CPU = torch.device("cpu")


def ctx(n_mod):
    return Context(names=["a", "b", "c"][:n_mod], n_classes=3, n_samples=100, epochs=3,
                   steps_per_epoch=4, device=CPU)


def test_rank_loss_uses_the_official_per_sample_sign():
    y = torch.tensor([0, 1, 2, 0])
    # s0: superset wrong, subset right and more confident -> sign 0, no penalty
    # s1: both right, subset more confident by 0.3       -> 0.3
    # s2: subset less confident by 0.4                    -> ReLU: 0
    # s3: superset right, subset wrong, more confident    -> 0.1
    conf_sup = torch.tensor([0.6, 0.5, 0.7, 0.6], **F64)
    pred_sup = torch.tensor([1, 1, 2, 0])
    conf_sub = torch.tensor([0.9, 0.8, 0.3, 0.7], **F64)
    pred_sub = torch.tensor([0, 1, 2, 1])
    got = float(rank_loss(conf_sup, pred_sup, conf_sub, pred_sub, y))
    assert got == pytest.approx(0.3 + 0.1, abs=1e-12)
    no_sign = 0.3 + 0.3 + 0.0 + 0.1                       # what dropping the sign would give
    balancebenchmark = max(0.0, 0.3 + 0.3 - 0.4 + 0.1)    # its conf_loss: clamp of the batch sum
    assert abs(got - no_sign) > 0.2 and abs(got - balancebenchmark) > 0.05


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_chain_is_the_fused_head_without_the_removed_modalities(fusion):
    torch.manual_seed(0)
    model = build_model([5, 4, 6], 3, fusion, {"hidden": [8], "dropout": 0.0}).double()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(10, d, generator=g, **F64) for d in (5, 4, 6)]
    out = model(xs)
    share = model.fusion.fc.bias / 3 if fusion == "concat" else None
    chain = subset_chain(out.fused, out.logits, [2, 0, 1], share)
    assert len(chain) == 3
    with torch.no_grad():
        for k, kept in enumerate([[0, 1, 2], [0, 1], [1]]):
            if fusion == "concat":
                zeroed = [h if m in kept else torch.zeros_like(h) for m, h in enumerate(out.feats)]
                want = model.fusion.fc(torch.cat(zeroed, 1))
            else:
                want = sum(model.fusion.heads[m](out.feats[m]) for m in kept)
            torch.testing.assert_close(chain[k], want, rtol=1e-12, atol=1e-12)


def hand_loss(chain, y, lam):
    """(1/M) sum_k CE(s_k) + lam * sum_k sum_i ReLU((conf_k - conf_{k-1}) * sign), in plain Python."""
    rows = [s.tolist() for s in chain]
    ce, rank = 0.0, 0.0
    for k, r in enumerate(rows):
        for row, t in zip(r, y.tolist()):
            ce -= math.log(math.exp(row[t]) / sum(math.exp(v) for v in row)) / len(r)
        if k:
            for sup, sub, t in zip(rows[k - 1][:], r, y.tolist()):
                ps = [math.exp(v) / sum(math.exp(u) for u in sup) for v in sup]
                pb = [math.exp(v) / sum(math.exp(u) for u in sub) for v in sub]
                c_sup, c_sub = max(ps), max(pb)
                sign = 0 if (pb.index(c_sub) == t and ps.index(c_sup) != t) else 1
                rank += max(0.0, (c_sub - c_sup) * sign)
    return ce / len(rows) + lam * rank, rank


@pytest.mark.parametrize("n_mod", [2, 3])
def test_loss_is_the_chain_cross_entropy_plus_lam_times_the_ranking_loss(n_mod):
    torch.manual_seed(0)
    dims = (5, 4, 6)[:n_mod]
    model = build_model(list(dims), 3, "concat", {"hidden": [8], "dropout": 0.0}).double()
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(40, d, generator=g, **F64) * 2 for d in dims]
    y = torch.randint(0, 3, (40,), generator=g)
    m = CML({**PARAMS, "lam": 0.7}, ctx(n_mod))
    m.begin_epoch(at_epoch(3, seed=5))
    out = model(xs)
    res = m.loss(model, out, y, None)
    with torch.no_grad():
        kept, chain = list(range(n_mod)), []
        for r in [None] + m.order[:n_mod - 1]:
            if r is not None:
                kept.remove(r)
            chain.append(model.fusion.fc(torch.cat([h if i in kept else torch.zeros_like(h)
                                                    for i, h in enumerate(out.feats)], 1)))
    want, rank = hand_loss(chain, y, 0.7)
    assert rank > 0                                      # the ranking term is live here
    assert float(res.loss.detach()) == pytest.approx(want, rel=1e-10)
    assert float(res.terms["rank"].detach()) == pytest.approx(rank, rel=1e-10)


def test_removal_order_is_drawn_per_epoch_from_the_seed():
    orders = []
    for epoch in range(8):
        a, b = CML(dict(PARAMS), ctx(3)), CML(dict(PARAMS), ctx(3))
        a.begin_epoch(at_epoch(epoch, seed=1))
        b.begin_epoch(at_epoch(epoch, seed=1))
        assert a.order == b.order and sorted(a.order) == [0, 1, 2]
        orders.append(tuple(a.order))
    assert len(set(orders)) > 1


def test_outside_the_window_only_the_fused_cross_entropy():
    torch.manual_seed(0)
    model = build_model([5, 4], 3, "concat", {"hidden": [8], "dropout": 0.0})
    xs, y = [torch.randn(12, 5), torch.randn(12, 4)], torch.arange(12) % 3
    m = CML({**PARAMS, "modulation_starts": 1, "modulation_ends": 1}, ctx(2))
    for epoch, extra in [(0, False), (1, True), (2, False)]:
        m.begin_epoch(at_epoch(epoch, seed=0))
        out = model(xs)
        loss = float(m.loss(model, out, y, None).loss.detach())
        assert (loss != pytest.approx(float(F.cross_entropy(out.fused, y).detach()), rel=1e-6)) == extra, epoch


def test_single_modality_refused():
    with pytest.raises(ValueError, match="cml: needs at least 2 modalities"):
        CML(dict(PARAMS), ctx(1))


def test_training_learns_and_resumes_identically(tmp_path):
    data = tiny_features(n=90, dims=(5, 4, 6), n_classes=3, seed=0)
    train = {**TRAIN_CFG, "epochs": 4}
    full = Trainer(data, dict(PARAMS), train, 0, CPU, tmp_path / "a.pt", None, "x")
    full.fit()
    assert all(math.isfinite(r["train_loss"]) for r in full.history)
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]
    assert max(r["val_acc"] for r in full.history) > 0.6
    w = RecordingWriter()
    full.method.log(w, 4)
    assert set(w.scalars) == {"cml/subset_ce", "cml/rank_loss"} and all(math.isfinite(v) for v in w.scalars.values())
    Trainer(data, dict(PARAMS), {**train, "epochs": 2}, 0, CPU, tmp_path / "b.pt", None, "x").fit()
    resumed = Trainer(data, dict(PARAMS), train, 0, CPU, tmp_path / "b.pt", None, "x")
    resumed.fit()
    assert resumed.method.order == full.method.order
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
