"""Modality valuation: Shapley contributions on hand-made 2- and 3-modality games and on a model
(against the official two-modality formula and an independent average over all orderings), the
permutation estimate, the sample- and modality-level re-sampling counts, the epoch the
re-sampling starts, the feature zeroing of copies, and a training run that learns and resumes
bit-identically."""
import itertools
import math

import pytest
import torch

from dyncim import config as C
from dyncim.methods import valuation as V
from dyncim.methods.base import Context
from dyncim.methods.valuation import (Valuation, exact_shapley, modality_difference, permutation_shapley,
                                      sample_copies, subset_values)
from dyncim.models import build_model
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, tiny_features

DEFAULTS = {"type": "valuation", **C._fill_defaults(C.load_schema()["$defs"]["method_valuation"], {})}


def table(*rows):
    """Per-subset value tensors from rows of per-sample values, rows indexed by subset bitmask."""
    return [torch.tensor(r, dtype=torch.float64) for r in rows]


def test_defaults_are_the_official_ones():
    assert (DEFAULTS["warmup"], DEFAULTS["part_ratio"], DEFAULTS["alpha"]) == (5, 0.2, 1.0)
    assert DEFAULTS["level"] == "sample" and DEFAULTS["func"] == "linear" and DEFAULTS["fusion"] == "concat"


def test_two_modalities_every_correctness_pattern_matches_the_official_formula():
    # samples: (all, a, v) correct?  - the 8 patterns; official value_all = 2, value_a/v = 1
    pats = list(itertools.product([0, 1], repeat=3))
    v_all = [2.0 * p[0] for p in pats]
    v_a = [1.0 * p[1] for p in pats]
    v_v = [1.0 * p[2] for p in pats]
    phi = exact_shapley(table([0.0] * 8, v_a, v_v, v_all), 2)
    for i in range(8):   # sample_level.py: contrib_a = (value_a + value_all - value_v) / 2
        assert phi[i].tolist() == [(v_a[i] + v_all[i] - v_v[i]) / 2, (v_v[i] + v_all[i] - v_a[i]) / 2]
        assert float(phi[i].sum()) == v_all[i]
    # subset_values: |S| where the subset's prediction is right
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    assert subset_values(logits, torch.tensor([0, 0, 0]), 2).tolist() == [2.0, 0.0, 2.0]


def test_three_modality_game_by_hand():
    # one sample; subsets by bitmask: {}, {0}, {1}, {0,1}, {2}, {0,2}, {1,2}, {0,1,2}
    v = [0.0, 1.0, 0.0, 2.0, 1.0, 0.0, 2.0, 3.0]
    phi = exact_shapley(table(*[[x] for x in v]), 3)[0].tolist()
    # by hand: weights 1/3 (S empty), 1/6 (one other), 1/3 (both others)
    p0 = (1 - 0) / 3 + ((2 - 0) + (0 - 1)) / 6 + (3 - 2) / 3       # = 1/3 + 1/6 + 1/3
    p1 = (0 - 0) / 3 + ((2 - 1) + (2 - 1)) / 6 + (3 - 0) / 3       # = 0 + 1/3 + 1
    p2 = (1 - 0) / 3 + ((0 - 1) + (2 - 0)) / 6 + (3 - 2) / 3       # = 1/3 + 1/6 + 1/3
    assert phi == pytest.approx([p0, p1, p2], abs=1e-12)
    assert phi == pytest.approx([5 / 6, 4 / 3, 5 / 6], abs=1e-12)
    assert sum(phi) == pytest.approx(v[7] - v[0], abs=1e-12)
    # a game with v(empty) != 0: contributions sum to v(all) - v(empty)
    w = [0.5, 1.0, 0.0, 2.0, 1.0, 0.0, 2.0, 3.0]
    assert float(exact_shapley(table(*[[x] for x in w]), 3).sum()) == pytest.approx(2.5, abs=1e-12)


def by_orderings(value, n):
    """Shapley values as the average over all n! orderings of each player's marginal gain."""
    phi = [0.0] * n
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        mask = 0
        for m in order:
            phi[m] += value(mask | 1 << m) - value(mask)
            mask |= 1 << m
    return [p / len(orders) for p in phi]


def test_permutation_estimate_sums_exactly_and_converges_to_the_exact_values():
    g = torch.Generator().manual_seed(0)
    vals = [torch.zeros(6, dtype=torch.float64)] + [torch.randint(0, 4, (6,), generator=g).double()
                                                      for _ in range(31)]
    exact = exact_shapley(vals, 5)
    for i in range(6):
        assert exact[i].tolist() == pytest.approx(by_orderings(lambda s: float(vals[s][i]), 5), abs=1e-12)
    orders = torch.argsort(torch.rand(4000, 5, generator=g), dim=1)
    est = permutation_shapley(lambda mask: vals[mask], 5, orders)
    torch.testing.assert_close(est.sum(1), vals[31], rtol=0, atol=1e-12)   # every order sums exactly
    assert float((est - exact).abs().max()) < 0.1


