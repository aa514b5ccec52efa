"""DynCIM: the properties of docs/method.md, each with numbers. (The fused path against the
reference implementation: tests/test_dyncim_reference.py; hand-computed curriculum numbers:
tests/test_dyncim_numbers.py.)"""

import math

import pytest
import torch
from torch.nn import functional as F

from dyncim import config as C
from dyncim.evaluation.evaluate import load_run
from dyncim.methods.base import Context
from dyncim.methods.dyncim import DynCIM, log_gmr, log_hmir, self_paced_weights
from dyncim.models import build_model
from dyncim.train.job import train_seed
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, at_epoch, tiny_features

DEFAULTS = {"type": "dyncim", **C._fill_defaults(C.load_schema()["$defs"]["method_dyncim"], {})}
ALL_OFF = {**DEFAULTS, "sdc": False, "mdc": False, "gate": False}
SUM_AUX = {"type": "joint", "fusion": "sum", "fused_weight": 0.5, "aux_weight": 0.5}


def trainer(tmp_path, feats, cfg, epochs=3, name="x.pt", seed=0, **train):
    return Trainer(feats, cfg, {**TRAIN_CFG, "epochs": epochs, **train}, seed, torch.device("cpu"),
                   tmp_path / name, None, "f")


def method(cfg=None, names=("a", "b"), n_classes=4, n_samples=100, epochs=10):
    ctx = Context(list(names), n_classes, n_samples, epochs, 5, torch.device("cpu"))
    m = DynCIM({**DEFAULTS, **(cfg or {})}, ctx)
    model = build_model([3] * len(names), n_classes, "sum", {"hidden": [8], "dropout": 0.0})
    m.setup(model)
    return m, model


def test_every_switch_off_is_sum_fusion_with_unimodal_losses_step_by_step(tmp_path):
    feats = tiny_features(n=200)
    a, b = trainer(tmp_path, feats, ALL_OFF, name="a.pt"), trainer(tmp_path, feats, SUM_AUX, name="b.pt")
    a.model.train(), b.model.train()
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    idx = a.train_idx
    for step in range(7):
        batch = idx[step * 16:(step + 1) * 16]
        xs, y = [v[batch] for v in feats.views], feats.labels[batch]
        oa, ob = a.method.forward(a.model, xs, batch), b.method.forward(b.model, xs, batch)
        ra, rb = a.method.loss(a.model, oa, y, batch), b.method.loss(b.model, ob, y, batch)
        # float32 over two code paths: equal up to summation order (a dropped term moves it by >1e-2)
        assert torch.allclose(ra.loss, rb.loss, rtol=1e-5, atol=1e-6), (step, ra.loss, rb.loss)
        for t in (a, b):
            t.optimizer.zero_grad()
        a.method.backward(a.model, ra), b.method.backward(b.model, rb)
        for k in pa:
            scale = float(pb[k].grad.abs().max())   # tolerance relative to the tensor, not per element
            torch.testing.assert_close(pa[k].grad, pb[k].grad, rtol=1e-5, atol=1e-6 * scale + 1e-12,
                                       msg=lambda m, k=k: f"step {step}, {k}: {m}")
        a.optimizer.step(), b.optimizer.step()


def js_divergence(logp, logq):
    """The textbook definition: ½·KL(p ‖ m) + ½·KL(q ‖ m), m = (p + q) / 2 (last dimension)."""
    p, q = logp.exp(), logq.exp()
    logm = ((p + q) / 2).log()
    return 0.5 * (p * (logp - logm)).sum(-1) + 0.5 * (q * (logq - logm)).sum(-1)


