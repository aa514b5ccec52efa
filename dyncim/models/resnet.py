"""ResNet-18 encoders trained from scratch, as the audio-visual benchmarks use them (OGM-GE's recipe,
github.com/GeWu-Lab/OGM-GE_CVPR2022 `models/backbone.py` and `basic_model.py`): a 1-channel
ResNet-18 for the spectrogram (B, 1, F, T), a 3-channel one for the frames (B, T, 3, H, W), run on
every frame and average-pooled over time and space (their `adaptive_avg_pool3d` of the visual
feature map), both without a classifier; convolutions initialised as there (Kaiming normal,
fan_out, ReLU gain), batch-norm weights ~ N(1, 0.02) and biases 0.
Written out here (about 50 lines) because torchvision's wheels do not install beside the pinned torch.
`width` (ours) scales every stage's channel count (64 = ResNet-18; tests use a tiny one).
On CUDA the input is made channels-last (the conv kernels' fast layout; the model's weights are
converted by `multimodal.prepare_for_device`).
Stages (the encoders' stage API, dyncim/models/encoders.py): ResNet-18's four, the stem with the
first; outputs (B, C_k, H, W), or (B, C_k, T, H, W) for frame stacks (a view of the per-frame maps,
no copy), C_k = width x (1, 2, 4, 8).
"""
from __future__ import annotations

import torch
from torch import nn

from .encoders import Encoder


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet18Encoder(Encoder):
    """(B, C, H, W) -> (B, 8 * width); with `frames`, (B, T, C, H, W) -> per-frame features averaged over T."""

    def __init__(self, in_channels: int, frames: bool = False, width: int = 64):
        super().__init__()
        self.frames = frames
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], width
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            cout = width * mult
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin
        self.stage_dims = tuple(width * mult for mult in (1, 2, 4, 8))
        for m in self.modules():  # OGM-GE's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, mean=1, std=0.02)
                nn.init.constant_(m.bias, 0)

    def encode(self, x):
        if self.frames:
            B, T = x.shape[:2]
            x = x.flatten(0, 1)
        if x.is_cuda:  # one copy into the conv kernels' layout (and autocast's dtype)
            x = x.to(dtype=self.amp or x.dtype, memory_format=torch.channels_last)
        h = self.layers(self.stem(x)).mean((2, 3))
        return h.view(B, T, -1).mean(1) if self.frames else h

    # --- stages: what `encode` does, split at the four stages (the same operations) ----------
    def _stage_input(self, x):
        if self.frames:
            B, T = x.shape[:2]
            x = x.flatten(0, 1)
        if x.is_cuda:
            x = x.to(dtype=self.amp or x.dtype, memory_format=torch.channels_last)
        return self._sample_major(x, B, T) if self.frames else x

    def _stage(self, k, h):
        if self.frames:
            B, T = h.shape[0], h.shape[2]
            h = self._frame_major(h)
        if k == 0:
            h = self.stem(h)
        h = self.layers[2 * k + 1](self.layers[2 * k](h))
        return self._sample_major(h, B, T) if self.frames else h

    def _stage_output(self, h):
        if self.frames:
            B, T = h.shape[0], h.shape[2]
            h = self._frame_major(h)
        h = h.mean((2, 3))
        return h.view(B, T, -1).mean(1) if self.frames else h

    @staticmethod
    def _sample_major(h, B: int, T: int):
        """(B * T, C, H, W) per-frame maps -> a (B, C, T, H, W) view."""
        return h.view(B, T, *h.shape[1:]).transpose(1, 2)

    @staticmethod
    def _frame_major(h):
        """(B, C, T, H, W) -> (B * T, C, H, W) (a view when h is one of _sample_major's)."""
        return h.transpose(1, 2).flatten(0, 1)
