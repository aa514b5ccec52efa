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


def test_resnet18_encoders_for_spectrograms_and_frame_stacks():
    from dyncim.models.resnet import ResNet18Encoder
    torch.manual_seed(0)
    audio = ResNet18Encoder(1).eval()
    assert audio(torch.randn(2, 1, 40, 36)).shape == (2, 512)
    frames = ResNet18Encoder(3, frames=True).eval()
    x = torch.randn(2, 3, 3, 32, 32)
    per_frame = torch.stack([frames.layers(frames.stem(x[:, t])).mean((2, 3)) for t in range(3)], 1)
    assert torch.allclose(frames(x), per_frame.mean(1), atol=1e-5)  # pooled over time
    n = sum(p.numel() for p in audio.parameters())
    assert 11.1e6 < n < 11.2e6  # ResNet-18's 11.2 M parameters (1-channel stem, no classifier)


def test_build_model_picks_the_encoder_by_input_and_says_what_is_wrong():
    import pytest
    from dyncim.models.resnet import ResNet18Encoder
    model = build_model([(1, 40, 36), (2, 3, 32, 32)], 6, "sum", {**CFG, "encoder": "resnet18"})
    assert all(isinstance(e, ResNet18Encoder) for e in model.encoders) and model.encoders[1].frames
    out = model.eval()([torch.randn(2, 1, 40, 36), torch.randn(2, 2, 3, 32, 32)])
    assert out.fused.shape == (2, 6)
    with pytest.raises(ValueError, match="encoder mlp takes vector features"):
        build_model([(1, 40, 36)], 6, "sum", {**CFG, "encoder": "mlp"})
    with pytest.raises(ValueError, match="resnet18 takes"):
        build_model([12], 6, "sum", {**CFG, "encoder": "resnet18"})


def test_encoder_auto_picks_by_input_rank_and_amp_defaults_to_float32_off_cuda():
    import pytest
    from dyncim.models.encoders import MLPEncoder
    from dyncim.models.multimodal import prepare_for_device
    from dyncim.models.resnet import ResNet18Encoder
    from dyncim.models.sequence import SequenceEncoder
    cfg = {**CFG, "encoder": "auto", "resnet_width": 8, "seq_dim": 8}
    model = build_model([5, (6, 12), (1, 40, 36)], 3, "concat", cfg)
    assert [type(e) for e in model.encoders] == [MLPEncoder, SequenceEncoder, ResNet18Encoder]
    assert model.encoders[2].out_dim == 64  # 8 x the width
    prepare_for_device(model, cfg, "cpu")
    assert all(e.amp is None for e in model.encoders)  # auto: float32 on the CPU
    prepare_for_device(model, {**cfg, "amp": "bf16"}, "cpu")
    assert all(e.amp == torch.bfloat16 for e in model.encoders)
    out = model.eval()([torch.randn(2, 5), torch.randn(2, 6, 12), torch.randn(2, 1, 40, 36)])
    assert all(f.dtype == torch.float32 for f in out.feats) and out.fused.dtype == torch.float32
    with pytest.raises(ValueError, match="transformer takes"):
        build_model([(1, 40, 36)], 3, "sum", {**CFG, "encoder": "transformer"})
    with pytest.raises(ValueError, match="amp 'fp8'"):
        prepare_for_device(model, {**cfg, "amp": "fp8"}, "cpu")


def test_the_default_encoder_is_the_schemas_and_the_models_read_no_configuration():
    """The models' default encoder (a configuration without `encoder`) is a constant of their own,
    equal to the schema's default; importing them does not import dyncim.config (nor its YAML)."""
    import subprocess
    import sys

    from dyncim.config import TRAIN_DEFAULTS
    from dyncim.models.multimodal import DEFAULT_ENCODER, encoder_kind
    from tests.conftest import REPO
    assert DEFAULT_ENCODER == TRAIN_DEFAULTS["encoder"] == "auto"
    assert encoder_kind(5, {}) == "mlp" and encoder_kind((3, 8, 8), {}) == "resnet18"
    code = ("import sys; import dyncim.models, dyncim.models.multimodal, dyncim.models.encoders, "
            "dyncim.models.fusion, dyncim.models.resnet, dyncim.models.sequence; "
            "print(sorted(m for m in sys.modules if m in ('dyncim.config', 'yaml', 'jsonschema')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
