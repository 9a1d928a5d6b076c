"""GMS's losses (docs/methods/gms.md), plain functions on tensors.

GMS trains its latent mapping model with two losses per head ``h``, weights 1 and 1, **summed** over the three
heads the loss uses (the final ``out`` and the two levels above it, ``level1`` and ``level2``; the deepest head,
``level3``, is not used)::

    L = sum_h  MSE(z_h, z_mask)  +  sum_h  (1 - softDice(D(z_h), mask))

* ``z_h``: the head's predicted mask latent; ``z_mask``: the frozen VAE's latent (posterior mean, scaled) of the
  true mask drawn as a grey image; ``latent_mse``.
* ``D(z_h)``: the head decoded by the frozen VAE decoder into a probability map (gradients flow through the
  decoder, whose weights stay frozen); ``softDice``: MONAI-style soft Dice on that map, no threshold (0.5 only at
  evaluation); ``heads_soft_dice``, ``soft_dice_loss``.

Multi-class (GMS itself is binary): one mask latent and one probability map per foreground class; the masks are
``onehot_foreground(target)``. Latents and maps in half precision (autocast) are compared in float32.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Half precision (autocast) -> float32; float32 and float64 stay as they are."""
    return t.float() if t.element_size() < 4 else t


def onehot_foreground(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(b, 1, H, W) labels -> (b, K, H, W) binary masks of the foreground classes 1..K (K = num_classes - 1)."""
    return F.one_hot(target[:, 0].long().clamp_min(0), num_classes).movedim(-1, 1)[:, 1:].float()


def soft_dice_loss(p: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)`` per sample and class (sums over space; no threshold,
    MONAI style), averaged over samples and classes."""
    dims = tuple(range(2, p.ndim))
    inter = (p * target).sum(dims)
    return (1 - (2 * inter + eps) / (p.sum(dims) + target.sum(dims) + eps)).mean()


def heads_soft_dice(probs: Mapping[str, torch.Tensor], onehot_fg: torch.Tensor,
                    levels: Sequence[str]) -> torch.Tensor:
    """GMS's Dice part: ``soft_dice_loss`` of each head's decoded probabilities (b, K, H, W) against the class
    masks, summed over the heads ``levels`` (weight 1 each)."""
    return sum(soft_dice_loss(probs[lv], onehot_fg) for lv in levels)


def latent_mse(latents: Mapping[str, torch.Tensor], mask_latent: torch.Tensor,
               levels: Sequence[str]) -> torch.Tensor:
    """GMS's latent part: ``MSE(z_h, z_mask)`` (mean over all elements) summed over the heads ``levels`` (weight 1
    each), in at least float32."""
    z = at_least_float32(mask_latent)
    return sum(F.mse_loss(at_least_float32(latents[lv]), z) for lv in levels)
