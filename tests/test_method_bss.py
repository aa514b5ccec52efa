"""BSS: the per-sample scores of a constructed model against an independent computation, the
official pacing counts by hand, which samples CL admits (easiest first) and SPL's seeded
weighted order, that the sampler hook returns training indices only, and a training run of each
variant that learns and resumes bit-identically."""
import math

import pytest
import torch
from torch import nn

from dyncim import config as C
from dyncim.methods import bss as B
from dyncim.methods.base import Context
from dyncim.methods.bss import BSS, admitted_count, min_max, pacing
from dyncim.models.multimodal import Output
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, tiny_features

DEFAULTS = {"type": "bss", **C._fill_defaults(C.load_schema()["$defs"]["method_bss"], {})}


def test_defaults_are_the_official_ones():
    assert (DEFAULTS["lambda_0"], DEFAULTS["t_grow"], DEFAULTS["eps"]) == (0.1, 40, 0.01)
    assert (DEFAULTS["fused_weight"], DEFAULTS["unimodal_weight"]) == (0.1, 0.9)
    assert DEFAULTS["variant"] == "cl" and DEFAULTS["fusion"] == "concat"
    params = C.load("params.yaml")
    assert C.method_config(params, "bss-spl")["variant"] == "spl"


def test_pacing_counts_by_hand():
    # lambda_t = min(1, sqrt(0.99 / 40 (t + 1) + 0.01)); N = 1000
    by_hand = {0: 0.034750, 1: 0.059500, 2: 0.084250, 9: 0.257500, 38: 0.9752500}
    for t, sq in by_hand.items():
        assert pacing(t, 0.1, 40) == pytest.approx(math.sqrt(sq), abs=1e-12)
    # int(1000 sqrt(.03475)) = int(186.41) = 186; sqrt(.0595) = .24393 -> 243; sqrt(.08425) = .29026
    # -> 290; sqrt(.2575) = .50744 -> 507; sqrt(.97525) = .98755 -> 987; t = 39: exactly 1 -> 1000
    assert [admitted_count(1000, t, 0.1, 40) for t in (0, 1, 2, 9, 38, 39, 60)] == \
        [186, 243, 290, 507, 987, 1000, 1000]
    # N = 90 (the test runs' split): int(90 * .18641) = 16, int(90 * .24393) = 21, int(90 * .29026) = 26
    assert [admitted_count(90, t, 0.1, 40) for t in range(3)] == [16, 21, 26]
    # t_grow 2: t = 0: sqrt(.495 + .01) = .71063 -> 63 of 90; t = 1: 1 -> 90
    assert [admitted_count(90, t, 0.1, 2) for t in range(3)] == [63, 90, 90]