def test_d_task_has_batch_mean_one_and_v_and_gates_are_bounded():
    m, model = method()
    torch.manual_seed(0)
    for step in range(4):
        idx = torch.randperm(100)[:32]
        xs = [torch.randn(32, 3), torch.randn(32, 3)]
        y = torch.randint(0, 4, (32,))
        out = model(xs)
        m.loss(model, out, y, idx)
        d_task, v, g = m._trace["d_task"][-1], m._trace["v"][-1], m._trace["gate"][-1]
        assert d_task.mean().item() == pytest.approx(1.0, abs=1e-5) and (d_task > 0).all()
        # λ = 0.6 at epoch 0: 2η is the k-th smallest of 32 weighted losses, k = ⌈0.6·32⌉ = 20, and
        # that sample gets v = 0: 19 of 32 admitted
        assert (v >= 0).all() and (v <= 1).all() and (v > 0).sum().item() == math.ceil(0.6 * 32) - 1
        assert g.shape == (2, 32) and (g > 0).all() and (g < 1).all()
    m.begin_epoch(at_epoch(m.cfg["pace_epochs"]))  # pace over: every sample admitted with weight 1
    m.loss(model, model(xs), y, idx)
    writer = RecordingWriter()
    m.log(writer, m.epoch + 1)
    assert writer.scalars["dyncim/pace_admitted"] == 1.0
    assert torch.equal(writer.scalars["dyncim/v"], torch.ones(32))


def test_self_paced_weights_minimise_the_printed_objective():
    wl = torch.tensor([0.1, 0.5, 0.9, 1.3, 2.0])
    lam = 0.6
    v = self_paced_weights(wl, lam)
    two_eta = torch.sort(wl).values[2]  # k = ceil(0.6 * 5) = 3rd smallest
    grid = torch.linspace(0, 1, 10001)
    for i in range(5):  # v_i = argmin_v v·wl_i + η(1 − v)² over [0, 1]
        obj = grid * wl[i] + two_eta / 2 * (1 - grid) ** 2
        assert v[i].item() == pytest.approx(grid[obj.argmin()].item(), abs=1e-3)
    assert (v[wl >= two_eta] == 0).all() and (v[wl < two_eta] > 0).all()
    assert (v > 0).sum().item() == 2                    # k − 1 of B = 5: the k-th is the threshold


def test_pace_rises_linearly_to_one():
    m, _ = method({"pace_start": 0.6, "pace_epochs": 4})
    lams = []
    for e in range(6):
        m.epoch = e
        lams.append(m._pace())
    assert lams[:4] == pytest.approx([0.6, 0.7, 0.8, 0.9]) and lams[4:] == [None, None]


def test_gmr_is_one_for_identical_modalities_and_scale_free():
    s = torch.tensor([0.3, 0.3, 0.3])
    assert torch.allclose(log_gmr(s).exp(), torch.ones(3))
    s = torch.tensor([0.8, 0.2])
    assert torch.allclose(log_gmr(s).exp(), torch.tensor([2.0, 0.5]))      # 0.8/0.4, 0.2/0.4
    assert torch.allclose(log_gmr(s * 0.37), log_gmr(s), atol=1e-6)


def test_hmir_is_relative_to_the_harmonic_mean_and_bounded():
    r = torch.tensor([0.1, 0.1])
    assert torch.allclose(log_hmir(r, 1e-3, 2.0), torch.zeros(2))
    r = torch.tensor([0.2, 0.05])  # HM = 2 / (5 + 20) = 0.08
    assert torch.allclose(log_hmir(r, 1e-3, 2.0).exp(), torch.tensor([2.5, 0.625]))
    r = torch.tensor([0.5, -0.3])  # the negative rate is floored to 1e-3; the ratio (~250) is clipped
    hm = 2 / (1 / 0.5 + 1 / 1e-3)
    assert torch.allclose(log_hmir(r, 1e-3, 2.0), torch.tensor([2.0, math.log(1e-3 / hm)]), atol=1e-5)


def test_observed_divergences_match_the_definition():
    """observe's matrix form of both JS families equals the definition, pair by pair."""
    m, _ = method(names=("a", "b", "c"), n_classes=4)
    torch.manual_seed(2)
    z = torch.randn(3, 6, 4) * 2
    z[2] = z[1]                                   # two identical modalities
    lp, prob, plogp, dis, cons = m.observe(z.transpose(1, 2).reshape(3, -1), 4, 6)
    logp = F.log_softmax(z, -1)
    for k in range(3):
        others = (z.sum(0) - z[k]) / 2
        torch.testing.assert_close(dis[k], js_divergence(logp[k], F.log_softmax(others, -1)), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cons[k], js_divergence(logp[k], F.log_softmax(z.sum(0), -1)), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(plogp[:3], (logp.exp() * logp).sum(-1), atol=1e-6, rtol=1e-5)
    assert (dis >= -1e-6).all() and (cons >= -1e-6).all() and (dis[0] > 0.01).all()
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.1, 0.3, 0.6])   # the definition itself
    mid = (p + q) / 2
    want = 0.5 * (p * (p / mid).log()).sum() + 0.5 * (q * (q / mid).log()).sum()
    assert js_divergence(p.log(), q.log()).item() == pytest.approx(want.item(), rel=1e-5)


