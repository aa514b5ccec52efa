"""Training, resuming and evaluating from a feature store (MediaSet) with tiny ResNet-18 and sequence
encoders, and the bfloat16 autocast path (forced on the CPU): losses finite, gradients float32."""
import json

import pytest
import torch

from dyncim import config as C
from dyncim.data.sets.media_set import open_media
from dyncim.models.resnet import ResNet18Encoder
from dyncim.models.sequence import SequenceEncoder
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG
from tests.media_store import av_store, mosei_store

TCFG = {**TRAIN_CFG, "epochs": 2, "batch_size": 8, "eval_batch_size": 16, "encoder": "resnet18",
        "resnet_width": 4}


def method_cfg(t: str) -> dict:
    return {"type": t, **C._fill_defaults(C.load_schema()["$defs"][f"method_{t}"], {})}


@pytest.fixture(scope="module")
def av(tmp_path_factory):
    return open_media(av_store(tmp_path_factory.mktemp("store") / "av"))


@pytest.fixture(scope="module")
def av32(tmp_path_factory):
    """32 x 32 frames: no convolution of the frame encoder sees a 1 x 1 input. On such an input
    oneDNN's bfloat16 weight gradient of the stride-2 3 x 3 convolution (torch 2.13 CPU) is NaN in
    about one call in seven (docs/gpu.md), which no code of ours can prevent."""
    return open_media(av_store(tmp_path_factory.mktemp("store32") / "av", frames=(2, 32, 32, 3)))


def params_of(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("method", ["joint", "dyncim", "ogm-ge"])
def test_two_epochs_from_a_store_with_tiny_resnets(av, tmp_path, method):
    t = Trainer(av, method_cfg(method), TCFG, 0, torch.device("cpu"), tmp_path / "last.pt", None, "f")
    assert all(isinstance(e, ResNet18Encoder) and e.out_dim == 32 and e.amp is None for e in t.model.encoders)
    assert t.model.encoders[1].frames and not t.model.encoders[0].frames
    best = t.fit()
    assert len(t.history) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in t.history)
    assert {"val_acc_audio", "val_acc_visual"} <= set(t.history[-1]) and best["state"] is not None
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ck["epoch"] == 2 and "augment" in ck["rng"]


def test_a_resumed_store_run_ends_like_an_uninterrupted_one(av, tmp_path):
    cfg = {**TCFG, "epochs": 3}
    full = Trainer(av, method_cfg("dyncim"), cfg, 1, torch.device("cpu"), tmp_path / "full.pt", None, "f")
    full.fit()
    Trainer(av, method_cfg("dyncim"), {**cfg, "epochs": 2}, 1, torch.device("cpu"), tmp_path / "part.pt",
            None, "f").fit()
    resumed = Trainer(av, method_cfg("dyncim"), cfg, 1, torch.device("cpu"), tmp_path / "part.pt", None, "f")
    resumed.fit()  # continues at epoch 2, the augmentation generator restored
    assert torch.equal(params_of(resumed.model), params_of(full.model))
    assert resumed.history == full.history


@pytest.mark.parametrize("method", ["joint", "dyncim", "ogm-ge"])
def test_bf16_autocast_runs_the_encoders_and_keeps_methods_in_float32(av32, tmp_path, method):
    t = Trainer(av32, method_cfg(method), {**TCFG, "epochs": 1, "amp": "bf16"}, 0, torch.device("cpu"),
                tmp_path / "last.pt", None, "f")
    assert all(e.amp == torch.bfloat16 for e in t.model.encoders)
    seen = {"conv": set(), "feat": set(), "logits": set(), "grads": set()}
    for enc in t.model.encoders:
        enc.stem[0].register_forward_hook(lambda mod, i, o: seen["conv"].add(o.dtype))
        enc.register_forward_hook(lambda mod, i, o: seen["feat"].add(o.dtype))
    hook = t.method.after_backward

    def after_backward(model, res):  # what a gradient-modulating method reads
        seen["logits"].update(z.dtype for z in [res.logits, *res.out.logits])
        seen["grads"].update(p.grad.dtype for p in model.parameters() if p.grad is not None)
        hook(model, res)
    t.method.after_backward = after_backward
    t.fit()
    assert seen["conv"] == {torch.bfloat16} and seen["feat"] == {torch.float32}
    assert seen["logits"] == {torch.float32} and seen["grads"] == {torch.float32}
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert torch.isfinite(torch.tensor(t.history[0]["train_loss"]))


def test_train_job_and_evaluation_from_a_store_folder(tmp_path):
    from dyncim.evaluation.evaluate import evaluate_data
    from dyncim.train.job import train_job
    store = av_store(tmp_path / "store", sizes=(12, 6, 6))
    mcfg = method_cfg("dyncim")
    params = {"device": "cpu", "threads": 1, "seeds": [0], "split": {"train": 0.6, "val": 0.2, "seed": 0},
              "resident_fraction": 0.5,
              "train": {**C.TRAIN_DEFAULTS, **TCFG},
              "datasets": {"av": {"source": "crema-d"}}, "methods": {"dyncim": {**mcfg, "seeds": [0]}},
              "run": {"datasets": ["av"], "methods": ["dyncim"]}}
    [best] = train_job(C.train_job(params, "av", "dyncim"), "av", "dyncim", [0], store, tmp_path)
    ck = torch.load(best, weights_only=False)
    assert ck["names"] == ["audio", "visual"] and ck["parts"][0]["in_dims"] == [(1, 32, 24), (2, 3, 16, 16)]
    [out] = evaluate_data(params, "av", store, tmp_path)
    res = json.loads(out.read_text())
    assert set(res["modalities"]) == {"audio", "visual"} and 0 <= res["acc"] <= 1
    assert {"probe", "own"} <= set(res["modalities"]["visual"]) and "gate_audio" in res["diagnostics"]


@pytest.mark.parametrize("encoder", ["auto", "lstm"])
def test_a_mosei_store_trains_with_sequence_encoders(tmp_path, encoder):
    data = open_media(mosei_store(tmp_path / "mosei"))
    cfg = {**TCFG, "encoder": encoder, "seq_dim": 8, "amp": "bf16"}
    t = Trainer(data, method_cfg("pmr"), cfg, 0, torch.device("cpu"), tmp_path / "last.pt", None, "f")
    assert all(isinstance(e, SequenceEncoder) and e.kind == ("lstm" if encoder == "lstm" else "transformer")
               for e in t.model.encoders)
    t.fit()
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in t.history)
    assert {"val_acc_text", "val_acc_audio", "val_acc_vision"} <= set(t.history[-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_default_is_bf16_channels_last_and_training_works(av, tmp_path):
    t = Trainer(av, method_cfg("ogm-ge"), {**TCFG, "epochs": 1}, 0, torch.device("cuda"), tmp_path / "l.pt",
                None, "f")
    assert t.data.labels.is_cuda and all(t.data.resident)
    enc = t.model.encoders[0]
    assert enc.amp == torch.bfloat16 and torch.backends.cudnn.benchmark
    assert enc.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    t.fit()
    assert torch.isfinite(torch.tensor(t.history[0]["train_loss"]))
