"""STEGO's segmentation head (docs/methods/stego.md): a linear 1x1 convolution (C -> dim) plus a non-linear branch
(1x1 C -> C, ReLU, 1x1 C -> dim), summed; dim 70 (90 in the liver-ultrasound adaptation).

``Dropout2d(0.1)`` is drawn three times, independently, on the backbone features: once for the linear branch's
input, once for the non-linear branch's input and once for the features handed to the correlation loss (the
authors' code calls its dropout three times). ``forward`` returns ``(features for the loss, code)``; in evaluation
mode there is no dropout and the features are returned unchanged."""
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
        code = self.linear(self.dropout(feats))  # draw 1
        code = code + self.nonlinear(self.dropout(feats))  # draw 2
        return self.dropout(feats), code  # draw 3
