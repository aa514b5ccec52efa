"""Greedy (Wu et al., ICML 2022): the MMTM block against a hand computation, its running averages
and frozen branch, the conditional learning speeds against the official name-based rule, the
curation windows against a hand-worked sequence and an independent transcription of the official
callback, the conditional utilisation rates on a constructed model, the refusals, and a training
run that learns and resumes exactly."""
import math
import random

import pytest
import torch
import yaml
from torch.nn import functional as F

from dyncim import config as C
from dyncim.data.sets.feature_set import FeatureSet
from dyncim.methods.base import Context
from dyncim.methods.greedy import MMTM, Greedy, curation_update, speed_increments
from dyncim.models import build_model
from dyncim.models.multimodal import STAGE_MIXER
from dyncim.train.loop import Trainer
from tests.conftest import REPO, TRAIN_CFG, RecordingWriter, at_epoch, tiny_features

PARAMS = {"type": "greedy", "epsilon": 0.01, "window": 5, "starting_epoch": 2, "mmtm_ratio": 4,
          "mmtm_stages": 3}
F64 = {"dtype": torch.float64}


def ctx(n=2, classes=3):
    return Context(names=["a", "v", "t"][:n], n_classes=classes, n_samples=100, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


def greedy_model(dims=(5, 4), hidden=(8,), classes=3, cfg=None, seed=0):
    torch.manual_seed(seed)
    m = Greedy({**PARAMS, **(cfg or {})}, ctx(len(dims), classes))
    model = build_model(list(dims), classes, m.fusion, {"hidden": list(hidden), "dropout": 0.0})
    m.setup(model)
    return m, model


def test_official_defaults_in_params_yaml():
    P = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert C.method_config(P, "greedy") == PARAMS   # configs/training_guided.gin, src/model.py


# --- the MMTM block ---------------------------------------------------------------------------

def sig(v):
    return 1 / (1 + math.exp(-v))


def test_mmtm_block_matches_a_hand_computation():
    """A 2-channel 2 x 2 feature map and a 1-channel vector: squeeze (spatial mean; the vector as
    is), the joint FC with ReLU, per-modality sigmoid excitations, per-channel gating."""
    block = MMTM([2, 1], ratio=3).double()      # hidden = int(2 * 3 / 3) = 2
    with torch.no_grad():
        block.fc_squeeze.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]))
        block.fc_squeeze.bias.copy_(torch.tensor([0.0, -1.0]))
        block.fc_excite[0].weight.copy_(torch.tensor([[2.0, -1.0], [0.0, 1.0]]))
        block.fc_excite[0].bias.copy_(torch.tensor([0.5, -0.5]))
        block.fc_excite[1].weight.copy_(torch.tensor([[1.0, 3.0]]))
        block.fc_excite[1].bias.copy_(torch.tensor([-2.0]))
    a = torch.tensor([[[[1.0, 3.0], [2.0, 2.0]], [[0.0, -1.0], [4.0, 1.0]]]], **F64)   # (1, 2, 2, 2)
    v = torch.tensor([[0.5]], **F64)                                                    # (1, 1)
    # by hand: squeezes 2.0, 1.0 (means of the two maps) and 0.5
    s = [2.0, 1.0, 0.5]
    z = [max(0.0, 1 * s[0] + 0 * s[1] - 1 * s[2] + 0.0),          # 1.5
         max(0.0, 0.5 * s[0] + 0.5 * s[1] + 0.5 * s[2] - 1.0)]    # 0.75
    e_a = [sig(2 * z[0] - 1 * z[1] + 0.5), sig(0 * z[0] + 1 * z[1] - 0.5)]
    e_v = [sig(1 * z[0] + 3 * z[1] - 2.0)]
    out_a, out_v = block([a, v])
    want_a = torch.stack([a[0, 0] * e_a[0], a[0, 1] * e_a[1]])[None]
    torch.testing.assert_close(out_a, want_a, rtol=1e-12, atol=0)
    torch.testing.assert_close(out_v, v * e_v[0], rtol=1e-12, atol=0)


