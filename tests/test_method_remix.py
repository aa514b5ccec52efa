"""Remix: divergences from uniform by hand (class counts other than the official 6), the split
they make (ties, three modalities), the split of a model against an independent computation, the
phase schedule (warm-up, then each phase's samples, masking and loss), and a training run that
learns and resumes bit-identically."""
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim import config as C
from dyncim.methods.remix import Remix, assign_phases, divergence_from_uniform, phase_order
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, tiny_features

DEFAULTS = {"type": "remix", **C._fill_defaults(C.load_schema()["$defs"]["method_remix"], {})}


def kl_bits(p):
    """The official kl_divergence, written out: sum p log2(p / (1/C)), p clipped at 1e-9."""
    c = len(p)
    return sum(max(q, 1e-9) * math.log2(max(q, 1e-9) * c) for q in p)


def _trainer(tmp_path, cfg=None, dims=(5, 4), epochs=4, name="t.pt", n=150, n_classes=3):
    return Trainer(tiny_features(n=n, dims=dims, n_classes=n_classes), {**DEFAULTS, **(cfg or {})},
                   {**TRAIN_CFG, "epochs": epochs}, 0, torch.device("cpu"), tmp_path / name, None,
                   "remix-test")


def test_defaults_are_the_official_ones():
    assert (DEFAULTS["warmup"], DEFAULTS["warmup_weight"], DEFAULTS["phase_weight"]) == (10, 0.5, 1.0)
    assert DEFAULTS["fusion"] == "concat"


