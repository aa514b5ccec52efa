"""DynCIM's two implementations, fused (closed form, the default) and reference (plain autograd), side
by side: same loss, same gradients, same state, step after step, for every switch."""

import copy
import math

import pytest
import torch
import yaml

from dyncim import config as C
from dyncim.methods import build
from dyncim.methods import dyncim as fused_module
from dyncim.methods.base import Context
from dyncim.methods.dyncim import DynCIM, Gate
from dyncim.methods.dyncim_reference import DynCIMReference
from dyncim.models import build_model
from dyncim.models.multimodal import Output
from dyncim.train.assemble import assemble
from dyncim.train.loop import Trainer
from tests.conftest import REPO, TRAIN_CFG, tiny_features

DEFAULTS = {"type": "dyncim", **C._fill_defaults(C.load_schema()["$defs"]["method_dyncim"], {})}
N, CLASSES, STEPS = 40, 5, 12          # 12 steps with a window of 3: HMIR is recomputed 3 times
SWITCHES = [
    {},
    {"sdc": False},
    {"sdc_deviation": False},
    {"sdc_consistency": False},
    {"sdc_stability": False},
    {"self_paced": False},
    {"mdc": False},
    {"gmr": False},
    {"gmr": False, "beta_from": "gmr_hmir"},
    {"hmir": False},
    {"gate": False},
    {"history": "hadamard"},
    {"history": "hadamard", "gamma": 0.3, "sdc_stability": False},
    {"adaptive_alpha": True},
    {"adaptive_alpha": True, "gate": False, "sdc": False},
    {"beta_from": "gmr_hmir", "rho": 2.0},
    {"pace_epochs": 2, "pace_start": 0.3},   # the steps of epochs 2 and 3 come after the pace (v = 1)
    {"sdc": False, "mdc": False, "gate": False, "alpha": 0.3},
    {"gate_reliability": 0.5},
]


@pytest.fixture
def float64():
    """Both paths in float64, so that they agree to rounding whatever their summation order."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def pair(cfg, n_modalities, seed=0):
    """A fused and a reference method with their models, in identical states (statistics away from
    their start, so that GMR and β are not trivial)."""
    names = [f"m{i}" for i in range(n_modalities)]
    ctx = Context(names, CLASSES, N, 10, 5, torch.device("cpu"))
    cfg = {**DEFAULTS, "hmir_window": 3, **cfg}
    torch.manual_seed(seed)
    fused = build({**cfg, "impl": "fused"}, ctx)
    ref = build({**cfg, "impl": "reference"}, ctx)
    assert type(fused) is DynCIM and type(ref) is DynCIMReference
    model = build_model([3] * n_modalities, CLASSES, "sum", {"hidden": [8], "dropout": 0.0})
    fused.setup(model)
    with torch.no_grad():
        model.extra["mdc"].strength.copy_(torch.rand(n_modalities) * 0.8 + 0.1)
    return fused, model, ref, copy.deepcopy(model)


def step(method, model, base, y, idx):
    """One training step's loss and backward on fresh leaf logits (copies of `base`)."""
    logits = [b.clone().requires_grad_() for b in base]
    gate = model.extra["gate"].flat if method.use_gate else None
    if gate is not None:
        gate.grad = None
    res = method.loss(model, Output(None, logits, None), y, idx)
    method.backward(model, res)
    return res, [z.grad for z in logits] + ([gate.grad] if gate is not None else [])


def assert_same_state(f, fm, r, rm, where):
    tol = {"rtol": 1e-6, "atol": 1e-9} if f.mem.dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    assert torch.allclose(f.mem, r.mem, equal_nan=True, **tol), where
    for (k, a), (_, b) in zip(fm.extra["mdc"].named_buffers(), rm.extra["mdc"].named_buffers()):
        assert torch.allclose(a.double(), b.double(), **tol), (where, k, a, b)
    assert torch.allclose(f.loss_ema, r.loss_ema, **tol) and f.win_steps == r.win_steps, where


