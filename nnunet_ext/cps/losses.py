"""The cross pseudo supervision loss (Chen et al., CVPR 2021; docs/methods/cps.md).

For networks A and B with logits ``p_a``, ``p_b`` on the same (labelled and unlabelled) patches::

    cps_a = CE(p_a, argmax(p_b))      cps_b = CE(p_b, argmax(p_a))

each a cross-entropy averaged over all voxels of the batch; the argmax pseudo-labels carry no gradient, so
``cps_a`` trains A only and ``cps_b`` trains B only. The two directions enter the total as
``lambda * (cps_a + cps_b)``. This is the intended loss: no class shift between pseudo-targets and
supervised targets (the shift of the FLARE22 CSSN code is a bug, docs/methods/cps.md).

Deep supervision: each output scale gets the CE against the other network's argmax *at that scale*,
weighted with nnU-Net's deep-supervision weights (those of the segmentation loss), so the auxiliary outputs
are supervised like nnU-Net supervises them with labels.

With CutMix (``nnunet_ext.cps.cutmix``) the pseudo-labels are not the argmax of the logits being trained but the
mixed argmax of each network's predictions on the two unmixed images; ``pseudo_label_losses`` takes them as given
(hard labels per scale) and is otherwise the same loss.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from nnunet_ext.core.labels import class_argmax


def _scale_weights(n: int, ds_weights: Sequence[float] | None):
    """nnU-Net's deep-supervision weights, or only the full-resolution output when there are none."""
    return list(ds_weights) if ds_weights is not None else [1.0] + [0.0] * (n - 1)


def pseudo_label_ce(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Mean voxel cross-entropy of ``logits`` against ``argmax(other_logits)`` (no gradient to ``other``)."""
    target = class_argmax(other_logits.detach(), 1)
    return F.cross_entropy(logits.float(), target)


def cps_losses(out_a, out_b, ds_weights: Sequence[float] | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(cps_a, cps_b)`` for two outputs (tensors, or deep-supervision lists with ``ds_weights``)."""
    if not isinstance(out_a, (list, tuple)):
        return pseudo_label_ce(out_a, out_b), pseudo_label_ce(out_b, out_a)
    weights = _scale_weights(len(out_a), ds_weights)
    loss_a = loss_b = 0.0
    for w, a, b in zip(weights, out_a, out_b):
        if w == 0:
            continue
        loss_a = loss_a + w * pseudo_label_ce(a, b)
        loss_b = loss_b + w * pseudo_label_ce(b, a)
    return loss_a, loss_b


def pseudo_label_losses(out_a, out_b, labels_for_a, labels_for_b,
                        ds_weights: Sequence[float] | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(CE(out_a, labels_for_a), CE(out_b, labels_for_b))`` against given hard pseudo-labels (long tensors of
    class indices, ``(b, *spatial)``; lists, one per deep-supervision scale, for list outputs with ``ds_weights``).
    Each CE is averaged over all voxels of its batch; the labels carry no gradient."""
    if not isinstance(out_a, (list, tuple)):
        return (F.cross_entropy(out_a.float(), labels_for_a.detach()),
                F.cross_entropy(out_b.float(), labels_for_b.detach()))
    loss_a = loss_b = 0.0
    for w, a, b, la, lb in zip(_scale_weights(len(out_a), ds_weights), out_a, out_b, labels_for_a, labels_for_b):
        if w == 0:
            continue
        loss_a = loss_a + w * F.cross_entropy(a.float(), la.detach())
        loss_b = loss_b + w * F.cross_entropy(b.float(), lb.detach())
    return loss_a, loss_b


def sigmoid_rampup(epoch: int, rampup_epochs: int) -> float:
    """exp(-5 (1 - t)^2), t = epoch / rampup_epochs clipped to [0, 1] (Laine & Aila 2017); 1 without ramp-up."""
    if rampup_epochs <= 0:
        return 1.0
    t = min(max(epoch / rampup_epochs, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
