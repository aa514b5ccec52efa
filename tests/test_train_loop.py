
import pytest
import torch

from dyncim.methods.base import Method, StepResult
from dyncim.methods.joint import Joint
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


# --- the sampler hook (Method.epoch_indices) ----------------------------------------------------

class OwnPermutation(Joint):
    """Ignores the loop's permutation and draws the same one from a generator of its own, seeded
    like the trainer's shuffle generator: what the loop must batch if the default hook hands the
    permutation on unchanged. Records every permutation the loop offers and every batch it draws."""

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.offered, self.drawn, self.gen = [], [], None

    def epoch_indices(self, run, perm):
        if self.gen is None:
            self.gen = torch.Generator().manual_seed(run.seed)
        self.offered.append(perm.clone())
        return run.train_idx[torch.randperm(len(run.train_idx), generator=self.gen)]

    def forward(self, model, xs, idx):
        self.drawn.append(idx.clone())
        return model(xs)


class Doubled(Joint):
    """Every epoch: the loop's permutation, then a second, method-drawn permutation of its first
    half (a multiset of training indices, as re-sampling methods return); generator in state."""

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.gen, self.sizes = torch.Generator().manual_seed(7), []

    def epoch_indices(self, run, perm):
        half = perm[:len(perm) // 2]
        out = torch.cat([perm, half[torch.randperm(len(half), generator=self.gen)]])
        self.sizes.append(len(out))
        return out

    def state_dict(self):
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])


def _with_method(monkeypatch, cls):
    import dyncim.train.assemble as assemble
    monkeypatch.setattr(assemble, "build_method", lambda cfg, ctx: cls(cfg, ctx))


def test_sampler_hook_default_returns_the_permutation_itself(tmp_path, feats):
    t = make(tmp_path, feats)
    perm = torch.randperm(10)
    assert t.method.epoch_indices(t.view(), perm) is perm


def test_sampler_hook_default_run_is_bit_identical_to_batching_the_seeded_permutation(tmp_path, feats, monkeypatch):
    plain = make(tmp_path, feats, name="plain.pt", cfg={"dropout": 0.2})
    plain.fit()
    _with_method(monkeypatch, OwnPermutation)
    own = make(tmp_path, feats, name="own.pt", cfg={"dropout": 0.2})
    own.fit()
    # the default hook's run == a run batching exactly the trainer's seeded permutations
    assert torch.equal(params(plain.model), params(own.model))
    assert plain.history == own.history
    # the hook fires once per epoch, offered the shuffle generator's permutation of train_idx
    g = torch.Generator().manual_seed(0)
    tr = own.train_idx
    assert len(own.method.offered) == 4
    for perm in own.method.offered:
        assert torch.equal(perm, tr[torch.randperm(len(tr), generator=g)])
    # and the batches are its output sliced in order, in batch_size pieces
    bs = TRAIN_CFG["batch_size"]
    steps = (len(tr) + bs - 1) // bs
    for e, perm in enumerate(own.method.offered):
        assert torch.equal(torch.cat(own.method.drawn[e * steps:(e + 1) * steps]), perm)
        assert [len(b) for b in own.method.drawn[e * steps:(e + 1) * steps]][0] == bs


def test_sampler_hook_multiset_changes_training_and_resumes_exactly(tmp_path, feats, monkeypatch):
    plain = make(tmp_path, feats, epochs=4, name="plain.pt")
    plain.fit()
    _with_method(monkeypatch, Doubled)
    full = make(tmp_path, feats, epochs=4, name="full.pt")
    full.fit()
    assert full.method.sizes == [len(full.train_idx) * 3 // 2] * 4
    assert not torch.equal(params(plain.model), params(full.model))   # the hook's order is used
    make(tmp_path, feats, epochs=2, name="part.pt").fit()
    resumed = make(tmp_path, feats, epochs=4, name="part.pt")
    resumed.fit()
    assert torch.equal(params(resumed.model), params(full.model))
    assert resumed.history == full.history