def test_stability_uses_each_samples_own_previous_deviation_under_shuffling():
    m, model = method(n_samples=10)
    torch.manual_seed(1)
    y = torch.randint(0, 4, (10,))
    ids1, ids2 = torch.randperm(10), torch.randperm(10)
    logits1, logits2 = torch.randn(10, 4), torch.randn(10, 4)  # fused logits, indexed by sample id

    cons = torch.rand(2, 10)

    def call(ids, logits):
        dev = F.cross_entropy(logits[ids], y[ids], reduction="none")
        raw, _ = m.signals(ids, dev, cons[:, ids])
        m._difficulty(ids, dev, cons[:, ids])
        return raw
    raw1 = call(ids1, logits1)
    dev1 = F.cross_entropy(logits1, y, reduction="none")
    assert torch.allclose(raw1[:, 0], dev1[ids1]) and (raw1[:, 2] == 0).all()   # first visit: 0
    assert torch.allclose(raw1[:, 1], cons[:, ids1].sum(0))
    raw2 = call(ids2, logits2)
    dev2 = F.cross_entropy(logits2, y, reduction="none")
    assert torch.allclose(raw2[:, 2], (dev2 - dev1).abs()[ids2], atol=1e-6)
    assert torch.equal(m.mem[:, 0], dev2)                                         # the latest deviation
    assert torch.allclose(m.mem[:, 1], torch.full((10,), m.cfg["gamma"]))         # history weight after a visit


@pytest.mark.parametrize("history", ["ema", "hadamard"])
def test_history_forms(history):
    m, _ = method({"history": history, "gamma": 0.5}, n_samples=8)
    ids = torch.arange(8)
    y = torch.zeros(8, dtype=torch.long)
    cons = torch.rand(2, 8)
    projs = []
    for t in range(3):
        dev = F.cross_entropy(torch.randn(8, 4), y, reduction="none")
        raw, _ = m.signals(ids, dev, cons)
        sd, mu = torch.std_mean(raw, 0, unbiased=False)
        projs.append(torch.sigmoid((raw - mu) / (sd + 1e-6)))
        D = m._difficulty(ids, dev, cons)
        assert D.mean().item() == pytest.approx(1.0, abs=1e-5)
    if history == "ema":
        want = 0.25 * projs[0] + 0.25 * projs[1] + 0.5 * projs[2]
        assert torch.allclose(m.mem[:, 2:5], want, atol=1e-5)
    else:  # (D'_t + D'_{t-1})/2 ⊙ mean(D'_1..D'_{t-1}); memory keeps the running mean and D'_t
        assert torch.allclose(m.mem[:, 2:5], (projs[0] + projs[1] + projs[2]) / 3, atol=1e-5)
        assert torch.allclose(m.mem[:, 5:8], projs[2], atol=1e-6)


def test_signal_switches_zero_their_weight():
    m, model = method({"sdc_consistency": False, "sdc_stability": False}, n_samples=16)
    ids = torch.arange(16)
    y = torch.randint(0, 4, (16,))
    dev = F.cross_entropy(torch.randn(16, 4), y, reduction="none")
    D = m._difficulty(ids, dev, torch.rand(2, 16))
    e0 = m.mem[:, 2]  # only the deviation's history counts
    assert torch.allclose(D, e0 / e0.mean(), atol=1e-6)
    with pytest.raises(ValueError, match="every SDC signal is off"):
        method({"sdc_deviation": False, "sdc_consistency": False, "sdc_stability": False})