def test_min_max_and_a_constant_score():
    assert min_max(torch.tensor([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert min_max(torch.tensor([5.0, 5.0])).tolist() == [0.0, 0.0]


class Fixed(nn.Module):
    """A 'model' whose per-modality logits are a fixed table, by sample index."""

    def __init__(self, za, zv):
        super().__init__()
        self.za, self.zv = za, zv

    def forward(self, xs):
        i = xs[0][:, 0].long()
        return Output([], [self.za[i], self.zv[i]], self.za[i] + self.zv[i])


class Data:
    def __init__(self, labels):
        self.labels = labels
        self.calls = []

    def batch(self, idx, train=True, generator=None):
        self.calls.append(train)
        return [idx[:, None].float()]


def ctx(n=2, samples=8):
    return Context(names=["a", "v", "t"][:n], n_classes=3, n_samples=samples, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


def test_scores_of_a_constructed_model_by_an_independent_computation():
    za = torch.tensor([[3.0, 0, 0], [0, 3, 0], [1, 1, 1], [0, 0, 4], [2, 0, 0], [0, 1, 0]])
    zv = torch.tensor([[3.0, 0, 0], [0, 0, 3], [1, 1, 1], [4, 0, 0], [2, 0, 0], [0, 2, 1]])
    y = torch.tensor([0, 1, 2, 2, 0, 1])
    data, model = Data(y), Fixed(za, zv)
    m = BSS(dict(DEFAULTS), ctx(samples=6))
    idx = torch.arange(6)
    sim, loss = m.raw_scores(model, data, idx, batch_size=4)
    assert data.calls == [False, False]                      # un-augmented, in batches of 4
    for i in range(6):                                       # by hand, per sample, in plain Python
        def sm(z):
            e = [math.exp(v) for v in z.tolist()]
            return [v / sum(e) for v in e]
        pa, pv = sm(za[i]), sm(zv[i])
        cos = sum(a * b for a, b in zip(pa, pv)) / math.sqrt(sum(a * a for a in pa) * sum(b * b for b in pv))
        pf = sm(za[i] + zv[i])
        ce = lambda p: -math.log(p[int(y[i])])            # noqa: E731
        assert float(sim[i]) == pytest.approx(cos, abs=1e-6)
        assert float(loss[i]) == pytest.approx(0.9 * (ce(pa) + ce(pv)) + 0.1 * ce(pf), abs=1e-5)
    # identical confident right predictions: agreement 1, lowest loss; sample 3: opposite, wrong
    assert float(sim[0]) == pytest.approx(1.0) and int(loss.argmin()) == 0
    s = (sim - sim.min()) / (sim.max() - sim.min())
    l = (loss - loss.min()) / (loss.max() - loss.min())
    torch.testing.assert_close(m.difficulty(sim, loss), (1 - s) + l)
    spl = BSS({**DEFAULTS, "variant": "spl"}, ctx(samples=6))
    torch.testing.assert_close(spl.difficulty(sim, loss), l - s)


def test_three_modalities_mean_pairwise_agreement():
    z = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, 0.0]])]
    p = [torch.softmax(t, 1) for t in z]
    cos = lambda a, b: float((a * b).sum() / (a.norm() * b.norm()))   # noqa: E731
    want = (cos(p[0], p[1]) + cos(p[0], p[2]) + cos(p[1], p[2])) / 3
    assert float(B.agreement(z)) == pytest.approx(want, abs=1e-6)


class FixedScore(BSS):
    """The scoring pass replaced by a fixed difficulty per training-split position."""
    d = None
    passes = 0

    def score(self, run):
        self.passes += 1
        return self.d.clone()


def _trainer(tmp_path, cfg=None, dims=(5, 4), epochs=4, name="t.pt", n=150, seed=0):
    return Trainer(tiny_features(n=n, dims=dims), {**DEFAULTS, **(cfg or {})},
                   {**TRAIN_CFG, "epochs": epochs}, seed, torch.device("cpu"), tmp_path / name, None,
                   "bss-test")


def _view(t, epoch):
    t.epoch = epoch
    return t.view()


def test_cl_admits_the_easiest_in_the_permutations_order(tmp_path):
    t = _trainer(tmp_path, {"t_grow": 4}, n=150)             # 90 training samples
    tr = t.train_idx
    m = FixedScore(dict(t.method.cfg), t.method.ctx)
    g = torch.Generator().manual_seed(1)
    m.d = torch.rand(len(tr), generator=g)
    m.d[5] = m.d[7] = -1.0                                    # a tie: position order (stable)
    easy = [int(tr[i]) for i in sorted(range(len(tr)), key=lambda i: float(m.d[i]))]   # Python's sort
    for epoch in range(5):
        perm = tr[torch.randperm(len(tr), generator=g)]
        out = m.epoch_indices(_view(t, epoch), perm)
        k = int(90 * min(1, math.sqrt(0.99 / 4 * (epoch + 1) + 0.01)))   # 45.67, 63.96, 78.07 -> 45, 63, 78, then 90
        assert len(out) == k == [45, 63, 78, 90, 90][epoch]
        assert set(out.tolist()) == set(easy[:k])            # the k easiest
        assert out.tolist() == [i for i in perm.tolist() if i in set(easy[:k])]   # perm's order
        assert set(out.tolist()) <= set(tr.tolist()) and len(set(out.tolist())) == k
    assert m.order.tolist()[:2] == [int(tr[5]), int(tr[7])]
    assert m.passes == 1                                      # CL scores once (epoch 0)
    assert m.admitted == pytest.approx([45 / 90, 63 / 90, 78 / 90, 1.0, 1.0])


