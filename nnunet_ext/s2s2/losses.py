"""S2S2's loss maths (docs/methods/s2s2.md): the consistency of two forward passes (the real image and its copy).

``cosine_consistency``: ``1 - cos`` of the channel vectors at every position, then a plain mean over batch and
positions::

    L(f0, f1) = mean_{b, x} ( 1 - <f0[b, :, x], f1[b, :, x]> / max(|f0[b, :, x]| |f1[b, :, x]|, eps) ),  eps = 1e-8

Symmetric, in [0, 2], 0 for identical features; no detach on either side (gradients reach both passes).
Not ``-cos``, not MSE, not the cosine of whole flattened maps. S2S2 puts it on the deepest encoder feature and on
the last decoder feature (the segmentation head's input), weights 1.0 / 1.0 in the paper's TransUNet setting
(``term.S2S2Term``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_consistency(f0: torch.Tensor, f1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``mean(1 - cosine similarity over channels)`` of two feature maps (b, C, *spatial)."""
    return (1 - F.cosine_similarity(f0.float(), f1.float(), dim=1, eps=eps)).mean()
