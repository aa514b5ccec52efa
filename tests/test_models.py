import torch

from dyncim.models import build_model

CFG = {"hidden": [8], "dropout": 0.0}


def test_concat_parts_are_the_fused_head_split_by_modality():
    torch.manual_seed(0)
    model = build_model([5, 3, 4], 6, "concat", CFG)
    xs = [torch.randn(7, d) for d in (5, 3, 4)]
    out = model(xs)
    assert torch.allclose(sum(out.logits), out.fused, atol=1e-6)
    W, b = model.fusion.fc.weight, model.fusion.fc.bias
    h1 = out.feats[1]
    assert torch.allclose(out.logits[1], h1 @ W[:, 8:16].T + b / 3, atol=1e-6)


def test_sum_fusion_sums_own_heads():
    torch.manual_seed(0)
    model = build_model([5, 3], 4, "sum", CFG)
    out = model([torch.randn(2, 5), torch.randn(2, 3)])
    assert torch.allclose(out.fused, out.logits[0] + out.logits[1])
    assert torch.allclose(out.logits[0], model.fusion.heads[0](out.feats[0]))