def test_spl_draws_every_sample_once_weighted_by_ease(tmp_path):
    t = _trainer(tmp_path, {"variant": "spl"}, n=150)
    tr = t.train_idx
    m = FixedScore(dict(t.method.cfg), t.method.ctx)
    m.d = torch.linspace(-1, 1, len(tr))                     # position 0 easiest
    perm = tr[torch.randperm(len(tr))]
    out = m.epoch_indices(_view(t, 0), perm)
    g = torch.Generator().manual_seed(0 + B.BSS_SEED)          # by hand: the official draw
    w = 1 - torch.linspace(-1, 1, len(tr)) + 0.01
    want = tr[torch.multinomial(w / w.sum(), len(tr), replacement=False, generator=g)]
    assert torch.equal(out, want)
    assert sorted(out.tolist()) == sorted(tr.tolist())        # a permutation of the training split
    assert m.passes == 1 and m.admitted == [1.0]
    m.epoch_indices(_view(t, 1), perm)
    assert m.passes == 2                                      # SPL re-scores every epoch
    # easy samples come early: over many draws, the mean position of the easiest tenth is lower
    pos = torch.stack([torch.multinomial(w / w.sum(), len(tr), generator=g).argsort() for _ in range(200)])
    assert float(pos[:, :9].float().mean()) < float(pos[:, -9:].float().mean()) - 20


def test_hook_on_a_real_model_returns_training_indices_only(tmp_path):
    for variant in ("cl", "spl"):
        t = _trainer(tmp_path, {"variant": variant}, n=150, name=f"{variant}.pt")
        perm = t.train_idx[torch.randperm(len(t.train_idx))]
        out = t.method.epoch_indices(_view(t, 0), perm)
        assert out.dim() == 1 and out.dtype == torch.long
        assert set(out.tolist()) <= set(t.train_idx.tolist()) and len(set(out.tolist())) == len(out)
        assert len(out) == (16 if variant == "cl" else 90)


def test_loss_is_the_official_weighted_sum():
    torch.manual_seed(0)
    out = Output([], [torch.randn(4, 3), torch.randn(4, 3)], torch.randn(4, 3))
    y = torch.tensor([0, 1, 2, 0])
    ce = torch.nn.functional.cross_entropy
    res = BSS(dict(DEFAULTS), ctx()).loss(None, out, y, None)
    torch.testing.assert_close(res.loss, 0.1 * ce(out.fused, y) + 0.9 * (ce(out.logits[0], y) + ce(out.logits[1], y)))


@pytest.mark.parametrize("variant", ["cl", "spl"])
def test_training_learns_and_resumes_bit_identically(tmp_path, variant):
    cfg = {"variant": variant, "t_grow": 3}
    full = _trainer(tmp_path, cfg, epochs=6, name="full.pt")
    full.fit()
    h = full.history
    assert h[-1]["train_loss"] < h[0]["train_loss"] and max(r["val_acc"] for r in h) > 0.8
    _trainer(tmp_path, cfg, epochs=3, name="part.pt").fit()
    resumed = _trainer(tmp_path, cfg, epochs=6, name="part.pt")
    resumed.fit()
    for (k, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), k
    assert resumed.history == full.history
    assert resumed.method.admitted == full.method.admitted and len(full.method.admitted) == 6
    if variant == "cl":
        assert full.method.admitted == [int(90 * pacing(e, 0.1, 3)) / 90 for e in range(6)]
        assert full.method.admitted[0] < 1.0 and full.method.admitted[-1] == 1.0
    else:
        assert full.method.admitted == [1.0] * 6
        assert torch.equal(full.method.gen.get_state(), resumed.method.gen.get_state())
    w = RecordingWriter()
    full.method.log(w, 6)
    assert w.scalars["bss/admitted"] == full.method.admitted[-1]
    assert all(math.isfinite(v) for v in w.scalars.values())
    d = full.method.training_record()
    assert d["admitted_mean"] == pytest.approx(sum(full.method.admitted) / 6)
