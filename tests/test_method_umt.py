"""UMT: the teachers are a real `unimodal` run of the pipeline (trained here first through the train
job, then read by path), the distillation loss against frozen teacher features recomputed by hand
from the saved weights, the teachers unchanged and outside the student, the epoch window, three
modalities, the clear errors, and training + resume through the real Trainer and train job."""
import copy
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.evaluation.evaluate import load_run
from dyncim.methods.base import Context
from dyncim.methods.umt import UMT
from dyncim.models import build_model
from dyncim.train.job import method_extras, train_seed
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, RecordingWriter, at_epoch, tiny_features

PARAMS = {"type": "umt", "fusion": "concat", "scaling": 10.0, "modulation_starts": 0,
          "modulation_ends": 80, "teacher": "unimodal"}
# the teachers train with dropout: a teacher left in train mode gives other (random) features
TEACHER_TRAIN = {**TRAIN_CFG, "epochs": 3, "dropout": 0.3}
STUDENT_TRAIN = {**TRAIN_CFG, "epochs": 3}
CPU = torch.device("cpu")
DATA = "tiny"


def job(method, mcfg, tcfg):
    """A train job's configuration (the shape dyncim.config.train_job gives) for one tiny set."""
    return {"train": tcfg, "split": {"train": 0.6, "val": 0.2}, "datasets": {DATA: {"source": "synthetic"}},
            "methods": {method: {**mcfg, "seeds": [0]}}, "run": {"datasets": [DATA], "methods": [method]}}


def feats_of(n_mod):
    return tiny_features(n=90, dims=(5, 4, 6)[:n_mod], n_classes=3, seed=0)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """The pipeline's own unimodal run (three modalities m0, m1, m2): its best.pt, by the job's path.
    The two-modality set is its first two views (tiny_features draws view by view), so the same
    run's m0 and m1 models teach it: UMT picks the teachers by modality name."""
    root = tmp_path_factory.mktemp("uni")
    path = train_seed(job("unimodal", {"type": "unimodal"}, TEACHER_TRAIN), DATA, "unimodal", 0,
                      feats_of(3), root, CPU)
    assert path == method_extras(root, DATA, PARAMS, 0)["teachers"]   # where UMT looks
    assert all(torch.equal(a, b) for a, b in zip(feats_of(2).views, feats_of(3).views))
    return {2: (root, path), 3: (root, path)}


def ctx(n_mod, path):
    return Context(names=[f"m{i}" for i in range(n_mod)], n_classes=3, n_samples=90, epochs=3,
                   steps_per_epoch=4, device=CPU, extras={"teachers": path})


def hand_teacher_features(path, xs):
    """Independent of dyncim's model code: each teacher is a one-layer MLP (Linear, ReLU; dropout
    off in eval), evaluated from the saved state dict."""
    ck = torch.load(path, weights_only=False)
    out = []
    for part, x in zip(ck["parts"], xs):
        w, b = part["state"]["encoders.0.net.0.weight"], part["state"]["encoders.0.net.0.bias"]
        out.append(torch.relu(x @ w.T + b))
    return out


def batch(n_mod, n=24, seed=3):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(n, d, generator=g) for d in (5, 4, 6)[:n_mod]], torch.randint(0, 3, (n,), generator=g))


@pytest.mark.parametrize("n_mod", [2, 3])
def test_loss_is_ce_plus_scaled_mse_to_the_frozen_teacher_features(teachers, n_mod):
    _, path = teachers[n_mod]
    torch.manual_seed(0)
    model = build_model((5, 4, 6)[:n_mod], 3, "concat", {"hidden": [8], "dropout": 0.0})
    m = UMT(dict(PARAMS), ctx(n_mod, path))
    m.setup(model)
    m.begin_epoch(at_epoch(0))
    xs, y = batch(n_mod)
    out = m.forward(model, xs, None)
    res = m.loss(model, out, y, None)
    want_t = hand_teacher_features(path, xs)
    for got, want in zip(out.teacher_feats, want_t):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert not got.requires_grad
    h = [e(x) for e, x in zip(model.encoders, xs)]
    mse = [float(((t - s.detach()) ** 2).mean()) for t, s in zip(want_t, h)]
    want = float(F.cross_entropy(model.fusion.fc(torch.cat(h, 1)), y).detach()) + 10.0 * sum(mse)
    assert float(res.loss.detach()) == pytest.approx(want, rel=1e-5)
    assert min(mse) > 1e-3                                       # a real distillation term
    # the gradient reaches the student's encoders only; d/dh of 10 * MSE is 20 (h - t) / numel
    model.zero_grad()
    res.loss.backward()
    assert all(p.grad is None for t in m.teachers for p in t.parameters())
    assert all(not p.requires_grad for t in m.teachers for p in t.parameters())
    hs = [hh.detach().requires_grad_(True) for hh in h]
    dist = 10.0 * sum(((t - s) ** 2).mean() for t, s in zip(want_t, hs))
    dist.backward()
    for s, t in zip(hs, want_t):
        torch.testing.assert_close(s.grad, 20.0 * (s.detach() - t) / t.numel())