def test_divergence_from_uniform_by_hand_with_four_and_five_classes():
    # C = 4: p = (0.7, 0.1, 0.1, 0.1): 0.7 log2(2.8) + 3 * 0.1 log2(0.4)
    p = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.4, 0.4, 0.1, 0.1]])
    got = divergence_from_uniform(p.log())
    by_hand = [0.7 * math.log2(2.8) + 0.3 * math.log2(0.4), 0.0, 0.8 * math.log2(1.6) + 0.2 * math.log2(0.4)]
    assert got.tolist() == pytest.approx(by_hand, abs=1e-6)
    assert by_hand[0] == pytest.approx(0.6432, abs=1e-4)          # 0.7 * 1.4854 - 0.3 * 1.3219
    # C = 5, a near one-hot prediction: the clip keeps log2 finite, the value tends to log2 5
    z = torch.tensor([[60.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    got = divergence_from_uniform(z)
    assert got[0].item() == pytest.approx(math.log2(5), abs=1e-6)
    assert got[1].item() == pytest.approx(kl_bits(torch.softmax(z[1], 0).tolist()), abs=1e-6)
    # not the official hard-coded 6: with 6 the uniform prediction of 4 classes would read log2(6/4)
    assert divergence_from_uniform(torch.zeros(1, 4)).item() == pytest.approx(0.0, abs=1e-7)


def test_split_goes_to_the_less_confident_modality_ties_to_the_last():
    kls = torch.tensor([[0.2, 0.9], [1.5, 0.1], [0.4, 0.4], [0.0, 0.0]])
    assert assign_phases(kls).tolist() == [0, 1, 1, 1]       # official: audio iff KL_a < KL_v
    kls3 = torch.tensor([[0.3, 0.2, 0.9], [0.5, 0.5, 0.7], [0.1, 0.6, 0.1], [2.0, 1.0, 0.5]])
    assert assign_phases(kls3).tolist() == [1, 1, 2, 2]
    # from logits of 4 classes: sample 0 unsure in audio (m0), sample 1 unsure in video (m1)
    za = torch.tensor([[0.1, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    zv = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0]])
    kls = torch.stack([divergence_from_uniform(za), divergence_from_uniform(zv)], 1)
    assert assign_phases(kls).tolist() == [0, 1]


def test_phase_order_groups_by_phase_last_modality_first_in_perm_order():
    perm = torch.tensor([7, 2, 9, 4, 0, 5])
    phase_of = torch.full((10,), -1)
    phase_of[torch.tensor([7, 2, 9, 4, 0, 5])] = torch.tensor([0, 1, 1, 0, 2, 1])
    idx, ph = phase_order(perm, phase_of, 3)
    assert idx.tolist() == [0, 2, 9, 5, 7, 4] and ph.tolist() == [2, 1, 1, 1, 0, 0]


def test_split_of_a_model_equals_an_independent_computation(tmp_path):
    t = _trainer(tmp_path, {"warmup": 1}, epochs=2, n_classes=4)
    t.fit()
    m, model = t.method, t.model
    model.eval()
    with torch.no_grad():
        feats = model.encode(t.data.batch(t.train_idx))
        z = [F.linear(h, head.weight, head.bias) for head, h in zip(model.extra["remix_heads"], feats)]
    want = []
    for i in range(len(t.train_idx)):
        ka, kv = (kl_bits(torch.softmax(zm[i].double(), 0).tolist()) for zm in z)
        want.append(0 if ka < kv else 1)
    kls, phases = m.split(t.view(), t.train_idx)
    assert phases.tolist() == want
    assert 0 < sum(want) < len(want)      # a genuine split


def test_phase_schedule_masking_and_losses(tmp_path):
    t = _trainer(tmp_path, {"warmup": 2, "warmup_weight": 0.25, "phase_weight": 2.0}, epochs=3)
    m, model = t.method, t.model
    perm = t.train_idx[torch.randperm(len(t.train_idx), generator=torch.Generator().manual_seed(3))]
    # warm-up epoch: the trainer's permutation, every unimodal loss weighted 0.25
    t.epoch = 1
    m.begin_epoch(t.view())
    assert torch.equal(m.epoch_indices(t.view(), perm), perm)
    idx = perm[:16]
    xs, y = t.data.batch(idx), t.data.labels[idx]
    out = m.forward(model, xs, idx)
    plain = model.encode(xs)
    assert all(torch.equal(a, b) for a, b in zip(out.feats, plain))
    heads = model.extra["remix_heads"]
    want = F.cross_entropy(out.fused, y) + 0.25 * sum(F.cross_entropy(h(f), y) for h, f in zip(heads, plain))
    assert m.loss(model, out, y, idx).loss.item() == pytest.approx(want.item(), rel=1e-6)
    # first remixed epoch (epoch == warmup): video's subset, then audio's, each in perm's order
    t.epoch = 2
    m.begin_epoch(t.view())
    got = m.epoch_indices(t.view(), perm)
    _, phases = m.split(t.view(), t.train_idx)
    ph = dict(zip(t.train_idx.tolist(), phases.tolist()))
    want_idx = [i for i in perm.tolist() if ph[i] == 1] + [i for i in perm.tolist() if ph[i] == 0]
    assert got.tolist() == want_idx and sorted(got.tolist()) == sorted(t.train_idx.tolist())
    assert m.counts == [len(want_idx) - sum(phases.tolist()), sum(phases.tolist())]
    # a batch of rows across both phases: each row keeps its phase's modality and loss
    nv = m.counts[1]
    a, b = max(0, nv - 5), min(len(got), nv + 5)
    m._cursor = a
    idx = got[a:b]
    rows = torch.tensor([ph[i] for i in idx.tolist()])
    assert (rows == 1).any() and (rows == 0).any()
    xs, y = t.data.batch(idx), t.data.labels[idx]
    out = m.forward(model, xs, idx)
    plain = model.encode(xs)
    for mod in range(2):
        keep = (rows == mod)[:, None].float()
        assert torch.equal(out.feats[mod], plain[mod] * keep)
    fused = model.fusion(out.feats)[0]
    per = [F.cross_entropy(fused[r:r + 1], y[r:r + 1]) + 2.0 * F.cross_entropy(
        heads[int(rows[r])](out.feats[int(rows[r])][r:r + 1]), y[r:r + 1]) for r in range(len(idx))]
    assert m.loss(model, out, y, idx).loss.item() == pytest.approx(torch.stack(per).mean().item(), rel=1e-6)


def test_three_modalities_train_and_log(tmp_path):
    t = _trainer(tmp_path, {"warmup": 1}, dims=(5, 4, 3), epochs=2)
    t.fit()
    assert sum(t.method.counts) == len(t.train_idx) and len(t.method.counts) == 3
    w = RecordingWriter()
    t.method.log(w, 2)
    assert sum(w.scalars[f"remix/share_m{i}"] for i in range(3)) == pytest.approx(1.0)


def test_training_learns_and_resumes_bit_identically(tmp_path):
    cfg = {"warmup": 2}
    full = _trainer(tmp_path, cfg, epochs=6, name="full.pt")
    full.fit()
    h = full.history
    assert h[-1]["train_loss"] < h[0]["train_loss"] and max(r["val_acc"] for r in h) > 0.8
    assert sum(full.method.counts) == len(full.train_idx)
    _trainer(tmp_path, cfg, epochs=3, name="part.pt").fit()
    resumed = _trainer(tmp_path, cfg, epochs=6, name="part.pt")
    resumed.fit()
    for (k, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), k
    assert resumed.history == full.history and resumed.method.counts == full.method.counts
