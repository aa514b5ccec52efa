"""DynCIM's gate: the `gate_reliability` option (docs/synthetic.md, "What the gate can learn")."""

import torch
from torch.nn import functional as F

from dyncim import config as C
from dyncim.data.sets import feature_set as Fe
from dyncim.methods.base import Context
from dyncim.methods.dyncim import DynCIM
from dyncim.models import build_model
from dyncim.models.multimodal import Output
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG

DEFAULTS = {"type": "dyncim", **C._fill_defaults(C.load_schema()["$defs"]["method_dyncim"], {})}


def _method(cfg, names=("a", "b", "c"), n_classes=5, n_samples=60):
    torch.manual_seed(0)
    ctx = Context(list(names), n_classes, n_samples, 10, 5, torch.device("cpu"))
    m = DynCIM({**DEFAULTS, **cfg}, ctx)
    model = build_model([3] * len(names), n_classes, "sum", {"hidden": [8], "dropout": 0.0})
    m.setup(model)
    return m, model


def test_gate_reliability_adds_its_loss_and_a_gradient_for_the_gate_only():
    """The step with λ > 0 differs from the step with λ = 0 by λ·mean (g − σ(z^m)_y)² in value and
    by autograd's gradient of that term in the gate's parameter; the logits' gradients are equal."""
    lam = 0.7
    (m0, model0), (m1, model1) = _method({}), _method({"gate_reliability": lam})
    assert torch.equal(model0.extra["gate"].flat, model1.extra["gate"].flat)
    torch.manual_seed(1)
    for step in range(3):
        m0.epoch = m1.epoch = step
        idx, y = torch.randperm(60)[:24], torch.randint(0, 5, (24,))
        z = torch.randn(3, 24, 5) * 2
        # the aux term with plain autograd, from the state before the step
        gate = model1.extra["gate"]
        lg, lh, _ = m1._modality_terms(model1.extra["mdc"])
        _, prob, plogp, dis, _ = m1.observe(z.transpose(1, 2).reshape(3, -1), 5, 24)
        g = gate(*DynCIM.gate_features(prob, plogp, dis, lg, lh))[0]
        target = F.softmax(z, -1).gather(2, y.expand(3, -1)[..., None])[..., 0]
        aux = lam * (g - target).square().mean()
        want = torch.autograd.grad(aux, gate.flat)[0]
        res = []
        for m, model in ((m0, model0), (m1, model1)):
            logits = [zz.clone().requires_grad_() for zz in z]
            model.extra["gate"].flat.grad = None
            r = m.loss(model, Output(None, logits, None), y, idx)
            m.backward(model, r)
            res.append((r.loss, [l.grad for l in logits], model.extra["gate"].flat.grad.clone()))
        (v0, gz0, gg0), (v1, gz1, gg1) = res
        assert torch.allclose(v1 - v0, aux.detach(), rtol=1e-4, atol=1e-6), step
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(gz0, gz1))
        assert torch.allclose(gg1 - gg0, want, rtol=1e-4, atol=1e-6), (step, (gg1 - gg0 - want).abs().max())
        with torch.no_grad():   # the gate then moves differently: keep both on the same state
            model0.extra["gate"].flat.copy_(model1.extra["gate"].flat)


def test_gate_reliability_closes_the_gate_of_a_missing_modality(tmp_path):
    """On a small synthetic set whose linear view is missing (zeros) on 30 % of the samples, the
    gate trained with a reliability target is far lower on those samples (test split) than on
    clean ones; the default gate stays flat (docs/synthetic.md)."""
    syn = C._fill_defaults(C.load_schema()["$defs"]["synthetic"], {
        "modalities": ["dominant", "xor", "linear"], "per_class": 40,
        "corrupt": [{"modality": 2, "kind": "missing", "fraction": 0.3}]})
    ds = {"source": "synthetic", "synthetic": syn}
    Fe.make_split(ds, {"train": 0.6, "val": 0.2, "seed": 0}, None, tmp_path / "s.csv")
    Fe.build(ds, None, tmp_path / "s.csv", tmp_path / "f.pt")
    feats = Fe.load(tmp_path / "f.pt")
    ratios = {}
    for lam in (0.0, 1.0):
        t = Trainer(feats, {**DEFAULTS, "gate_reliability": lam}, {**TRAIN_CFG, "epochs": 15, "hidden": [32]},
                    0, torch.device("cpu"), tmp_path / f"{lam}.pt", None, "f")
        t.fit()
        d = t.method.diagnostics(t.model, t.data, t.data.index("test"))
        ratios[lam] = d["gate_linear_missing"] / d["gate_linear_clean"]
    assert ratios[1.0] < 0.6 and ratios[0.0] > 0.8, ratios