def test_outside_the_window_only_the_fused_cross_entropy(teachers):
    _, path = teachers[2]
    torch.manual_seed(0)
    model = build_model([5, 4], 3, "concat", {"hidden": [8], "dropout": 0.0})
    m = UMT({**PARAMS, "modulation_starts": 1, "modulation_ends": 2}, ctx(2, path))
    m.setup(model)
    xs, y = batch(2)
    for epoch, distils in [(0, False), (1, True), (2, True), (3, False)]:
        m.begin_epoch(at_epoch(epoch))
        out = m.forward(model, xs, None)
        res = m.loss(model, out, y, None)
        ce = float(F.cross_entropy(out.fused, y).detach())
        assert (getattr(out, "teacher_feats", None) is not None) == distils, epoch
        assert (float(res.loss.detach()) > ce + 1e-3) == distils, epoch
        if not distils:
            assert float(res.loss.detach()) == ce


def test_training_pulls_features_to_the_teachers_and_leaves_them_unchanged(teachers, tmp_path):
    _, path = teachers[2]
    saved = torch.load(path, weights_only=False)
    data = feats_of(2)
    runs = {}
    for scaling in (10.0, 0.0):
        tr = Trainer(data, {**PARAMS, "scaling": scaling}, STUDENT_TRAIN, 0, CPU, tmp_path / f"{scaling}.pt",
                     None, "x", extras={"teachers": path})
        tr.fit()
        runs[scaling] = tr
    tr = runs[10.0]
    assert all(math.isfinite(r["train_loss"]) for r in tr.history)
    assert tr.history[-1]["val_acc"] > 0.6                     # 3 classes: it learns
    # the teachers: bit-identical to the unimodal run's best weights, eval mode, not the student's
    for part, t in zip(saved["parts"], tr.method.teachers):
        assert not t.training
        for k, v in t.state_dict().items():
            assert torch.equal(v, part["state"][f"encoders.0.{k}"]), k
    assert not any(k.startswith("teacher") or "extra" in k for k in tr.model.state_dict())
    ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not ids & {id(p) for t in tr.method.teachers for p in t.parameters()}
    # distillation is what pulled the student's features towards the teachers'
    xs = [v[tr.train_idx] for v in data.views]
    hand = hand_teacher_features(path, xs)

    def gap(t):
        t.model.eval()
        with torch.no_grad():
            return sum(float(((e(x) - h) ** 2).mean()) for e, x, h in zip(t.model.encoders, xs, hand))
    assert gap(runs[10.0]) < 0.5 * gap(runs[0.0])
    w = RecordingWriter()
    tr.method.log(w, 3)
    assert set(w.scalars) == {"umt/distill_mse_m0", "umt/distill_mse_m1"}
    assert all(math.isfinite(v) for v in w.scalars.values())


def test_resume_continues_exactly(teachers, tmp_path):
    _, path = teachers[2]
    data = feats_of(2)
    full = Trainer(data, dict(PARAMS), {**STUDENT_TRAIN, "epochs": 4}, 0, CPU, tmp_path / "a.pt", None, "x",
                   extras={"teachers": path})
    full.fit()
    Trainer(data, dict(PARAMS), {**STUDENT_TRAIN, "epochs": 2}, 0, CPU, tmp_path / "b.pt", None, "x",
            extras={"teachers": path}).fit()
    resumed = Trainer(data, dict(PARAMS), {**STUDENT_TRAIN, "epochs": 4}, 0, CPU, tmp_path / "b.pt", None, "x",
                      extras={"teachers": path})
    resumed.fit()
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_train_job_reads_the_unimodal_run_by_path_and_evaluation_needs_no_teacher(teachers):
    root, path = teachers[3]
    data = feats_of(3)
    out = train_seed(job("umt", PARAMS, STUDENT_TRAIN), DATA, "umt", 0, data, root, CPU)
    assert out == root / "models" / DATA / "umt" / "seed0" / "best.pt"
    ck = torch.load(out, weights_only=False)
    assert "teachers" not in ck["method_cfg"] and ck["method_cfg"]["teacher"] == "unimodal"
    moved = root / "elsewhere.pt"
    path.rename(moved)      # evaluation rebuilds the student alone: no teacher file is read
    try:
        _, built = load_run(out, data, CPU)
        (part, _, method, model), = built
        assert method.teachers is None
        with torch.no_grad():
            assert model([v[:4] for v in data.views]).fused.shape == (4, 3)
    finally:
        moved.rename(path)


