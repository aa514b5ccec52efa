"""Every method's hooks under bf16 autocast on the training device (the GPU check's first part).

`DYNCIM_TEST_DEVICE` picks the device (default: cpu; the GPU check sets cuda). The encoders run
under bfloat16 autocast (`amp: bf16`, the CUDA default for convolutional and sequence encoders),
and what a method computes from their outputs must stay float32: every parameter's gradient,
every tensor of the method's state (scores, coefficients, per-sample memories) and every
statistic it logs. The same runs in float32 give the reference the bf16 run must stay near."""
import math
import os

import pytest
import torch
import yaml

from dyncim import config as C
from dyncim.methods import method_class
from dyncim.methods.catalog import CATALOG
from dyncim.train.loop import Trainer
from tests.conftest import REPO, TRAIN_CFG, RecordingWriter, tiny_features

DEVICE = torch.device(os.environ.get("DYNCIM_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("DYNCIM_TEST_DEVICE=cuda, but torch sees no CUDA device")

PARAMS = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
ONE_PER_TYPE = {}
for name, m in PARAMS["methods"].items():
    ONE_PER_TYPE.setdefault(m["type"], name)
LOW = (torch.bfloat16, torch.float16)


def tensors(obj):
    """Every tensor inside nested dicts, lists and tuples."""
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors(v)


def train_teacher(name, feats, tcfg, root):
    """The best.pt of method `name`'s run on `feats` (seed 0) through the real train job."""
    from dyncim.train.job import train_seed
    job = {"train": tcfg, "split": PARAMS["split"], "datasets": {"tiny": {"source": "synthetic"}},
           "methods": {name: {**C.method_config(PARAMS, name), "seeds": [0]}},
           "run": {"datasets": ["tiny"], "methods": [name]}}
    return train_seed(job, "tiny", name, 0, feats, root, DEVICE)


def train(method, amp, tmp_path, epochs=2):
    feats = tiny_features(n=96, dims=(6, 5), n_classes=3, seed=1)
    mcfg = C.method_config(PARAMS, method)
    part = method_class(mcfg["type"]).parts(len(feats.names))[0]
    sub = feats.subset(part) if len(part) < len(feats.names) else feats
    tcfg = {**TRAIN_CFG, "epochs": epochs, "hidden": [16], "amp": amp}
    # UMT: its teachers are a real run of its `teacher` method (unimodal), trained first, read by path
    extras = {"teachers": train_teacher(mcfg["teacher"], feats, tcfg, tmp_path)} if "teacher" in mcfg else None
    t = Trainer(sub, mcfg, tcfg, 0, DEVICE, tmp_path / f"{method}-{amp}.pt", None, "device-test",
                tag=f"method={method} amp={amp}", extras=extras)
    t.fit()
    return t


@pytest.mark.parametrize("method", sorted(ONE_PER_TYPE.values()))
def test_each_method_under_bf16_autocast_keeps_float32_statistics(method, tmp_path):
    t = train(method, "bf16", tmp_path)
    assert all(enc.amp == torch.bfloat16 for enc in t.model.encoders)   # the autocast path ran
    assert all(math.isfinite(r["train_loss"]) for r in t.history)
    grads = [p.grad for p in t.model.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    for g in grads:
        assert g.dtype == torch.float32 and g.device.type == DEVICE.type and torch.isfinite(g).all()
    for p in t.model.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
    state = list(tensors(t.method.state_dict()))
    assert not [s for s in state if s.dtype in LOW], "method state kept in reduced precision"
    # no overflow (DynCIM's per-sample memory marks never-seen samples with NaN, by design)
    assert not [s for s in state if s.is_floating_point() and torch.isinf(s).any()]
    w = RecordingWriter()
    t.method.log(w, len(t.history))
    for tag, v in w.scalars.items():
        v = torch.as_tensor(v)
        assert v.dtype not in LOW and torch.isfinite(v.float()).all(), tag


@pytest.mark.parametrize("method", ["joint", "dyncim", "ogm-ge"])
def test_bf16_training_stays_near_the_float32_run(method, tmp_path):
    """The same seed and data with and without autocast: the first epoch's loss agrees to bf16's
    precision (a method computing its statistics in bf16 would drift further)."""
    a = train(method, "bf16", tmp_path, epochs=1).history[0]["train_loss"]
    b = train(method, "off", tmp_path, epochs=1).history[0]["train_loss"]
    assert abs(a - b) <= 0.02 * abs(b) + 1e-3, (a, b)


def test_every_catalog_method_is_covered():
    assert set(ONE_PER_TYPE) == set(CATALOG)
