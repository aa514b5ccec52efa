import pytest
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


# --- the encoders' stage API (dyncim/models/encoders.py): stage by stage = the plain forward ------

def _stagewise(enc, x, between=None):
    """encode_stages written out with the API's three calls (what encode_by_stages does)."""
    h = enc.stage_input(x)
    seen = []
    for k in range(len(enc.stage_dims)):
        h = enc.stage(k, h)
        seen.append(tuple(h.shape))
        if between is not None:
            h = between(k, h)
    return enc.stage_output(h), seen


def test_mlp_stages_are_its_linear_relu_blocks_and_equal_the_forward_exactly():
    from dyncim.models.encoders import MLPEncoder
    for dropout, train in ((0.0, False), (0.3, True)):
        torch.manual_seed(0)
        enc = MLPEncoder(5, [8, 6, 4], dropout).train(train)
        assert enc.stage_dims == (8, 6, 4)
        x = torch.randn(7, 5)
        torch.manual_seed(1)
        plain = enc(x)
        torch.manual_seed(1)    # the same dropout draws: the same operations in the same order
        staged, shapes = _stagewise(enc, x)
        torch.manual_seed(1)
        assert torch.equal(staged, plain) and torch.equal(enc.encode_stages(x), plain)
        assert shapes == [(7, 8), (7, 6), (7, 4)]
    # an injection between stages reaches the next stage: doubling stage 0's output of a ReLU net
    enc = MLPEncoder(5, [8, 6], 0.0)
    x = torch.randn(3, 5)
    two = enc.encode_stages(x, lambda k, h: 2 * h if k == 0 else h)
    assert torch.allclose(two, enc.net[3](enc.net[2](2 * enc.net[1](enc.net[0](x)))))
    assert not torch.allclose(two, enc(x))


def test_resnet_stages_equal_the_forward_exactly_for_images_and_frame_stacks():
    from dyncim.models.resnet import ResNet18Encoder
    for frames, x_shape, want in ((False, (2, 1, 40, 36), [(2, 4, 10, 9), (2, 8, 5, 5), (2, 16, 3, 3), (2, 32, 2, 2)]),
                                  (True, (2, 3, 3, 32, 32), [(2, 4, 3, 8, 8), (2, 8, 3, 4, 4), (2, 16, 3, 2, 2),
                                                             (2, 32, 3, 1, 1)])):
        torch.manual_seed(0)
        enc = ResNet18Encoder(x_shape[-3], frames=frames, width=4).train()   # batch statistics
        assert enc.stage_dims == (4, 8, 16, 32)
        x = torch.randn(*x_shape)
        plain = enc(x)
        staged, shapes = _stagewise(enc, x)
        assert torch.equal(staged, plain)
        assert shapes == want   # sample-major: (B, C, H, W), frames (B, C, T, H, W)
        (plain.square().sum()).backward()
        g_plain = [p.grad.clone() for p in enc.parameters()]
        enc.zero_grad()
        enc.encode_stages(x).square().sum().backward()
        assert all(torch.equal(p.grad, g) for p, g in zip(enc.parameters(), g_plain))
    # the (B, C, T, H, W) stage output of a frame stack is frame t's own map at [:, :, t]
    torch.manual_seed(0)
    enc = ResNet18Encoder(3, frames=True, width=4).eval()
    x = torch.randn(2, 3, 3, 32, 32)
    h = enc.stage(0, enc.stage_input(x))
    single = ResNet18Encoder(3, width=4).eval()
    single.load_state_dict(enc.state_dict())
    assert torch.allclose(h[:, :, 1], single.stage(0, single.stage_input(x[:, 1])), atol=1e-6)


def test_stages_under_bf16_autocast_match_the_autocast_forward():
    from dyncim.models.encoders import MLPEncoder
    from dyncim.models.resnet import ResNet18Encoder
    torch.manual_seed(0)
    for enc, x in ((MLPEncoder(5, [8, 6]), torch.randn(4, 5)),
                   (ResNet18Encoder(1, width=4).eval(), torch.randn(2, 1, 32, 32))):
        enc.amp = torch.bfloat16
        plain = enc(x)
        assert plain.dtype == torch.float32
        assert enc.stage(0, enc.stage_input(x)).dtype == torch.bfloat16   # stages keep autocast's dtype
        assert torch.equal(enc.encode_stages(x), plain)


def test_the_model_runs_stage_by_stage_only_with_a_stage_mixer():
    from dyncim.models.multimodal import STAGE_MIXER, encode_by_stages

    class Identity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, k, hs):
            self.calls.append((k, [tuple(h.shape) for h in hs]))
            return hs

    torch.manual_seed(0)
    model = build_model([5, 3, 4], 6, "sum", {"hidden": [8, 6], "dropout": 0.0})
    xs = [torch.randn(7, d) for d in (5, 3, 4)]
    plain = model(xs)
    mixer = Identity()
    model.extra[STAGE_MIXER] = mixer    # every forward pass of the model now calls it
    mixed = model(xs)
    assert torch.equal(mixed.fused, plain.fused) and all(map(torch.equal, mixed.feats, plain.feats))
    assert mixer.calls == [(0, [(7, 8)] * 3), (1, [(7, 6)] * 3)]
    # an explicit `between` takes its place
    twice = model(xs, between=lambda k, hs: [2 * h for h in hs])
    assert not torch.allclose(twice.fused, plain.fused) and len(mixer.calls) == 2
    # encoders without stages (the sequence encoders), or with different numbers of them
    from dyncim.models.sequence import SequenceEncoder
    assert SequenceEncoder(4, 8).stage_dims == () and SequenceEncoder(4, 8, kind="lstm").stage_dims == ()
    with pytest.raises(ValueError, match=r"the same number of stages; theirs: \[2, 0\]"):
        encode_by_stages([model.encoders[0], SequenceEncoder(4, 8)], [xs[0], torch.randn(7, 2, 4)],
                         lambda k, hs: hs)