def test_mmtm_three_inputs_and_frame_stacks_follow_the_formula():
    torch.manual_seed(0)
    block = MMTM([3, 2, 4], ratio=4).double()    # hidden = int(2 * 9 / 4) = 4
    assert block.fc_squeeze.weight.shape == (4, 9)
    hs = [torch.randn(5, 3, 2, 4, 4, **F64), torch.randn(5, 2, **F64), torch.randn(5, 4, 3, 3, **F64)]
    s = torch.cat([hs[0].mean((2, 3, 4)), hs[1], hs[2].mean((2, 3))], 1)   # over frames, H, W
    z = torch.relu(s @ block.fc_squeeze.weight.T + block.fc_squeeze.bias)
    e = [torch.sigmoid(z @ fc.weight.T + fc.bias) for fc in block.fc_excite]
    out = block(hs)
    torch.testing.assert_close(out[0], hs[0] * e[0][:, :, None, None, None])
    torch.testing.assert_close(out[1], hs[1] * e[1])
    torch.testing.assert_close(out[2], hs[2] * e[2][:, :, None, None])


def test_running_averages_and_the_frozen_branch():
    torch.manual_seed(0)
    block = MMTM([3, 2], ratio=2)
    batches = [[torch.randn(4, 3), torch.randn(4, 2)] for _ in range(4)]
    means = [[], []]
    for hs in batches[:3]:
        e, _ = block.excitations(hs)
        for m in range(2):
            means[m].append(e[m].detach().mean(0))
        block(hs, record=True)
    for m in range(2):   # the running mean of the batch-mean excitations over the recorded steps
        torch.testing.assert_close(block.avg_scale(m), torch.stack(means[m]).mean(0))
    assert int(block.steps) == 3
    block(batches[0])                                   # not recorded: evaluation passes
    assert int(block.steps) == 3
    # a re-balancing step for modality 0: its gating is the running mean including this batch
    hs = batches[3]
    e, _ = block.excitations(hs)
    avg0 = (torch.stack(means[0]).sum(0) + e[0].detach().mean(0)) / 4
    out = block(hs, frozen=torch.tensor([True, False]), record=True)
    torch.testing.assert_close(out[0], hs[0] * avg0)
    torch.testing.assert_close(out[1], hs[1] * e[1])
    sum(o.sum() for o in out).backward()
    assert block.fc_excite[0].weight.grad.abs().max() == 0      # the frozen excitation learns nothing
    assert block.fc_excite[1].weight.grad.abs().max() > 0
    assert block.fc_squeeze.weight.grad.abs().max() > 0         # the shared FC, through modality 1


# --- conditional learning speeds ----------------------------------------------------------------

def test_speed_increments_follow_the_official_name_rule():
    """compute_BDR sorts parameters by name: a modality's MMTM excitation FCs and every shared
    squeeze FC are its bypass, its branch (encoder + classifier) its main path."""
    m, model = greedy_model(dims=(5, 4), hidden=(8, 6))
    assert m.cfg["mmtm_stages"] == 3 and model.extra[STAGE_MIXER].stages == (0, 1)   # capped at 2
    xs = [torch.randn(16, 5), torch.randn(16, 4)]
    y = torch.randint(0, 3, (16,))
    m.begin_epoch(at_epoch(0))
    res = m.loss(model, m.forward(model, xs, None), y, None)
    res.loss.backward()
    gn = {"bypass": [0.0, 0.0], "main": [0.0, 0.0]}
    wn = {"bypass": [0.0, 0.0], "main": [0.0, 0.0]}
    for name, p in model.named_parameters():
        g, w = float(p.grad.double().square().sum()), float(p.detach().double().square().sum())
        if "stage_mixer" in name:
            mods = [int(name.split("fc_excite.")[1][0])] if "fc_excite" in name else [0, 1]
            kind = "bypass"
        else:
            mods = [int(name.split("encoders.")[1][0]) if name.startswith("encoders.")
                    else int(name.split("heads.")[1][0])]
            kind = "main"
        for k in mods:
            gn[kind][k] += g
            wn[kind][k] += w
    inc_b, inc_m = speed_increments(*m.groups(model))
    assert inc_b.tolist() == pytest.approx([gn["bypass"][k] / wn["bypass"][k] for k in range(2)], rel=1e-5)
    assert inc_m.tolist() == pytest.approx([gn["main"][k] / wn["main"][k] for k in range(2)], rel=1e-5)
    # the loss: the heads' summed cross-entropies (blend_loss); the prediction: their mean
    z = res.out.logits
    with torch.no_grad():
        assert float(res.loss) == pytest.approx(float(F.cross_entropy(z[0], y) + F.cross_entropy(z[1], y)), rel=1e-6)
        torch.testing.assert_close(res.logits, (z[0] + z[1]) / 2)


# --- the curation windows -------------------------------------------------------------------

def fresh_state(M):
    return {"bypass": torch.zeros(M), "main": torch.zeros(M), "bdr": torch.zeros(M),
            "curation": torch.tensor(False), "curation_step": torch.tensor(0), "caring": torch.tensor(0)}