def run_side_by_side(cfg, n_modalities, steps=STEPS, seed=1, rel=1e-5, rtol=1e-4, atol=1e-6):
    f, fm, r, rm = pair(cfg, n_modalities)
    g = torch.Generator().manual_seed(seed)
    dtype = torch.get_default_dtype()
    hmir_seen = []
    for s in range(steps):
        f.epoch = r.epoch = s // 3
        B = 7 if s == 5 else 24                         # one short batch, like an epoch's last
        idx = torch.randperm(N, generator=g)[:B]         # samples come back: stability and history
        y = torch.randint(0, CLASSES, (B,), generator=g)
        base = [(torch.randn(B, CLASSES, generator=g) * 2).to(dtype) for _ in range(n_modalities)]
        rf, grads_f = step(f, fm, base, y, idx)
        rr, grads_r = step(r, rm, base, y, idx)
        where = (cfg, n_modalities, s)
        assert rf.loss.item() == pytest.approx(rr.loss.item(), rel=rel, abs=1e-6), where
        for k, (got, want) in enumerate(zip(grads_f, grads_r)):
            assert torch.allclose(got, want, rtol=rtol, atol=atol), (where, k, (got - want).abs().max())
        # the fused prediction (the fused path returns log-probabilities where the gate is off)
        assert torch.allclose(torch.log_softmax(rf.logits, 1), torch.log_softmax(rr.logits, 1), rtol=rtol,
                              atol=atol), where
        for key in ("gate", "d_task", "v"):
            a, b = f._trace[key][-1], r._trace[key][-1]
            assert (a is None) == (b is None), (where, key)
            if a is not None:
                assert torch.allclose(a, b, rtol=rtol, atol=atol), (where, key)
        assert float(f._trace["alpha"]) == pytest.approx(float(r._trace["alpha"]), rel=rel), where
        assert torch.allclose(f._trace["beta"], r._trace["beta"], rtol=rtol, atol=atol), where
        assert_same_state(f, fm, r, rm, where)
        hmir_seen.append(rm.extra["mdc"].log_hmir.clone())
    if f.use_hmir:   # the test reaches past the first window: HMIR took at least 2 values besides 0
        assert len({tuple(h.tolist()) for h in hmir_seen} | {(0.0,) * n_modalities}) >= 3
    return f, fm, r, rm