def test_missing_or_wrong_teachers_fail_clearly(teachers, tmp_path):
    root, path = teachers[2]
    model = build_model([5, 4], 3, "concat", {"hidden": [8], "dropout": 0.0})
    gone = tmp_path / "models/tiny/unimodal/seed7/best.pt"
    with pytest.raises(FileNotFoundError, match=f"umt: teacher checkpoint {gone} not found: train the `unimodal`"):
        UMT(dict(PARAMS), ctx(2, gone)).setup(model)
    m = UMT(dict(PARAMS), Context(["m0", "m1"], 3, 90, 3, 4, CPU))
    m.setup(model)          # evaluation's case: no teacher needed to predict
    with pytest.raises(ValueError, match=r"umt: no teacher checkpoint given.*extras\['teachers'\]"):
        m.begin_epoch(at_epoch(0))
    with pytest.raises(ValueError, match="needs at least 2 modalities"):
        UMT(dict(PARAMS), Context(["m0"], 3, 90, 3, 4, CPU))
    wide = build_model([5, 4], 3, "concat", {"hidden": [16], "dropout": 0.0})
    with pytest.raises(ValueError, match="has 8 features, the student's encoder 16"):
        UMT(dict(PARAMS), ctx(2, path)).setup(wide)
    other = Context(["m0", "zz"], 3, 90, 3, 4, CPU, extras={"teachers": path})
    with pytest.raises(ValueError, match="no unimodal model of modality 'zz'"):
        UMT(dict(PARAMS), other).setup(model)
    ck = torch.load(path, weights_only=False)
    bad = tmp_path / "joint.pt"
    torch.save({**copy.deepcopy(ck), "method_cfg": {"type": "joint"}}, bad)
    with pytest.raises(ValueError, match="is a 'joint' run; the teachers must be a unimodal run"):
        UMT(dict(PARAMS), ctx(2, bad)).setup(model)


def test_a_retrained_teacher_retrains_the_umt_run_instead_of_resuming_it(teachers, tmp_path):
    _, path = teachers[2]
    data = feats_of(2)
    mine = method_extras(tmp_path, DATA, PARAMS, 0)["teachers"]
    mine.parent.mkdir(parents=True)
    mine.write_bytes(path.read_bytes())
    j = job("umt", PARAMS, STUDENT_TRAIN)

    def state():
        return torch.load(train_seed(j, DATA, "umt", 0, data, tmp_path, CPU), weights_only=False)["parts"][0]["state"]
    first = state()
    again = state()                      # same teacher: the finished checkpoint is resumed as it is
    assert all(torch.equal(first[k], again[k]) for k in first)
    ck = torch.load(mine, weights_only=False)
    for part in ck["parts"]:
        part["state"] = {k: v * 1.5 for k, v in part["state"].items()}
    torch.save(ck, mine)
    changed = state()                    # another teacher: trained afresh, not resumed
    assert any(not torch.equal(first[k], changed[k]) for k in first)


def test_params_say_which_unimodal_runs_teach_before_any_job():
    """The teacher is checked when the params resolve: a unimodal method of the run list that
    trains every seed of the UMT method."""
    import yaml
    from dyncim import config as C
    from tests.conftest import REPO
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["run"] = {"datasets": ["synthetic-bi"], "methods": ["unimodal", "umt"]}
    assert C.resolve(p, check=False)["methods"]["umt"]["teacher"] == "unimodal"
    for change, message in (
            ({"run": {"datasets": ["synthetic-bi"], "methods": ["umt"]}},
             "methods.umt.teacher: 'unimodal' is not in run.methods"),
            ({"methods": {**p["methods"], "umt": {**p["methods"]["umt"], "teacher": "joint"}}},
             "methods.umt.teacher: 'joint' is not a method of type unimodal"),
            ({"methods": {**p["methods"], "umt": {**p["methods"]["umt"], "seeds": [0, 7]}}},
             r"methods.umt.teacher: 'unimodal' has no seed\(s\) \[7\]")):
        with pytest.raises(C.ParamsError, match=message):
            C.resolve({**p, **change}, check=False)


def test_the_dag_shows_the_teachers_job_as_an_input_of_umt(tmp_path):
    import re
    import subprocess
    import yaml
    from tests.conftest import REPO, venv_env
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"datasets": ["synthetic-bi"], "methods": ["unimodal", "umt"]}}))
    r = subprocess.run(["snakemake", "-n", "--forceall", "--configfile", str(cfg)], cwd=REPO, env=venv_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    block = next(b for b in (r.stdout + r.stderr).split("\nrule ")
                 if b.startswith("train:") and "method=umt" in b)
    assert "models/synthetic-bi/unimodal/manifest.json" in re.search(r"input: (.*)", block).group(1)
