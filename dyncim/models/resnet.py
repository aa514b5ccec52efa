"""ResNet-18 encoders trained from scratch, as the audio-visual benchmarks use them (OGM-GE's recipe):
a 1-channel ResNet-18 for the spectrogram, a 3-channel one for the frames, pooled over time.
Written out here (about 50 lines) because torchvision's wheels do not install beside the pinned torch.
"""
from __future__ import annotations

import torch
from torch import nn


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


class ResNet18Encoder(nn.Module):
    """(B, C, H, W) -> (B, 512); with `frames`, (B, T, C, H, W) -> per-frame features averaged over T."""

    def __init__(self, in_channels: int, frames: bool = False):
        super().__init__()
        self.frames = frames
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_dim = 512

    def forward(self, x):
        if self.frames:
            B, T = x.shape[:2]
            x = x.flatten(0, 1)
        h = self.layers(self.stem(x)).mean((2, 3))
        return h.view(B, T, -1).mean(1) if self.frames else h