def run_steps(steps, M=2, epsilon=0.01, window=2):
    state, seen = fresh_state(M), []
    for inc_b, inc_m, unlocked in steps:
        state = curation_update(state, torch.tensor(inc_b), torch.tensor(inc_m), unlocked, epsilon, window)
        seen.append((bool(state["curation"]), int(state["caring"])))
    return state, seen


def test_curation_windows_on_a_hand_worked_sequence():
    steps = [([1.0, 1.0], [1.0, 1.0], False),    # warm-up: sums b = m = (1, 1), BDR (0, 0)
             ([2.0, 1.0], [1.0, 1.0], True),     # b (3, 2), m (2, 2): BDR (0.176, 0) -> care for 0
             ([9.0, 0.0], [1.0, 1.0], True),     # curation step 1 of 2 (speeds not accumulated)
             ([9.0, 0.0], [1.0, 1.0], True),     # step 2 of 2: the window closes after it
             ([0.0, 1.0], [1.0, 1.0], True),     # b (3, 3), m (3, 3): BDR (0, 0): balanced
             ([0.0, 2.0], [1.0, 1.0], True)]     # b (3, 5), m (4, 4): BDR0 < BDR1 -> care for 1
    state, seen = run_steps(steps)
    assert seen == [(False, 0), (True, 0), (True, 0), (False, 0), (False, 0), (True, 1)]
    assert state["bypass"].tolist() == [3.0, 5.0] and state["main"].tolist() == [4.0, 4.0]
    assert state["bdr"].tolist() == pytest.approx([math.log10(0.75), math.log10(1.25)])
    # below epsilon nothing opens; before starting_epoch nothing opens whatever the speeds
    _, seen = run_steps([([1.0, 1.0], [1.0, 1.0], True), ([1.02, 1.0], [1.0, 1.0], True)], epsilon=0.01)
    assert seen == [(False, 0), (False, 0)]
    _, seen = run_steps([([5.0, 1.0], [1.0, 1.0], False)] * 3)
    assert seen == [(False, 0)] * 3
    # three modalities: the window opens on the spread and cares for the largest BDR
    _, seen = run_steps([([1.0, 3.0, 2.0], [1.0, 1.0, 1.0], True)], M=3)
    assert seen == [(True, 1)]


class OfficialCallback:
    """An independent transcription of Bias_Mitigation_Strong.on_backward_end (two modalities,
    plain Python floats)."""

    def __init__(self, epsilon, window):
        self.epsilon, self.window = epsilon, window
        self.bypass, self.main = [0.0, 0.0], [0.0, 0.0]
        self.curation_mode, self.caring, self.curation_step = False, 0, 0

    def d(self, inc_b, inc_m):
        for k in range(2):
            self.bypass[k] += inc_b[k]
            self.main[k] += inc_m[k]
        return math.log10(self.bypass[0] / self.main[0]) - math.log10(self.bypass[1] / self.main[1])

    def step(self, inc_b, inc_m, unlocked):
        if not unlocked:
            self.d(inc_b, inc_m)
            self.curation_mode, self.caring = False, 0
        elif not self.curation_mode:
            d = self.d(inc_b, inc_m)
            if abs(d) > self.epsilon:
                self.curation_mode, self.curation_step = True, 0
                self.caring = 1 if d < 0 else 0
            else:
                self.curation_mode, self.caring = False, 0
        else:
            self.curation_step += 1
            if self.curation_step == self.window:
                self.curation_mode = False


def test_curation_matches_the_official_callback_on_random_speeds():
    rng = random.Random(0)
    for window in (1, 3, 5):
        ref = OfficialCallback(0.05, window)
        state = fresh_state(2)
        for t in range(300):
            inc_b = [rng.uniform(0.5, 1.5) for _ in range(2)]
            inc_m = [rng.uniform(0.5, 1.5) for _ in range(2)]
            unlocked = t >= 20
            ref.step(inc_b, inc_m, unlocked)
            state = curation_update(state, torch.tensor(inc_b, **F64), torch.tensor(inc_m, **F64),
                                    unlocked, 0.05, window)
            assert (bool(state["curation"]), int(state["caring"])) == (ref.curation_mode, ref.caring), t
            if ref.curation_mode:
                assert int(state["curation_step"]) == ref.curation_step


