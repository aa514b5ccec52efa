"""MMCosine: the cosine logits and their scale against a plain-Python computation, at training
(the loss the loop differentiates) and at prediction (validation / test, per modality too), for
concat and sum fusion and three modalities; invariance to feature and class-weight norms, no bias;
an evaluation model rebuilt from a checkpoint predicts the same; a training run that learns."""
import math

import pytest
import torch
from torch.nn import functional as F

from dyncim.methods.base import Context
from dyncim.methods.mmcosine import MMCosine
from dyncim.models import build_model
from dyncim.train.assemble import assemble
from dyncim.train.inference import evaluate_split
from dyncim.train.loop import Trainer
from tests.conftest import TRAIN_CFG, at_epoch, tiny_features

PARAMS = {"type": "mmcosine", "fusion": "concat", "scale": 10.0}
F64 = {"dtype": torch.float64}


def ctx(n=2):
    return Context(names=["a", "v", "t"][:n], n_classes=3, n_samples=100, epochs=5,
                   steps_per_epoch=4, device=torch.device("cpu"))


def make(n=2, fusion="concat", scale=10.0, seed=0):
    torch.manual_seed(seed)
    dims = [5, 4, 3][:n]
    model = build_model(dims, 3, fusion, {"hidden": [8], "dropout": 0.0}).double()
    m = MMCosine({**PARAMS, "fusion": fusion, "scale": scale}, ctx(n))
    m.setup(model)
    g = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(6, d, generator=g, **F64) for d in dims]
    y = torch.randint(0, 3, (6,), generator=g)
    return m, model, xs, y


def blocks(model, fusion):
    """Each modality's (K, d) block of the head, as nested lists."""
    if fusion == "concat":
        w = model.fusion.fc.weight.detach().tolist()
        return [[row[8 * m:8 * (m + 1)] for row in w] for m in range(len(model.encoders))]
    return [h.weight.detach().tolist() for h in model.fusion.heads]


def hand_cosine(feats, blocks, scale):
    """z^m_{ik} = scale * h_i . w_k / (|h_i| |w_k|), in plain Python; and their sum."""
    def norm(v):
        return math.sqrt(sum(x * x for x in v))
    parts = [[[scale * sum(a * b for a, b in zip(h, w)) / (norm(h) * norm(w)) for w in W] for h in H]
             for H, W in zip(feats, blocks)]
    fused = [[sum(p[i][k] for p in parts) for k in range(len(parts[0][0]))] for i in range(len(parts[0]))]
    return parts, fused


def hand_ce(z, y):
    return sum(math.log(sum(math.exp(v) for v in r)) - r[c] for r, c in zip(z, y)) / len(y)


@pytest.mark.parametrize("n,fusion", [(2, "concat"), (2, "sum"), (3, "concat"), (3, "sum")])
def test_training_loss_and_prediction_are_scaled_cosine_logits(n, fusion):
    m, model, xs, y = make(n, fusion, scale=10.0)
    m.begin_epoch(at_epoch(0))
    out = m.forward(model, xs, None)                  # training (train mode, with gradients)
    feats = [h.detach().tolist() for h in out.feats]
    parts, fused = hand_cosine(feats, blocks(model, fusion), 10.0)
    for got, want in zip(out.logits, parts):
        torch.testing.assert_close(got.detach(), torch.tensor(want, **F64), rtol=1e-12, atol=1e-12)
    res = m.loss(model, out, y, None)
    assert float(res.loss.detach()) == pytest.approx(hand_ce(fused, y.tolist()), rel=1e-12)
    # prediction: eval mode, no gradient, label-free
    model.eval()
    with torch.no_grad():
        pred = m.predict(model, model(xs))
    torch.testing.assert_close(pred, torch.tensor(fused, **F64), rtol=1e-12, atol=1e-12)
    assert pred.abs().max() <= 10.0 * n + 1e-9         # each block a cosine times the scale


def test_logits_scale_linearly_with_the_scale():
    out = {}
    for s in (1.0, 10.0, 15.0):
        m, model, xs, _ = make(scale=s)
        out[s] = model(xs)
    for s in (10.0, 15.0):
        torch.testing.assert_close(out[s].fused, s * out[1.0].fused, rtol=1e-12, atol=1e-12)
        for a, b in zip(out[s].logits, out[1.0].logits):
            torch.testing.assert_close(a, s * b, rtol=1e-12, atol=1e-12)


def test_invariant_to_feature_and_class_weight_norms_and_no_bias():
    m, model, xs, y = make()
    base = model(xs).fused.detach()
    with torch.no_grad():
        model.fusion.fc.weight[1] *= 7.0               # one class row longer
        model.fusion.fc.bias.add_(5.0)                 # the bias is in no logit
        model.encoders[0].net[-2].weight *= 3.0        # modality 0's features longer (ReLU: positive scaling)
        model.encoders[0].net[-2].bias *= 3.0
    torch.testing.assert_close(model(xs).fused.detach(), base, rtol=1e-12, atol=1e-12)
    model.zero_grad()
    F.cross_entropy(model(xs).fused, y).backward()
    assert model.fusion.fc.bias.grad is None and model.fusion.fc.weight.grad.abs().sum() > 0


def _trainer(path, data, epochs=4):
    return Trainer(data, dict(PARAMS), {**TRAIN_CFG, "epochs": epochs}, 0, torch.device("cpu"), path,
                   None, "x")


def test_training_learns_and_evaluation_predicts_with_cosine_logits(tmp_path):
    data = tiny_features(n=90, dims=(5, 4, 3))
    t = _trainer(tmp_path / "a.pt", data)
    t.fit()
    losses = [r["train_loss"] for r in t.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert t.history[-1]["val_acc"] > 0.5
    fused, parts, feats = evaluate_split(t.model, t.method, t.data, t.val_idx, 64)
    want_parts, want_fused = hand_cosine([f.tolist() for f in feats],
                                         [[r[8 * m:8 * (m + 1)] for r in t.model.fusion.fc.weight.tolist()]
                                          for m in range(3)], 10.0)
    torch.testing.assert_close(fused, torch.tensor(want_fused), rtol=1e-5, atol=1e-5)
    for got, want in zip(parts, want_parts):           # the per-modality validation accuracies too
        torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=1e-5)
    # evaluation rebuilds the model through assemble (setup registers the cosine head again)
    method, model = assemble(t.data, dict(PARAMS), {**TRAIN_CFG, "epochs": 4}, torch.device("cpu"))
    model.load_state_dict(t.model.state_dict())
    again, _, _ = evaluate_split(model, method, t.data, t.val_idx, 64)
    assert torch.equal(again, fused)
