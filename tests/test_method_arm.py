"""ARM: the torch histogram estimates of NMI and NCMI against a plain numpy estimate written here
(np.histogram2d / np.histogramdd and the official formulas), the weights and the fused logits by
hand, label-free prediction, the three-modality refusal, and a training run that learns and
resumes exactly."""
import math

import numpy as np
import pytest
import torch
import yaml
from torch.nn import functional as F

from dyncim import config as C
from dyncim.methods.arm import ARM, arm_weights, ncmi, nmi
from dyncim.methods.base import Context
from dyncim.models import build_model
from dyncim.train.loop import Trainer
from tests.conftest import REPO, TRAIN_CFG, RecordingWriter, tiny_features

PARAMS = {"type": "arm", "bins_mi": 30, "bins_cmi": 2}


def ctx(n=2, classes=3):
    return Context(names=["a", "v", "t"][:n], n_classes=classes, n_samples=100, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


# --- the numpy reference, written from the formulas ------------------------------------------
def np_entropy(p):
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def np_nmi(x, c, bins):
    p, _, _ = np.histogram2d(x, c, bins=bins)
    p = p / p.sum()
    px, pc = p.sum(1), p.sum(0)
    mi = 0.0
    for i in range(bins):
        for j in range(bins):
            if p[i, j] > 0:
                mi += p[i, j] * math.log(p[i, j] / (px[i] * pc[j]))
    return 2 * mi / (np_entropy(px) + np_entropy(pc))


def np_cond_entropy(joint, z):   # the official broadcasting: joint / z[:, None, None]
    z = np.where(z > 0, z, 1e-10)
    return np_entropy(joint / z[:, None, None])


def np_ncmi(x, c, z, bins):
    p, _ = np.histogramdd(np.vstack([x, c, z]).T, bins=[bins] * 3)
    p = p / p.sum()
    pxz, pcz, pz = p.sum(axis=1), p.sum(axis=0), p.sum(axis=(0, 1))
    hx, hc, hxc = np_cond_entropy(pxz, pz), np_cond_entropy(pcz, pz), np_cond_entropy(p, pz)
    return (hx + hc - hxc) / (hx + hc) if hx + hc != 0 else 0.0


def _data(seed=0, n=400):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    c = 0.7 * x + 0.5 * rng.normal(size=n)          # dependent on x
    z = rng.normal(size=n) + 0.3 * c
    return x, c, z


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_matches_numpy_histogram_estimate(seed):
    x, c, _ = _data(seed)
    for bins in (30, 7):
        got = float(nmi(torch.tensor(x), torch.tensor(c), bins))
        assert got == pytest.approx(np_nmi(x, c, bins), rel=1e-10)
    # independent variables: lower NMI than dependent ones (30 bins on 400 values: biased up, so
    # no fixed margin); identical variables: NMI = 1
    rng = np.random.default_rng(seed + 10)
    a, b = rng.normal(size=400), rng.normal(size=400)
    assert float(nmi(torch.tensor(a), torch.tensor(b), 30)) < float(nmi(torch.tensor(x), torch.tensor(c), 30))
    assert float(nmi(torch.tensor(a), torch.tensor(a), 30)) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ncmi_matches_numpy_histogram_estimate(seed):
    x, c, z = _data(seed)
    for bins in (2, 3):
        got = float(ncmi(torch.tensor(x), torch.tensor(c), torch.tensor(z), bins))
        assert got == pytest.approx(np_ncmi(x, c, z, bins), rel=1e-10, abs=1e-12)


def test_constant_variable_and_relu_like_data():
    # ReLU features: many exact zeros (on the lowest edge) and a constant variable (numpy's +-0.5 range)
    rng = np.random.default_rng(5)
    x = np.maximum(rng.normal(size=300), 0)
    c = np.maximum(rng.normal(size=300) + x, 0)
    k = np.full(300, 2.0)
    assert float(nmi(torch.tensor(x), torch.tensor(c), 30)) == pytest.approx(np_nmi(x, c, 30), rel=1e-10)
    assert float(ncmi(torch.tensor(x), torch.tensor(c), torch.tensor(k), 2)) == \
        pytest.approx(np_ncmi(x, c, k, 2), rel=1e-10, abs=1e-12)


def test_weights_and_fused_logits_by_hand():
    torch.manual_seed(0)
    model = build_model([5, 4], 3, "concat", {"hidden": [6], "dropout": 0.0})
    m = ARM(dict(PARAMS), ctx())
    m.setup(model)
    model.double()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(32, 5, generator=g, dtype=torch.float64),
          torch.randn(32, 4, generator=g, dtype=torch.float64)]
    y = torch.randint(0, 3, (32,), generator=g)
    out = model(xs)
    res = m.loss(model, out, y, None)
    mods = model.extra["arm"]
    h0, h1 = (h.detach() for h in out.feats)
    c = mods.neck(torch.cat([h0, h1], 1)).detach()
    p = [float(F.softmax(mods.fc(h), 1)[torch.arange(32), y].mean().detach()) for h in (c, h0, h1)]
    a0, a1, ac = (t.reshape(-1).numpy() for t in (h0, h1, c))
    n0, n1 = np_nmi(a0, ac, 30), np_nmi(a1, ac, 30)
    w0 = p[0] * n0 + p[2] * (n0 - np_ncmi(a0, ac, a1, 2))
    w1 = p[0] * n1 + p[1] * (n1 - np_ncmi(a1, ac, a0, 2))
    assert res.terms.tolist() == pytest.approx([w0, w1], rel=1e-9)
    expect = mods.fc(mods.fc_out(torch.cat([(w1 / w0) * h0, (w0 / w1) * h1], 1)))
    torch.testing.assert_close(res.logits, expect, rtol=1e-9, atol=1e-12)
    assert torch.isclose(res.loss, F.cross_entropy(expect, y), rtol=1e-9)
    # gradients reach the encoders, fc and fc_out, never the neck (as in the official model)
    res.loss.backward()
    assert mods.neck.weight.grad is None and mods.fc_out.weight.grad.abs().sum() > 0
    assert model.encoders[0].net[0].weight.grad.abs().sum() > 0
    # label-free prediction with the stored ratio
    m.pred_ratio = torch.tensor(2.0, dtype=torch.float64)
    torch.testing.assert_close(m.predict(model, out).detach(),
                               mods.fc(mods.fc_out(torch.cat([2 * h0, h1 / 2], 1))).detach())


def test_three_modalities_refused_by_the_params_check():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["run"]["methods"] = ["arm"]
    raw["run"]["datasets"].append("mfeat-fou-zer-mor")
    with pytest.raises(C.ParamsError, match="'arm'.*at most 2 modalities.*mfeat-fou-zer-mor"):
        C.resolve(raw)


def _trainer(path, epochs, data):
    return Trainer(data, dict(PARAMS), {**TRAIN_CFG, "epochs": epochs}, 0, torch.device("cpu"), path,
                   None, "x")


def test_training_learns_and_resumes_exactly(tmp_path):
    data = tiny_features(n=90)
    a = _trainer(tmp_path / "a.pt", 4, data)
    a.fit()
    losses = [r["train_loss"] for r in a.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert math.isfinite(float(a.method.pred_ratio)) and float(a.method.pred_ratio) != 1.0
    w = RecordingWriter()
    a.method.log(w, 4)
    assert math.isfinite(w.scalars["arm/ratio_w1_over_w0"])
    _trainer(tmp_path / "b.pt", 2, data).fit()
    b = _trainer(tmp_path / "b.pt", 4, data)
    b.fit()
    assert b.history == a.history
    assert torch.equal(a.method.pred_ratio, b.method.pred_ratio)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