def test_the_method_freezes_the_caring_branch_from_the_starting_epoch_only():
    m, model = greedy_model()
    xs = [torch.randn(16, 5), torch.randn(16, 4)]
    y = torch.randint(0, 3, (16,))
    m.state["curation"], m.state["caring"] = torch.tensor(True), torch.tensor(1)

    def step():
        model.zero_grad()
        m.loss(model, m.forward(model, xs, None), y, None).loss.backward()
        return [model.extra[STAGE_MIXER].blocks[0].fc_excite[k].weight.grad.abs().max() for k in range(2)]

    m.begin_epoch(at_epoch(0))          # epoch 1 (1-based): before starting_epoch 2, no curation
    assert all(g > 0 for g in step())
    m.begin_epoch(at_epoch(1))
    g0, g1 = step()
    assert g0 > 0 and g1 == 0           # modality 1's excitation replaced by its running average
    assert m._curated.tolist() == [0, 1]
    # evaluation passes use the full MMTM, whatever the curation state
    model.eval()
    with torch.no_grad():
        full = model(xs).fused
        m.state["curation"] = torch.tensor(False)
        torch.testing.assert_close(model(xs).fused, full, rtol=0, atol=0)


# --- conditional utilisation rates -------------------------------------------------------------

def test_utilisation_rates_on_a_constructed_model():
    """Head 0 reads the label only through the MMTM (modality 1's squeeze opens one of its two
    channels); head 1 reads it from its own modality and ignores modality 0. Removing modality 1
    (its squeeze -> its training mean (0.5, 0.5)) leaves head 0 with the argmax of its noise."""
    n = 100
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x0 = 0.3 * torch.randn(n, 2, generator=g)
    x1 = torch.where(y == 0, 1.0, -1.0)[:, None]
    split = torch.zeros(n, dtype=torch.int8)
    split[60:80], split[80:] = 1, 2                  # train: 30 samples of each class
    data = FeatureSet(["a", "b"], 2, [x0, x1], y, split, None)
    m = Greedy(PARAMS, Context(["a", "b"], 2, n, 1, 1, torch.device("cpu")))
    model = build_model([2, 1], 2, "sum", {"hidden": [2], "dropout": 0.0})
    m.setup(model)
    block = model.extra[STAGE_MIXER].blocks[0]
    with torch.no_grad():
        enc0, enc1 = model.encoders[0].net[0], model.encoders[1].net[0]
        enc0.weight.copy_(torch.eye(2)), enc0.bias.fill_(1.0)               # h0 = x0 + 1 > 0
        enc1.weight.copy_(torch.tensor([[1.0], [-1.0]])), enc1.bias.zero_()  # h1 = one-hot of y
        block.fc_squeeze.weight.copy_(torch.tensor([[0.0, 0.0, 1.0, -1.0], [0.0, 0.0, -1.0, 1.0]]))
        block.fc_squeeze.bias.zero_()
        block.fc_excite[0].weight.copy_(20 * torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        block.fc_excite[0].bias.zero_()
        block.fc_excite[1].weight.zero_(), block.fc_excite[1].bias.fill_(10.0)
        for head in model.fusion.heads:
            head.weight.copy_(torch.eye(2)), head.bias.zero_()
    test = data.index("test")
    res = m.diagnostics(model, data, test, batch_size=7)
    without_b = float((x0[test].argmax(1) == y[test]).double().mean())
    assert 0.2 < without_b < 0.8                     # a real drop from accuracy 1
    assert res["u_b_given_a"] == pytest.approx(1.0 - without_b, abs=1e-12)
    assert res["u_a_given_b"] == 0.0
    assert res["d_util"] == pytest.approx(1.0 - without_b, abs=1e-12)
    assert model.training                            # left as it was


# --- refusals and the training run ---------------------------------------------------------------

def test_refuses_encoders_without_stages_one_modality_and_concat():
    from dyncim.models.encoders import MLPEncoder
    from dyncim.models.multimodal import MultimodalModel
    from dyncim.models.sequence import SequenceEncoder
    m = Greedy(PARAMS, ctx())
    model = MultimodalModel([SequenceEncoder(4, 8), MLPEncoder(3, [8])], "sum", 3)
    with pytest.raises(ValueError, match=r"encoder of modality 'a' \(transformer\) has none; use encoder mlp"):
        m.setup(model)
    model = MultimodalModel([MLPEncoder(4, [8, 8]), MLPEncoder(3, [8])], "sum", 3)
    with pytest.raises(ValueError, match=r"different numbers of stages: \{'a': 2, 'v': 1\}"):
        m.setup(model)
    with pytest.raises(ValueError, match="^greedy: needs at least 2 modalities"):
        Greedy(PARAMS, ctx(1))
    with pytest.raises(ValueError, match="needs sum fusion"):
        Greedy({**PARAMS, "fusion": "concat"}, ctx())


def _trainer(path, epochs, data, dims=None):
    return Trainer(data, {**PARAMS, "starting_epoch": 1}, {**TRAIN_CFG, "epochs": epochs, "hidden": [8, 6]},
                   0, torch.device("cpu"), path, None, "x")


def test_training_learns_rebalances_and_resumes_exactly(tmp_path):
    data = tiny_features(n=120)
    a = _trainer(tmp_path / "a.pt", 6, data)
    a.fit()
    losses = [r["train_loss"] for r in a.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert a.history[-1]["val_acc"] > 0.6       # 3 classes
    blocks = a.model.extra[STAGE_MIXER].blocks
    assert len(blocks) == 2 and all(int(b.steps) == 6 * 5 for b in blocks)   # 72 train / 16 = 5 steps
    w = RecordingWriter()
    a.method.log(w, 6)
    assert sum(w.scalars[f"greedy/rebalanced_{k}"] for k in ("m0", "m1")) > 0   # windows opened
    assert math.isfinite(w.scalars["greedy/d_speed"])
    # stopped after 3 epochs and resumed: the same run
    _trainer(tmp_path / "b.pt", 3, data).fit()
    b = _trainer(tmp_path / "b.pt", 6, data)
    b.fit()
    assert b.history == a.history
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    for k, v in a.method.state_dict().items():
        assert torch.equal(v, b.method.state_dict()[k]), k


def test_evaluation_of_a_trained_run_runs_the_mmtm_and_reports_utilisation_rates(tmp_path):
    from dyncim.evaluation.evaluate import evaluate_run
    from dyncim.train.inference import evaluate_split
    from dyncim.train.job import train_seed
    P = C.resolve(yaml.safe_load((REPO / "params.yaml").read_text()))
    feats = tiny_features(n=90)
    tcfg = {**TRAIN_CFG, "epochs": 2, "hidden": [8, 6]}
    job = {"train": tcfg, "split": P["split"], "datasets": {"tiny": {"source": "synthetic"}},
           "methods": {"greedy": {**C.method_config(P, "greedy"), "seeds": [0]}},
           "run": {"datasets": ["tiny"], "methods": ["greedy"]}}
    best = train_seed(job, "tiny", "greedy", 0, feats, tmp_path, torch.device("cpu"))
    res = evaluate_run(best, feats)
    assert set(res["diagnostics"]) == {"u_m0_given_m1", "u_m1_given_m0", "d_util"}
    assert all(math.isfinite(v) for v in res["diagnostics"].values())
    # the evaluated model runs its MMTM blocks (the model's stage mixer), predicting the heads' mean
    from dyncim.evaluation.evaluate import load_run
    _, built = load_run(best, feats, "cpu")
    _, _, method, model = built[0]
    idx = feats.index("test")
    fused, parts, _ = evaluate_split(model, method, feats, idx, 64)
    torch.testing.assert_close(fused, (parts[0] + parts[1]) / 2)
    with torch.no_grad():
        plain = model.eval()(feats.batch(idx), between=lambda k, hs: hs)   # without the MMTM
    assert not torch.allclose(plain.logits[0], parts[0])


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_tiny_resnets_from_a_store_with_frame_stacks(tmp_path, amp):
    from dyncim.data.sets.media_set import open_media
    from tests.media_store import av_store
    from tests.test_train_media import TCFG
    # audio (1, 32, 24), visual frames (2, 3, 32, 32): 32 x 32 as test_train_media's bf16 test says
    av = open_media(av_store(tmp_path / "av", frames=(2, 32, 32, 3)))
    t = Trainer(av, {**PARAMS, "starting_epoch": 1}, {**TCFG, "amp": amp}, 0, torch.device("cpu"),
                tmp_path / "last.pt", None, "f")
    mixer = t.model.extra[STAGE_MIXER]
    assert mixer.stages == (1, 2, 3) and [b.dims for b in mixer.blocks] == [(8, 8), (16, 16), (32, 32)]
    shapes = []
    mixer.blocks[0].register_forward_pre_hook(lambda mod, args: shapes.append([tuple(h.shape) for h in args[0]]))
    t.fit()
    assert shapes[0] == [(8, 8, 4, 3), (8, 8, 2, 4, 4)]    # after layer2: the visual map (B, C, T, H, W)
    assert all(math.isfinite(r["train_loss"]) for r in t.history)
    assert all(p.grad.dtype == torch.float32 for p in t.model.parameters() if p.grad is not None)
    assert all(torch.isfinite(v).all() for v in t.method.state_dict().values())
