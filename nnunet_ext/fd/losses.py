"""Internal feature distillation losses of SelfReg-UNet ("Rethinking UNet", MICCAI 2024).

Both work on 2D ``(B, C, Y, X)`` and 3D ``(B, C, Z, Y, X)`` features.

intra_fd(f)
    s_c = mean over batch and space of ``f / ||f_{b,c}||_2`` (L2 norm over the spatial positions
    of each sample and channel); channels are sorted by s_c, descending; with h = floor(C / 2),
    ``intra_fd = MSE(f[:, top h], f[:, next h])`` on the (unnormalised) features. For odd C the
    lowest-ranked channel is left out.

inter_fd(f_s, f_t)
    Both maps are adaptive-average-pooled to the smaller spatial size (per axis); k = min(C_s, C_t)
    channel indices are drawn at random without replacement from each; ``MSE(f_s[:, idx_s],
    f_t[:, idx_t].detach())``. The teacher never receives gradient.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def _spatial_dims(f: torch.Tensor):
    if f.ndim not in (4, 5):
        raise ValueError(f"expected a 2D (B,C,Y,X) or 3D (B,C,Z,Y,X) feature map, got shape {tuple(f.shape)}")
    return tuple(range(2, f.ndim))


def channel_saliency(f: torch.Tensor) -> torch.Tensor:
    """Per-channel score of intra_fd: batch-and-space mean of the spatially L2-normalised map."""
    _spatial_dims(f)
    fn = F.normalize(f.flatten(2), p=2, dim=2)  # L2 over all spatial positions of (b, c)
    return fn.mean(dim=(0, 2))


def intra_fd(f: torch.Tensor) -> torch.Tensor:
    """MSE between the more salient half of the channels and the less salient half (see module doc)."""
    _spatial_dims(f)
    c = f.shape[1]
    h = c // 2
    if h == 0:
        return f.new_zeros(())
    with torch.no_grad():
        order = torch.argsort(channel_saliency(f.float()), descending=True)
    return F.mse_loss(f.index_select(1, order[:h]), f.index_select(1, order[h:2 * h]))


def pool_to_common_size(a: torch.Tensor, b: torch.Tensor):
    """Adaptive-average-pool both maps to the per-axis minimum of their spatial sizes."""
    size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:]))
    pool = F.adaptive_avg_pool3d if a.ndim == 5 else F.adaptive_avg_pool2d
    if tuple(a.shape[2:]) != size:
        a = pool(a, size)
    if tuple(b.shape[2:]) != size:
        b = pool(b, size)
    return a, b


def inter_fd(f_s: torch.Tensor, f_t: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """MSE between random channels of the student map and of the detached teacher map."""
    _spatial_dims(f_s)
    if f_s.ndim != f_t.ndim:
        raise ValueError(f"student {tuple(f_s.shape)} and teacher {tuple(f_t.shape)} differ in dimensionality")
    f_t = f_t.detach()
    f_s, f_t = pool_to_common_size(f_s, f_t)
    k = min(f_s.shape[1], f_t.shape[1])
    idx_s = torch.randperm(f_s.shape[1], generator=generator)[:k].to(f_s.device)
    idx_t = torch.randperm(f_t.shape[1], generator=generator)[:k].to(f_t.device)
    return F.mse_loss(f_s.index_select(1, idx_s), f_t.index_select(1, idx_t))


def feature_distillation(features: Sequence[torch.Tensor], teacher: torch.Tensor, use_intra: bool = True,
                         use_inter: bool = True, generator: Optional[torch.Generator] = None):
    """SelfReg-UNet's internal feature distillation over a group of features.

    Returns ``(intra, inter)``: intra_fd averaged over ``features`` and inter_fd of every feature
    against ``teacher`` averaged. A feature that *is* the teacher tensor is left out of inter_fd
    (comparing the teacher with a detached copy of itself carries no signal). Disabled terms are 0.
    """
    zero = teacher.new_zeros((), dtype=torch.float32)
    intra = torch.stack([intra_fd(f).float() for f in features]).mean() if (use_intra and features) else zero
    students = [f for f in features if f is not teacher]
    inter = torch.stack([inter_fd(f, teacher, generator).float() for f in students]).mean() \
        if (use_inter and students) else zero
    return intra, inter