def ctx(n=2, samples=100):
    return Context(names=["a", "v", "t"][:n], n_classes=3, n_samples=samples, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


def _trainer(tmp_path, cfg=None, dims=(5, 4), epochs=4, name="t.pt", n=150, seed=0):
    return Trainer(tiny_features(n=n, dims=dims), {**DEFAULTS, **(cfg or {})},
                   {**TRAIN_CFG, "epochs": epochs}, seed, torch.device("cpu"), tmp_path / name, None,
                   "valuation-test")


@pytest.mark.parametrize("dims", [(5, 4), (5, 4, 3)])
def test_contributions_of_a_model_equal_an_independent_computation(tmp_path, dims):
    t = _trainer(tmp_path, dims=dims)
    t.fit()   # a trained model: a mix of right and wrong subsets
    m, n = t.method, len(dims)
    phi = m.contributions(t.view(), t.train_idx)
    model = t.model.eval()
    with torch.no_grad():
        xs, y = t.data.batch(t.train_idx), t.data.labels[t.train_idx]
        feats = [enc(x) for enc, x in zip(model.encoders, xs)]
        # the official exec_drop: the fusion layer on features with the dropped modalities zeroed
        right = {s: (model.fusion([h if s >> k & 1 else torch.zeros_like(h) for k, h in enumerate(feats)])[0]
                     .argmax(1) == y) for s in range(1, 2 ** n)}
    for i in range(len(y)):
        value = lambda s: 0.0 if s == 0 else bin(s).count("1") * float(right[s][i])  # noqa: E731
        assert phi[i].tolist() == pytest.approx(by_orderings(value, n), abs=1e-6)
    if n == 2:
        va, vv, vall = right[1].double(), right[2].double(), 2 * right[3].double()
        torch.testing.assert_close(phi[:, 0].double(), (va + vall - vv) / 2)
    # efficiency: each sample's contributions add up to v(all) - v(empty), n or 0 (float32 sums)
    total = phi.sum(1)
    assert bool(((total - n).abs() < 1e-5).logical_or(total.abs() < 1e-5).all())


def test_permutation_path_beyond_the_exact_limit(tmp_path):
    t = _trainer(tmp_path, {"shapley_exact_max": 2, "shapley_permutations": 400}, dims=(5, 4, 3), epochs=2)
    t.fit()
    est = t.method.contributions(t.view(), t.train_idx)
    exact = Valuation({**DEFAULTS}, ctx(3, 150)).contributions(t.view(), t.train_idx)
    torch.testing.assert_close(est.sum(1), exact.sum(1), rtol=0, atol=1e-5)
    assert float((est - exact).abs().max()) < 0.25
    assert t.method.gen is not None                          # the orders came from the method's generator


def test_sample_level_copies_by_the_official_thresholds():
    phi = torch.tensor([[0.5, 1.0], [0.0, 1.5], [-0.5, 0.5], [0.4, -0.1], [0.41, 0.99], [1.0, 0.39]])
    assert sample_copies(phi).tolist() == [[1, 0], [2, 0], [3, 1], [0, 0], [1, 1], [0, 2]]


class FixedPhi(Valuation):
    """The valuation replaced by a fixed contribution table (per training-split position)."""
    phi = None

    def contributions(self, run, index):
        return self.phi.to(torch.float32)


def test_sample_level_resampled_epoch_holds_the_originals_and_the_copies(tmp_path):
    t = _trainer(tmp_path, {"warmup": 1}, epochs=1, n=20)
    m = FixedPhi(dict(t.method.cfg), t.method.ctx)
    tr = t.train_idx                                          # 12 training samples
    m.phi = torch.tensor([[0.5, 1.0], [0.0, 1.5], [-0.5, 0.5]] * 4)
    m.on_epoch_end(t.view())                                   # epoch 0 >= warmup - 1: copies
    want = []
    for i in range(len(tr)):
        for k, c in enumerate([[1, 0], [2, 0], [3, 1]][i % 3]):
            want += [(int(tr[i]), k)] * c
    got = list(zip(m.copies[0].tolist(), m.copies[1].tolist()))
    assert sorted(got) == sorted(want) and len(got) == 4 * (1 + 2 + 4)
    perm = tr[torch.randperm(len(tr))]
    idx = m.epoch_indices(t.view(), perm)
    pairs = sorted(zip(idx.tolist(), m._keep.tolist()))
    assert pairs == sorted([(int(i), -1) for i in tr] + want)   # every original once, plus the copies
    assert len(idx) == len(tr) + 28


@pytest.mark.parametrize("func,expect", [("linear", lambda d: d), ("tanh", math.tanh), ("square", lambda d: d ** 1.5)])
def test_modality_level_count_and_kept_modality(tmp_path, func, expect):
    t = _trainer(tmp_path, {"warmup": 1, "level": "modality", "func": func, "alpha": 1.0}, epochs=1, n=100)
    m = FixedPhi(dict(t.method.cfg), t.method.ctx)
    n = len(t.train_idx)                                      # 60
    m.phi = torch.tensor([[0.25, 1.0]] * n)                    # every Z has the same mean
    m.on_epoch_end(t.view())
    d = abs((1 - 0.25) - (1 - 1.0)) / 3 * 2                    # modality_level.py's |gap_a - gap_v| / 3 * 2
    assert len(m.copies[0]) == int(expect(d) * n)
    assert set(m.copies[1].tolist()) == {0}                    # the low-contribution modality trains alone
    assert set(m.copies[0].tolist()) <= set(t.train_idx.tolist())
    assert modality_difference(torch.tensor([1.0, 0.25]), 2.0, "linear") == pytest.approx(1.0)


def test_modality_level_draws_z_and_copies_from_the_seeded_generator(tmp_path):
    t = _trainer(tmp_path, {"warmup": 1, "level": "modality"}, epochs=1, n=100)
    m = FixedPhi(dict(t.method.cfg), t.method.ctx)
    n = len(t.train_idx)
    m.phi = torch.cat([torch.zeros(n // 2, 2), torch.ones(n - n // 2, 2)]) * torch.tensor([1.0, 0.0])
    m.on_epoch_end(t.view())
    g = torch.Generator().manual_seed(0 + V.VALUATION_SEED)    # by hand: Z, then the copies
    z = torch.randint(n, (int(n * 0.2),), generator=g)
    part = m.phi[z].mean(0)
    count = int(abs(float(part[0] - part[1])) * 2 / 3 * n)
    rows = torch.randint(n, (count,), generator=g)
    assert torch.equal(m.part_contribution, part)
    assert torch.equal(m.copies[0], t.train_idx[rows])
    assert set(m.copies[1].tolist()) == {1}


def test_copies_train_their_modality_alone():
    torch.manual_seed(0)
    model = build_model([5, 4], 3, "concat", {"hidden": [8], "dropout": 0.0})
    m = Valuation(dict(DEFAULTS), ctx())
    xs = [torch.randn(6, 5), torch.randn(6, 4)]
    m._keep, m._cursor = torch.tensor([-1, 0, 1, -1, 0, 1, 1]), 1   # positions 1..6 this batch
    out = m.forward(model, xs, torch.arange(6))
    assert m._cursor == 7
    h = model.encode(xs)
    keep = [0, 1, -1, 0, 1, 1]
    for i, k in enumerate(keep):
        fs = [h[j][i:i + 1] if k in (-1, j) else torch.zeros_like(h[j][i:i + 1]) for j in range(2)]
        torch.testing.assert_close(out.fused[i:i + 1], model.fusion(fs)[0])
    # the rows that keep modality 0 alone send no gradient into encoder 1 (official a[i, :] = 0)
    m._cursor = 1
    out = m.forward(model, xs, torch.arange(6))
    out.fused[[0, 3]].sum().backward()
    assert all(float(p.grad.abs().sum()) == 0 for p in model.encoders[1].parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in model.encoders[0].parameters())


def test_resampling_starts_after_the_warmup_epochs(tmp_path):
    t = _trainer(tmp_path, {"warmup": 2}, epochs=4)
    sizes = []
    hook = t.method.epoch_indices

    def spy(run, perm):
        out = hook(run, perm)
        sizes.append(len(out))
        return out
    t.method.epoch_indices = spy
    t.fit()
    n = len(t.train_idx)
    assert sizes[:2] == [n, n] and all(s > n for s in sizes[2:])   # epochs 0, 1 plain; 2, 3 re-sampled


@pytest.mark.parametrize("level", ["sample", "modality"])
def test_training_learns_and_resumes_bit_identically(tmp_path, level):
    cfg = {"warmup": 1, "level": level}
    full = _trainer(tmp_path, cfg, epochs=6, name="full.pt")
    full.fit()
    h = full.history
    assert h[-1]["train_loss"] < h[0]["train_loss"] and max(r["val_acc"] for r in h) > 0.8
    assert full.method.copies is not None and len(full.method.copies[0]) > 0
    _trainer(tmp_path, cfg, epochs=3, name="part.pt").fit()
    resumed = _trainer(tmp_path, cfg, epochs=6, name="part.pt")
    resumed.fit()
    for (k, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), k
    assert resumed.history == full.history
    assert torch.equal(full.method.gen.get_state(), resumed.method.gen.get_state())
    w = RecordingWriter()
    full.method.log(w, 6)
    assert w.scalars["valuation/copies"] == len(full.method.copies[0])
    assert all(math.isfinite(v) for v in w.scalars.values())