def test_gate_normalisation_and_beta():
    z = torch.randn(3, 5, 4)
    g = torch.rand(5, 3) * 0.9 + 0.05
    ghat = 3 * g / g.sum(1, keepdim=True)
    want = sum(ghat[:, m, None] * z[m] for m in range(3))
    assert torch.allclose(DynCIM.fuse(z, g), want, atol=1e-6)
    assert torch.allclose(DynCIM.fuse(z, g * 0.3), want, atol=1e-5)  # a global rescaling does nothing
    m, _ = method({"rho": 1.0}, names=("a", "b", "c"))
    lg = torch.tensor([0.5, 0.0, -0.5])
    beta = m.betas(lg, torch.zeros(3))
    assert beta.sum().item() == pytest.approx(3.0) and beta[2] > beta[1] > beta[0]
    assert torch.allclose(beta, 3 * torch.softmax(-lg, 0))
    assert torch.equal(method({"gmr": False})[0].betas(lg[:2], torch.zeros(2)), torch.ones(2))


def test_a_noise_modality_gets_gmr_below_one_and_a_lower_gate(tmp_path):
    """On the synthetic generator: an informative linear view and a view that is pure noise."""
    from dyncim.data.sets import feature_set as Fe
    syn = C._fill_defaults(C.load_schema()["$defs"]["synthetic"], {
        "modalities": ["linear", "xor"], "per_class": 40, "linear": {"dim": 16, "scale": 0.5},
        "corrupt": [{"modality": 1, "kind": "noisy", "fraction": 1.0}]})
    ds = {"source": "synthetic", "synthetic": syn}
    Fe.make_split(ds, {"train": 0.6, "val": 0.2, "seed": 0}, None, tmp_path / "s.csv")
    Fe.build(ds, None, tmp_path / "s.csv", tmp_path / "f.pt")
    feats = Fe.load(tmp_path / "f.pt")
    feats.names = ["m0", "m1"]
    assert (feats.corrupted[:, 1] == 1).all()  # every sample's second view is noise
    t = trainer(tmp_path, feats, DEFAULTS, epochs=15)
    t.fit()
    d = t.method.diagnostics(t.model, t.data, t.data.index("test"))
    assert d["gmr_m0"] > 1 > d["gmr_m1"]
    assert d["gate_m0"] > d["gate_m1"]


def test_statistics_round_trip_and_predictions_are_label_free(tmp_path):
    from tests.conftest import REPO
    import yaml
    params = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["train"].update(epochs=3, hidden=[8])
    params["datasets"]["tiny"] = {"source": "synthetic", "synthetic": {"modalities": ["dominant", "xor"]}}
    params["datasets"]["tiny"]["synthetic"] = C._fill_defaults(C.load_schema()["$defs"]["synthetic"],
                                                               {"modalities": ["dominant", "xor"], "per_class": 20})
    feats = tiny_features(n=160, dims=(5, 4), n_classes=4)
    path = train_seed(C.train_job(params, "tiny", "dyncim"), "tiny", "dyncim", 0, feats, tmp_path, torch.device("cpu"))
    last = torch.load(tmp_path / "models/tiny/dyncim/seed0/last.pt", weights_only=False)
    strength = last["model"]["extra.mdc.strength"]
    assert not torch.allclose(strength, torch.full_like(strength, 0.25))  # it was updated in training
    mem = last["method"]["mem"]
    assert mem[feats.index("train"), 0].isfinite().all()                    # every training sample visited
    assert (mem[feats.index("train"), 1] == DEFAULTS["gamma"]).all()        # so its history counts
    _, built = load_run(path, feats, "cpu")
    part, sub, m, model = built[0]
    best = torch.load(path, weights_only=False)["parts"][0]["state"]
    assert torch.equal(model.extra["mdc"].log_hmir, best["extra.mdc.log_hmir"])
    xs = [v[:20] for v in feats.views]
    p1 = m.predict(model, model(xs))            # no labels anywhere
    p2 = m.predict(model, model(xs))
    assert torch.equal(p1, p2)                  # frozen at inference: statistics do not move
    _, built2 = load_run(path, feats, "cpu")
    assert torch.equal(built2[0][2].predict(built2[0][3], built2[0][3](xs)), p1)


