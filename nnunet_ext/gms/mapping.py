"""The GMS latent mapping model (docs/methods/gms.md), re-implemented from the published description.

Image latent (4 channels) -> mask latent(s), at the latent resolution throughout (no down- or up-sampling, so no
information is lost to pooling):

* a 3x3 input convolution to ``width`` channels;
* four "encoder" blocks of widths ``width * mult`` (mult 1, 2, 4, 4: 32/64/128/128 at width 32) and four
  "decoder" blocks that each take the concatenation of the previous block's output and the matching encoder
  output (the last one: the input convolution's output);
* every block = a residual block (GroupNorm(16) -> PReLU -> 3x3 conv, twice; a 1x1 convolution on the skip
  path when the width changes) followed by single-head spatial self-attention (GroupNorm, 1x1 q / k / v,
  softmax over positions scaled by 1/sqrt(C), 1x1 output projection, residual; computed with PyTorch's fused
  ``scaled_dot_product_attention``);
* a head (GroupNorm -> SiLU -> 3x3 conv, no bias) on each decoder block: ``level3`` (deepest, computed but not
  used by the loss), ``level2``, ``level1`` and the final ``out``.

With ``width`` 32 and 4 -> 4 channels it has 1,564,976 trainable parameters, as the authors' model.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(16, channels, eps=1e-6, affine=True)


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all positions of a 2D map, added to its input."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v, self.proj = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # out[:, :, i] = sum_j softmax_j(q_i . k_j / sqrt(c)) v_j: PyTorch's fused attention (the same maths as
        # softmax(q k^T / sqrt(c)) v with explicit matrices, without storing the hw x hw matrix for backward)
        q, k, v = (m(n).flatten(2).transpose(1, 2)[:, None] for m in (self.q, self.k, self.v))  # (b, 1, hw, c)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c)
        return x + self.proj(out[:, 0].transpose(1, 2).reshape(b, c, h, w))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(group_norm(cin), nn.PReLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  group_norm(cout), nn.PReLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class ResidualAttentionBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(ResidualBlock(cin, cout), SpatialSelfAttention(cout))


def _head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(group_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1, bias=False))


class LatentMappingModel(nn.Module):
    """Maps ``in_channels`` latent channels to ``out_channels`` at every head; see the module doc."""

    LEVELS = ("level3", "level2", "level1", "out")

    def __init__(self, in_channels: int = 4, out_channels: int = 4, width: int = 32,
                 mult: Sequence[int] = (1, 2, 4, 4)):
        super().__init__()
        w = [width * m for m in mult]
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.encoder = nn.ModuleList([ResidualAttentionBlock(cin, cout) for cin, cout in zip([width] + w[:-1], w)])
        # decoder block i takes cat(skip x_{3-i}, previous output) and returns the skip's width
        dec_in = [w[2] + w[3], w[1] + w[2], w[0] + w[1], width + w[0]]
        dec_out = [w[2], w[1], w[0], width]
        self.decoder = nn.ModuleList([ResidualAttentionBlock(cin, cout) for cin, cout in zip(dec_in, dec_out)])
        self.heads = nn.ModuleList([_head(c, out_channels) for c in dec_out])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, levels: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """The heads' outputs ``{level: latent}``; ``levels``: only these heads (default: all four). The decoder
        blocks all run either way (each feeds the next); a head that is not asked for is not computed."""
        levels = self.LEVELS if levels is None else tuple(levels)
        x0 = self.stem(z)
        enc = [x0]
        for block in self.encoder:
            enc.append(block(enc[-1]))  # x1 .. x4
        h = enc[4]
        out = {}
        for i, (block, head) in enumerate(zip(self.decoder, self.heads)):
            h = block(torch.cat((enc[3 - i], h), dim=1))
            if self.LEVELS[i] in levels:
                out[self.LEVELS[i]] = head(h)
        return out
