"""STEGO's segmentation head (METHODS.md section 3): ``Dropout2d(0.1)`` on the backbone features, then a linear
1x1 convolution (C -> dim) plus a non-linear branch (1x1 C -> C, ReLU, 1x1 C -> dim), summed; dim 70 (90 in the
liver-ultrasound adaptation). ``forward`` returns ``(dropped features, code)``: the correlation loss uses the
features after the same dropout, as STEGO does."""
from __future__ import annotations

import torch
from torch import nn


class STEGOHead(nn.Module):
    def __init__(self, in_channels: int, dim: int = 70, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.linear = nn.Conv2d(in_channels, dim, 1)
        self.nonlinear = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(),
                                       nn.Conv2d(in_channels, dim, 1))

    def forward(self, feats: torch.Tensor):
        f = self.dropout(feats)
        return f, self.linear(f) + self.nonlinear(f)