def test_tensorboard_logs_the_curriculum(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    feats = tiny_features(n=120, dims=(5, 4, 3))
    feats.corrupted = (torch.arange(120) % 5 == 0).to(torch.int8)[:, None].repeat(1, 3) * torch.tensor([2, 0, 0], dtype=torch.int8)
    t = Trainer(feats, DEFAULTS, {**TRAIN_CFG, "epochs": 2}, 0, torch.device("cpu"), tmp_path / "c.pt",
                tmp_path / "tb", "f")
    t.fit()
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    scalars, hists = set(ea.Tags()["scalars"]), set(ea.Tags()["histograms"])
    for name in ("m0", "m1", "m2"):
        assert {f"dyncim/gmr/{name}", f"dyncim/hmir/{name}", f"dyncim/beta/{name}", f"dyncim/gate_mean/{name}"} <= scalars
    assert {"dyncim/alpha", "dyncim/pace_admitted", "dyncim/gate_by_corruption/gate_m0_clean",
            "dyncim/gate_by_corruption/gate_m0_misleading", "acc_modality/val_m1", "lr"} <= scalars
    assert {"dyncim/d_task", "dyncim/v", "dyncim/gate"} <= hists
    admitted = [e.value for e in ea.Scalars("dyncim/pace_admitted")]
    assert len(admitted) == 2 and 0.5 <= admitted[0] < 1.0


def test_the_pace_admits_k_minus_one_of_each_batch_and_the_record_survives_resume(tmp_path):
    # 96 training samples in 6 batches of 16; λ = 0.5 + 0.5 e / 4 admits ⌈16 λ⌉ − 1 of each batch
    # (no ties among continuous losses): 7, 9, 11, 13 of 16, then everything once the pace is over
    cfg = {**DEFAULTS, "pace_start": 0.5, "pace_epochs": 4}
    feats = tiny_features(n=160, dims=(5, 4), n_classes=4)
    full = trainer(tmp_path, feats, cfg, epochs=6, name="full.pt")
    full.fit()
    assert full.method.admitted == pytest.approx([7 / 16, 9 / 16, 11 / 16, 13 / 16, 1.0, 1.0])
    rec = full.method.training_record()
    assert rec == pytest.approx({"admitted_mean": (40 / 16 + 2) / 6, "admitted_first": 7 / 16,
                                 "admitted_full_epoch": 5})
    trainer(tmp_path, feats, cfg, epochs=3, name="part.pt").fit()
    resumed = trainer(tmp_path, feats, cfg, epochs=6, name="part.pt")
    resumed.fit()
    assert resumed.method.admitted == full.method.admitted
    off = trainer(tmp_path, feats, {**cfg, "self_paced": False}, epochs=2, name="off.pt")
    off.fit()
    assert off.method.training_record() == {"admitted_mean": 1.0, "admitted_first": 1.0, "admitted_full_epoch": 1}


def test_the_evaluation_record_carries_the_curriculum_of_training(tmp_path):
    from tests.conftest import REPO
    import yaml
    from dyncim.evaluation.evaluate import evaluate_run
    params = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["train"].update(epochs=3, hidden=[8], batch_size=16)
    params["datasets"]["tiny"] = {"source": "synthetic", "synthetic": C._fill_defaults(
        C.load_schema()["$defs"]["synthetic"], {"modalities": ["dominant", "xor"], "per_class": 20})}
    feats = tiny_features(n=160, dims=(5, 4), n_classes=4)
    for m in ("dyncim", "bss"):
        path = train_seed(C.train_job(params, "tiny", m), "tiny", m, 0, feats, tmp_path, torch.device("cpu"))
        saved = torch.load(path, weights_only=False)["parts"][0]["training"]
        diag = evaluate_run(path, feats)["diagnostics"]
        assert diag["admitted_first"] == saved["admitted_first"] and 0 < saved["admitted_first"] < 1, m
        assert diag["admitted_mean"] == pytest.approx(saved["admitted_mean"]) and saved["admitted_full_epoch"] == 0, m
