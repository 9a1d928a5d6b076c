"""Internal feature distillation losses of SelfReg-UNet ("Rethinking UNet", MICCAI 2024).

Both work on 2D ``(B, C, Y, X)`` and 3D ``(B, C, Z, Y, X)`` features and are written the plain way
(``index_select`` + ``mse_loss``, gradients by autograd), so a logged value is the direct formula.

intra_fd(f)
    s_c = mean over batch and space of ``f / ||f_{b,c}||_2`` (L2 norm over the spatial positions
    of each sample and channel); channels are sorted by s_c, descending; with h = floor(C / 2),
    ``intra_fd = MSE(f[:, top h], f[:, next h])`` on the (unnormalised) features. For odd C the
    lowest-ranked channel is left out.

inter_fd(f_s, f_t)
    Both maps are adaptive-average-pooled to the smaller spatial size (per axis); k = min(C_s, C_t)
    channel indices are drawn at random without replacement from each; ``MSE(f_s[:, idx_s],
    f_t[:, idx_t].detach())``. The teacher never receives gradient.

selfreg_loss(groups, teacher)
    The authors' composition (see ``nnunet_ext.fd.term``): ``intra = sum over intra groups of the
    group's mean intra_fd`` and ``inter = sum over inter groups of the group's mean inter_fd``; the
    trainer adds ``lambda * (intra + inter)``.

Why the plain formulation: with the authors' feature selection (stage outputs, full-resolution
encoder stage and the teacher left out of intra) the students are at most half the input
resolution, and the whole term costs a few percent of a training step (``benchmarks/bench_fd.py``).
Mean squared errors are accumulated in at least fp32 (maps under autocast may be fp16/bf16).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def _check(f: torch.Tensor) -> None:
    if f.ndim not in (4, 5):
        raise ValueError(f"expected a 2D (B,C,Y,X) or 3D (B,C,Z,Y,X) feature map, got shape {tuple(f.shape)}")


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean((a - b)^2)`` in at least fp32 (the difference is formed first: exact for near-equal maps)."""
    acc = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return F.mse_loss(a.to(acc), b.to(acc))


@torch.no_grad()
def channel_saliency(f: torch.Tensor) -> torch.Tensor:
    """Ranking score of intra_fd: ``s_c = mean_{b,p} f[b,c,p] / max(||f[b,c,:]||_2, 1e-12)``, in at least fp32."""
    _check(f)
    flat = f.detach().flatten(2)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
    return F.normalize(flat, dim=2).mean(dim=(0, 2))


def intra_fd(f: torch.Tensor) -> torch.Tensor:
    """MSE between the more salient half of the channels and the less salient half (see module doc)."""
    _check(f)
    h = f.shape[1] // 2
    if h == 0:
        return f.new_zeros((), dtype=torch.float32)
    order = torch.argsort(channel_saliency(f), descending=True)
    return _mse(f.index_select(1, order[:h]), f.index_select(1, order[h:2 * h]))


def _draw(n: int, k: int, device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """k of n indices without replacement; drawn on ``device`` unless a (CPU) generator is given."""
    if generator is None:
        return torch.randperm(n, device=device)[:k]
    return torch.randperm(n, generator=generator, device=generator.device)[:k].to(device, non_blocking=True)


def pool_to(f: torch.Tensor, size: Tuple[int, ...]) -> torch.Tensor:
    """Adaptive average pooling of a 2D or 3D map to ``size`` (no-op if it already has it)."""
    if tuple(f.shape[2:]) == tuple(size):
        return f
    return (F.adaptive_avg_pool3d if f.ndim == 5 else F.adaptive_avg_pool2d)(f, size)


def pool_to_common_size(a: torch.Tensor, b: torch.Tensor):
    """Adaptive-average-pool both maps to the per-axis minimum of their spatial sizes."""
    size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:]))
    return pool_to(a, size), pool_to(b, size)


def inter_fd(f_s: torch.Tensor, f_t: torch.Tensor, generator: Optional[torch.Generator] = None,
             pooled_teachers: Optional[Dict[tuple, torch.Tensor]] = None) -> torch.Tensor:
    """MSE between random channels of the student map and of the detached teacher map.

    ``pooled_teachers`` (optional) caches the teacher pooled to each size, for several students.
    """
    _check(f_s)
    _check(f_t)
    if f_s.ndim != f_t.ndim:
        raise ValueError(f"student {tuple(f_s.shape)} and teacher {tuple(f_t.shape)} differ in dimensionality")
    size = tuple(min(x, y) for x, y in zip(f_s.shape[2:], f_t.shape[2:]))
    if pooled_teachers is None:
        pooled_teachers = {}
    if size not in pooled_teachers:
        with torch.no_grad():
            pooled_teachers[size] = pool_to(f_t.detach(), size)
    t = pooled_teachers[size]
    s = pool_to(f_s, size)
    k = min(s.shape[1], t.shape[1])
    idx_s = _draw(s.shape[1], k, s.device, generator)
    idx_t = _draw(t.shape[1], k, t.device, generator)
    return _mse(s.index_select(1, idx_s), t.index_select(1, idx_t))


def _group_mean(values) -> Optional[torch.Tensor]:
    return torch.stack(values).mean() if values else None


def selfreg_loss(intra_groups: Sequence[Sequence[torch.Tensor]], inter_groups: Sequence[Sequence[torch.Tensor]],
                 teacher: torch.Tensor, generator: Optional[torch.Generator] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """SelfReg-UNet's composition: ``(sum of per-group mean intra_fd, sum of per-group mean inter_fd)``.

    ``intra_groups``: groups of maps that get intra_fd (authors' CNN U-Net: [encoder students],
    [decoder students]); ``inter_groups``: groups of students distilled from ``teacher`` (authors:
    one group of all students). Empty groups are left out. inter_fd draws its channels in group
    order, map by map, from ``generator`` (or torch's global generator).
    """
    _check(teacher)
    pooled: Dict[tuple, torch.Tensor] = {}
    zero = teacher.new_zeros((), dtype=torch.float32)
    intra = [m for m in (_group_mean([intra_fd(f) for f in g]) for g in intra_groups) if m is not None]
    inter = [m for m in (_group_mean([inter_fd(f, teacher, generator, pooled) for f in g]) for g in inter_groups)
             if m is not None]
    return (torch.stack(intra).sum() if intra else zero), (torch.stack(inter).sum() if inter else zero)
