"""Diagnosing & Re-learning: purity diagnosis on known clusters, soft re-initialisation, training."""
import math

import pytest
import torch

from dyncim.config import TRAIN_DEFAULTS
from dyncim.methods.base import Context
from dyncim.methods.relearning import Relearning, diagnose, kmeans, minmax_scale, purity
from dyncim.models import build_model
from tests.conftest import tiny_features

CFG = {"type": "relearning", "fusion": "concat", "reinit_every": 20, "reinit_times": 3,
       "move_lambda": 3.0, "kmeans_restarts": 10, "kmeans_iters": 300, "kmeans_seed": 0}


def ctx(names=("a", "b"), n=30, epochs=3, steps=1):
    return Context(names=list(names), n_classes=3, n_samples=n, epochs=epochs, steps_per_epoch=steps,
                   device=torch.device("cpu"))


def blobs(per_blob=10, seed=0):
    """Three tight, far-apart blobs of `per_blob` points each (k-means must find them exactly)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [0.0, 10.0, -5.0]])
    return centres.repeat_interleave(per_blob, 0) + 0.05 * torch.randn(3 * per_blob, 3, generator=g)


def test_purity_by_hand():
    clusters = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y = torch.tensor([1, 1, 0, 2, 2, 0, 1, 1, 2])
    # cluster 0: majority 1 (2 of 3); cluster 1: 2 (2 of 2); cluster 2: 1 (2 of 4) -> 6 / 9
    assert purity(clusters, y, 3).item() == pytest.approx(6 / 9)


def test_kmeans_recovers_known_clusters():
    x = blobs()
    lab = kmeans(minmax_scale(x), 3)
    truth = torch.arange(3).repeat_interleave(10)
    # the same partition up to a relabelling: each blob is one cluster, the clusters differ
    assert all(len(set(lab[truth == b].tolist())) == 1 for b in range(3))
    assert len(set(lab.tolist())) == 3


def test_minmax_scale_matches_definition():
    x = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [2.0, 5.0, 0.0]])
    expected = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 1.0], [0.0, -1.0, -1.0]])
    assert torch.allclose(minmax_scale(x), expected)


def test_diagnosis_on_known_clusters():
    # Train labels: blob 0 all class 0; blob 1 eight of class 1, two of class 2; blob 2 all class 2.
    y_tr = torch.tensor([0] * 10 + [1] * 8 + [2] * 2 + [2] * 10)
    # Val labels: blob 0 five 0 / five 1; blob 1 all 1; blob 2 six 2 / four 0.
    y_va = torch.tensor([0] * 5 + [1] * 5 + [1] * 10 + [2] * 6 + [0] * 4)
    f_tr, f_va = blobs(seed=1), blobs(seed=2)
    # modality b: the same blobs scaled and shifted (min-max scaling removes that)
    p_tr, p_va, alpha = diagnose([f_tr, 7 * f_tr + 3], y_tr, [f_va, -2 * f_va], y_va,
                                 n_classes=3, move_lambda=3.0)
    assert p_tr.tolist() == pytest.approx([28 / 30, 28 / 30])
    assert p_va.tolist() == pytest.approx([21 / 30, 21 / 30])
    # float32 tanh: kernels differ between CPUs by an ulp or two (1e-5 is ~80 ulps, far below any
    # wrong formula's effect); the purities are exact fractions, correctly rounded on every CPU
    assert alpha.tolist() == pytest.approx([math.tanh(3.0 * 7 / 30)] * 2, rel=1e-5)
    # no train-val gap, no re-initialisation
    truth = torch.arange(3).repeat_interleave(10)
    _, _, alpha0 = diagnose([f_tr], truth, [f_va], truth, n_classes=3, move_lambda=3.0)
    assert alpha0.tolist() == [0.0]


@pytest.mark.parametrize("names", [("a", "b"), ("a", "b", "c")])
def test_reinit_moves_alpha_of_the_way_back(names):
    torch.manual_seed(0)
    method = Relearning(CFG, ctx(names))
    model = build_model([5, 4, 6][:len(names)], 3, method.fusion, {"hidden": [8], "dropout": 0.0})
    method.setup(model)
    init = [[p.detach().clone() for p in enc.parameters()] for enc in model.encoders]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = [[p.detach().clone() for p in enc.parameters()] for enc in model.encoders]
    head = [p.detach().clone() for p in model.fusion.parameters()]
    alpha = torch.tensor([0.25, 0.6, 1.0][:len(names)])
    method.reinit(model, alpha)
    for m, enc in enumerate(model.encoders):
        a = float(alpha[m])
        for p, p_cur, p0 in zip(enc.parameters(), before[m], init[m]):
            assert torch.allclose(p, (1 - a) * p_cur + a * p0, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(model.fusion.parameters(), head))   # head untouched


def schedule(cfg, epochs):
    method = Relearning(cfg, ctx(epochs=epochs))
    return [e for e in range(epochs) if method.due(e)]


@pytest.mark.parametrize("epochs, expected", [(40, [10, 20, 30]), (60, [15, 30, 45]), (90, [22, 44, 66]),
                                              (41, [10, 20, 30]), (4, [1, 2, 3]), (7, [1, 2, 3])])
def test_period_follows_the_run_length_so_every_reinitialisation_happens(epochs, expected):
    cfg = {**CFG, "reinit_every": None, "reinit_times": 3}
    assert schedule(cfg, epochs) == expected
    # T = epochs // (reinit_times + 1): evenly spaced, the last at least T epochs before the end
    assert len(expected) == 3 and epochs - expected[-1] >= expected[0]


def test_period_follows_the_run_length_other_counts_and_short_runs():
    assert schedule({**CFG, "reinit_every": None, "reinit_times": 2}, 40) == [13, 26]
    assert schedule({**CFG, "reinit_every": None, "reinit_times": 1}, 40) == [20]
    assert schedule({**CFG, "reinit_every": None, "reinit_times": 0}, 40) == []
    # shorter than reinit_times + 1 epochs: every epoch after the first, fewer than asked
    assert schedule({**CFG, "reinit_every": None, "reinit_times": 3}, 3) == [1, 2]


def test_explicit_period_is_the_official_fixed_schedule():
    # ours.sh: --epochs 90 --reinit_epoch 20 --reinit_num 3 -> after epochs 20, 40, 60 (80 is past reinit_num)
    assert schedule(CFG, 90) == [20, 40, 60]
    assert schedule(CFG, 200) == [20, 40, 60]
    # the fixed period cuts a shorter run's schedule short (the reason for the derived default)
    assert schedule(CFG, 40) == [20]
    assert schedule(CFG, 60) == [20, 40]
    with pytest.raises(ValueError, match="reinit_every"):
        Relearning({**CFG, "reinit_every": 0}, ctx())


def test_schema_default_is_the_derived_period():
    from dyncim.config import load_schema
    props = load_schema()["$defs"]["method_relearning"]["properties"]
    assert props["reinit_every"]["default"] is None and props["reinit_times"]["default"] == 3


def make_trainer(tmp_path, monkeypatch, cfg, n_mod=2, epochs=3):
    from dyncim.train.loop import Trainer
    tcfg = {**TRAIN_DEFAULTS, "epochs": epochs, "batch_size": 16, "hidden": [8], "lr": 0.05}
    return Trainer(tiny_features(n=60, dims=(6, 5, 4)[:n_mod]), cfg, tcfg, seed=0, device=torch.device("cpu"),
                   ckpt_path=tmp_path / "last.pt", log_dir=None, fingerprint="x")


def test_on_epoch_end_reinitialises_with_the_diagnosed_alpha(tmp_path, monkeypatch):
    cfg = {**CFG, "reinit_every": 1, "reinit_times": 2}
    tr = make_trainer(tmp_path, monkeypatch, cfg)
    tr.train_epoch()
    tr.train_epoch()
    before = [[p.detach().clone() for p in enc.parameters()] for enc in tr.model.encoders]
    tr.epoch = 1
    tr.method.on_epoch_end(tr.view())
    alpha = tr.method.last["alpha"]
    assert tr.method.last["epoch"] == 1 and all(0 < a < 1 for a in alpha), alpha
    for m, enc in enumerate(tr.model.encoders):
        for p, p_cur, p0 in zip(enc.parameters(), before[m], tr.method.init[m]):
            assert torch.allclose(p, (1 - alpha[m]) * p_cur + alpha[m] * p0, atol=1e-6)


def test_training_reinitialises_reinit_times_times_with_the_derived_period(tmp_path, monkeypatch):
    cfg = {**CFG, "reinit_every": None, "reinit_times": 2}
    tr = make_trainer(tmp_path, monkeypatch, cfg, epochs=7)          # T = 7 // 3 = 2
    done = []
    reinit = tr.method.reinit
    monkeypatch.setattr(tr.method, "reinit", lambda model, alpha: (done.append(tr.method.epoch),
                                                                   reinit(model, alpha)))
    tr.fit()
    assert done == [2, 4] and tr.method.last["epoch"] == 4


@pytest.mark.parametrize("n_mod", [2, 3])
def test_training_runs(tmp_path, monkeypatch, n_mod):
    cfg = {**CFG, "reinit_every": 1, "reinit_times": 1}
    tr = make_trainer(tmp_path, monkeypatch, cfg, n_mod=n_mod, epochs=3)
    start = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit()
    assert all(math.isfinite(r["train_loss"]) for r in tr.history)
    assert tr.method.last["epoch"] == 1                          # once (reinit_times 1), after epoch 1
    assert any(not torch.equal(v, start[k]) for k, v in tr.model.state_dict().items())