@pytest.mark.parametrize("n_modalities", [2, 3, 4])
@pytest.mark.parametrize("cfg", SWITCHES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_fused_and_reference_agree_step_by_step(float64, cfg, n_modalities):
    """Loss value, the gradients with respect to every modality's logits and the gate's parameter,
    the fused prediction, the curriculum (g, D_Task, v, α, β) and the state after each step (the
    per-sample memory, the modality statistics, adaptive α's running means) agree over 12 steps,
    past several HMIR windows; then the label-free prediction and the diagnostics agree too."""
    f, fm, r, rm = run_side_by_side(cfg, n_modalities)
    z = [torch.randn(10, CLASSES) * 2 for _ in range(n_modalities)]
    out = Output(None, z, None)
    assert torch.allclose(f.predict(fm, out), r.predict(rm, out), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n_modalities", [2, 3])
def test_fused_and_reference_agree_in_float32(n_modalities):
    """The training dtype, at the gradient test's tolerances (rtol 1e-4, atol 1e-6)."""
    run_side_by_side({}, n_modalities, seed=2)


def test_the_comparison_fails_when_a_term_is_dropped(float64, monkeypatch):
    """The side-by-side test can fail: drop the stability signal, or freeze HMIR after its first
    update, in the reference, and it does."""
    from dyncim.methods import dyncim_reference as R
    monkeypatch.setattr(R, "stability", lambda dev, prev: torch.zeros_like(dev))
    with pytest.raises(AssertionError):
        run_side_by_side({}, 2)
    monkeypatch.undo()
    monkeypatch.setattr(R, "improvement_rates", lambda prev, mean: torch.full_like(mean, 0.1))
    with pytest.raises(AssertionError):
        run_side_by_side({"sdc": False}, 3)


def test_the_reference_uses_no_formula_of_the_fused_path(monkeypatch):
    """Every formula of the fused path raises (once the methods are built: the fused path's
    constants are made in the shared constructor); the reference still trains, predicts and reports."""
    def boom(*a, **k):
        raise AssertionError("the reference called the fused path")
    for name in ("_objective", "observe", "gate_features", "gates", "fuse", "_difficulty", "signals",
                 "_pace", "_modality_terms", "_beta_share", "_update_mdc", "betas", "_alpha",
                 "_gamma_column"):
        monkeypatch.setattr(DynCIM, name, boom)
    for name in ("forward", "grad", "cached_weights"):
        monkeypatch.setattr(Gate, name, boom)
    feats = tiny_features(n=60, dims=(5, 4, 3))
    feats.corrupted = (torch.arange(60) % 4 == 0).to(torch.int8)[:, None].repeat(1, 3)
    built = [assemble(feats, {**DEFAULTS, **cfg, "impl": "reference", "hmir_window": 2}, TRAIN_CFG,
                      torch.device("cpu"))
             for cfg in ({}, {"history": "hadamard", "adaptive_alpha": True, "beta_from": "gmr_hmir"},
                         {"gate": False})]
    for name in ("observation_matrices", "log_gmr", "log_hmir", "self_paced_weights"):
        monkeypatch.setattr(fused_module, name, boom)
    for r, model in built:
        idx = feats.index("train")
        for s in range(5):
            batch = idx[s * 7:(s + 1) * 7]
            out = r.forward(model, [v[batch] for v in feats.views], batch)
            r.backward(model, r.loss(model, out, feats.labels[batch], batch))
        r.predict(model, model([v[:5] for v in feats.views]))
        d = r.diagnostics(model, feats, feats.index("test"))
        assert {"gmr_m0", "hmir_m2", "beta_m1", "gate_m0", "gate_m0_clean"} <= set(d)


def test_impl_selects_the_implementation_and_gate_input_grad_needs_the_reference():
    ctx = Context(["a", "b"], 3, 10, 2, 1, torch.device("cpu"))
    assert type(build({**DEFAULTS}, ctx)) is DynCIM                               # fused: the default
    assert DEFAULTS["impl"] == "fused" and DEFAULTS["gate_input_grad"] is False
    assert type(build({**DEFAULTS, "impl": "reference"}, ctx)) is DynCIMReference
    assert type(build({**DEFAULTS, "impl": "reference", "gate_input_grad": True}, ctx)) is DynCIMReference
    with pytest.raises(ValueError, match="gate_input_grad needs impl: reference"):
        build({**DEFAULTS, "gate_input_grad": True}, ctx)
    # the catalog entry is the one selection point: each class builds only its own impl
    from dyncim.methods import method_class
    from dyncim.methods.catalog import CATALOG
    assert method_class("dyncim") is DynCIM and method_class("dyncim", "fused") is DynCIM
    assert method_class("dyncim", "reference") is DynCIMReference
    assert CATALOG["dyncim"].modules == ("dyncim", "dyncim_reference")
    with pytest.raises(ValueError, match="impl 'closed'"):
        build({**DEFAULTS, "impl": "closed"}, ctx)
    with pytest.raises(ValueError, match="build the method with dyncim.methods.build"):
        DynCIM({**DEFAULTS, "impl": "reference"}, ctx)
    with pytest.raises(ValueError, match="build the method with dyncim.methods.build"):
        DynCIMReference({**DEFAULTS, "impl": "fused"}, ctx)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["methods"]["dyncim-reference"] = {"extends": "dyncim", "impl": "reference"}
    params = C.resolve(raw)
    assert params["methods"]["dyncim-reference"]["impl"] == "reference"
    assert params["methods"]["dyncim"]["impl"] == "fused"
    raw["methods"]["dyncim-x"] = {"extends": "dyncim", "impl": "closed"}
    with pytest.raises(C.ParamsError, match=r"methods\.dyncim-x\.impl"):
        C.resolve(raw)


def test_checkpoints_are_interchangeable_and_evaluation_works_for_both(tmp_path):
    """A model and method state trained by the fused path load into the reference (same memory,
    same buffers, same gate parameter); both then predict, report and step alike."""
    feats = tiny_features(n=120, dims=(5, 4, 3))
    t = Trainer(feats, DEFAULTS, {**TRAIN_CFG, "epochs": 2}, 0, torch.device("cpu"), tmp_path / "f.pt", None, "f")
    t.fit()
    r, rm = assemble(t.data, {**DEFAULTS, "impl": "reference"}, t.cfg, torch.device("cpu"),
                     steps_per_epoch=t.method.ctx.steps_per_epoch)
    rm.load_state_dict(t.model.state_dict())                      # strict: the same modules and buffers
    r.load_state_dict(t.method.state_dict())
    r.epoch = t.method.epoch
    rm.eval(), t.model.eval()
    xs = [v[t.val_idx] for v in t.data.views]
    with torch.no_grad():
        assert torch.allclose(t.method.predict(t.model, t.model(xs)), r.predict(rm, rm(xs)), atol=1e-5)
    df = t.method.diagnostics(t.model, t.data, t.data.index("test"))
    dr = r.diagnostics(rm, t.data, t.data.index("test"))
    assert df.keys() == dr.keys() and all(df[k] == pytest.approx(dr[k], rel=1e-5, abs=1e-6) for k in df)
    rm.train(), t.model.train()
    batch = t.train_idx[:16]
    xs, y = [v[batch] for v in t.data.views], t.data.labels[batch]
    lf = t.method.loss(t.model, t.method.forward(t.model, xs, batch), y, batch).loss
    lr = r.loss(rm, r.forward(rm, xs, batch), y, batch).loss
    assert lf.item() == pytest.approx(lr.item(), rel=1e-5)


def test_gate_input_grad_lets_the_gradient_reach_the_logits_through_the_gate(float64):
    """With the switch on, the loss and the gate's gradient are unchanged (same forward), and the
    logits get an extra gradient through the gate's confidence, entropy and disagreement."""
    _, _, off, model = pair({}, 3)
    on = build({**DEFAULTS, "hmir_window": 3, "impl": "reference", "gate_input_grad": True}, off.ctx)
    model_on = copy.deepcopy(model)
    g = torch.Generator().manual_seed(4)
    idx, y = torch.arange(16), torch.randint(0, CLASSES, (16,), generator=g)
    base = [torch.randn(16, CLASSES, generator=g) * 2 for _ in range(3)]
    r_off, grads_off = step(off, model, base, y, idx)
    r_on, grads_on = step(on, model_on, base, y, idx)
    assert r_on.loss.item() == pytest.approx(r_off.loss.item(), rel=1e-12)
    assert torch.allclose(grads_on[-1], grads_off[-1], rtol=1e-10)                # the gate's parameter
    for a, b in zip(grads_on[:-1], grads_off[:-1]):
        assert (a - b).abs().max() > 1e-4 * b.abs().max()


def test_gate_input_grad_trains(tmp_path):
    feats = tiny_features(n=90)
    cfg = {**DEFAULTS, "impl": "reference", "gate_input_grad": True}
    t = Trainer(feats, cfg, {**TRAIN_CFG, "epochs": 2}, 0, torch.device("cpu"), tmp_path / "g.pt", None, "g")
    t.fit()
    assert all(math.isfinite(row["train_loss"]) for row in t.history)


def test_the_fused_module_does_not_import_the_reference():
    """No import cycle: the reference subclasses the fused class; the fused module never imports
    the reference (the method catalog picks the class), at import time or in any function."""
    import ast
    import subprocess
    import sys
    tree = ast.parse((REPO / "dyncim" / "methods" / "dyncim.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {f"{n.module}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not any("dyncim_reference" in x for x in names), names
    code = ("import sys, torch; from dyncim.methods import build, dyncim; "
            "from dyncim.methods.base import Context; from dyncim import config as C; "
            "cfg = {'type': 'dyncim', **C._fill_defaults(C.load_schema()['$defs']['method_dyncim'], {})}; "
            "build(cfg, Context(['a', 'b'], 3, 10, 2, 1, torch.device('cpu'))); "
            "print('dyncim.methods.dyncim_reference' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
