
import pytest
import torch

from dyncim.methods.base import Method, StepResult
from dyncim.train.loop import CheckpointMismatch, NonFiniteLoss, Trainer
from tests.conftest import TRAIN_CFG, tiny_features

JOINT = {"type": "joint", "fusion": "concat", "fused_weight": 1.0, "aux_weight": 0.0}


def make(tmp_path, feats, cfg=None, epochs=4, seed=0, method=JOINT, name="last.pt", fingerprint="f"):
    tcfg = {**TRAIN_CFG, "epochs": epochs, **(cfg or {})}
    return Trainer(feats, method, tcfg, seed, torch.device("cpu"), tmp_path / name, None, fingerprint,
                   tag="data=t method=joint seed=0")


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_training_is_deterministic_and_learns(tmp_path, feats):
    a = make(tmp_path, feats, name="a.pt")
    b = make(tmp_path, feats, name="b.pt")
    a.fit(), b.fit()
    assert torch.equal(params(a.model), params(b.model))
    assert [r["val_acc"] for r in a.history] == [r["val_acc"] for r in b.history]
    c = make(tmp_path, feats, seed=1, name="c.pt")
    c.fit()
    assert not torch.equal(params(a.model), params(c.model))
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]


def test_best_checkpoint_is_the_best_validation_epoch(tmp_path, feats):
    t = make(tmp_path, feats, epochs=6)
    best = t.fit()
    accs = [r["val_acc"] for r in t.history]
    assert best["val_acc"] == max(accs) and best["epoch"] == accs.index(max(accs)) + 1


def test_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    feats = tiny_features()
    full = make(tmp_path, feats, epochs=6, name="full.pt", cfg={"dropout": 0.2})
    full.fit()
    part = make(tmp_path, feats, epochs=3, name="part.pt", cfg={"dropout": 0.2})
    part.fit()
    ck = torch.load(tmp_path / "part.pt", weights_only=False)
    assert ck["epoch"] == 3
    # the same run asked for 6 epochs continues from the checkpoint (the fingerprint ignores epochs here)
    resumed = make(tmp_path, feats, epochs=6, name="part.pt", cfg={"dropout": 0.2})
    resumed.fit()
    assert torch.equal(params(resumed.model), params(full.model))
    assert resumed.history == full.history
    assert resumed.best["epoch"] == full.best["epoch"]


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path, feats):
    make(tmp_path, feats, epochs=2).fit()
    t = make(tmp_path, feats, epochs=2, fingerprint="other")
    assert not t.try_resume() and t.epoch == 0


def test_checkpoint_that_does_not_fit_the_model_is_an_error(tmp_path, feats):
    make(tmp_path, feats, epochs=1).fit()
    t = make(tmp_path, feats, epochs=1, cfg={"hidden": [16]})
    with pytest.raises(CheckpointMismatch, match="does not fit this model configuration"):
        t.try_resume()


class Exploding(Method):
    def loss(self, model, out, y, idx):
        loss = torch.nn.functional.cross_entropy(out.fused, y)
        return StepResult(loss * (float("inf") if self.ctx.extras.get("step", 0) >= 2 else 1.0), out.fused, out, y)

    def after_step(self, model):
        self.ctx.extras["step"] = self.ctx.extras.get("step", 0) + 1


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, feats, monkeypatch):
    import dyncim.train.assemble as assemble
    monkeypatch.setattr(assemble, "build_method", lambda cfg, ctx: Exploding(cfg, ctx))
    t = make(tmp_path, feats, epochs=2)
    with pytest.raises(NonFiniteLoss, match=r"data=t method=joint seed=0: non-finite loss at epoch 1, step 3"):
        t.fit()
