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

Implementation notes (same values, less memory traffic; these maps are the network's largest):
the saliency is computed from two reductions instead of a normalised copy; intra_fd needs one
gather of the map and no scatter in backward (see ``intra_fd``); when every student channel takes
part in inter_fd (C_s <= C_t, the usual case at full resolution) the random pairing is applied to the
detached teacher instead of the student, so the student needs no gather at all; the difference
computed in forward is reused as the gradient.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def _acc(x: torch.Tensor) -> torch.Tensor:
    """x in at least fp32 (fp16/bf16 under autocast are promoted; fp32/fp64 unchanged, no copy)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check(f: torch.Tensor) -> None:
    if f.ndim not in (4, 5):
        raise ValueError(f"expected a 2D (B,C,Y,X) or 3D (B,C,Z,Y,X) feature map, got shape {tuple(f.shape)}")


@torch.no_grad()
def channel_saliency(f: torch.Tensor) -> torch.Tensor:
    """Per-channel score of intra_fd: batch-and-space mean of the spatially L2-normalised map.

    ``mean_{b,p} f[b,c,p] / max(||f[b,c,:]||_2, 1e-12)`` (as ``F.normalize``), accumulated in at
    least fp32, without a normalised copy of f.
    """
    _check(f)
    flat = f.detach().flatten(2)
    acc = torch.promote_types(f.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays fp64
    total = flat.sum(2, dtype=acc)
    norm = torch.linalg.vector_norm(flat, dim=2, dtype=acc).clamp_min(1e-12)
    return (total / norm).mean(0) / flat.shape[2]


class _SquaredDistances(torch.autograd.Function):
    """``sum((f - other_k)^2) / denom_k`` for several targets of one map f, in one autograd node.

    Gradient w.r.t. f: ``sum_k g_k * grad_factor_k * 2 (f - other_k) / denom_k``; no gradient to the
    targets. Each ``other_k`` must be a fresh tensor owned by the caller (a gather of f or of a
    detached teacher): it is overwritten with the difference, which is kept for backward and then
    becomes the gradient in place. So a feature's intra_fd and inter_fd cost a handful of passes
    over the map and reach autograd as *one* gradient (one accumulation into the network's
    gradient instead of two). ``grad_factor`` is 2 when ``other`` is a channel permutation of f
    itself (intra_fd: every channel is on both sides, see ``intra_fd``) and 1 for a constant
    ``other`` (inter_fd, detached teacher).
    """

    @staticmethod
    def forward(ctx, f, spec, *others):
        diffs = [torch.sub(f, o, out=o) for o in others]
        ctx.save_for_backward(*diffs)
        ctx.scales = [2.0 * factor / denom for denom, factor in spec]
        ctx.used = False
        acc = torch.promote_types(f.dtype, torch.float32)
        return tuple(torch.linalg.vector_norm(d, dtype=acc).square() / denom for d, (denom, _) in zip(diffs, spec))

    @staticmethod
    def backward(ctx, *grads):
        if ctx.used:
            raise RuntimeError("feature distillation losses support a single backward pass (no retain_graph)")
        ctx.used = True
        diffs = ctx.saved_tensors
        grad = None
        for d, g, scale in zip(diffs, grads, ctx.scales):
            if g is None:
                continue
            w = (g * scale).to(d.dtype)
            grad = d.mul_(w) if grad is None else grad.addcmul_(d, w)  # accumulate in the first buffer
        return (grad, None) + (None,) * len(diffs)


class Workspace:
    """Map-sized buffers reused from one training step to the next.

    On CPU a fresh 100 MB tensor costs more (page faults) than the arithmetic done with it, and on
    CUDA reuse keeps the caching allocator out of the way. Buffers are handed out in call order;
    ``reset`` before each loss evaluation. A buffer is only rewritten in the next step's forward,
    after the previous backward has consumed it.
    """

    def __init__(self):
        self._buffers: list = []
        self._next = 0

    def reset(self) -> None:
        self._next = 0

    def take(self, shape, dtype, device) -> torch.Tensor:
        if self._next == len(self._buffers):
            self._buffers.append(None)
        b = self._buffers[self._next]
        if b is None or b.shape != shape or b.dtype != dtype or b.device != device:
            b = torch.empty(shape, dtype=dtype, device=device)
            self._buffers[self._next] = b
        self._next += 1
        return b


def _gather_channels(x: torch.Tensor, index: torch.Tensor, workspace: Optional[Workspace]) -> torch.Tensor:
    """``x.detach().index_select(1, index)`` into a workspace buffer when one is given."""
    x = x.detach()
    if workspace is None:
        return x.index_select(1, index)
    shape = (x.shape[0], index.numel()) + tuple(x.shape[2:])
    return torch.index_select(x, 1, index, out=workspace.take(shape, x.dtype, x.device))


def _intra_target(f: torch.Tensor, workspace: Optional[Workspace]):
    """(f[:, pi], (denom, 2.0)) of intra_fd, or None for a single channel (see ``intra_fd``)."""
    c = f.shape[1]
    h = c // 2
    if h == 0:
        return None
    order = torch.argsort(channel_saliency(f), descending=True)
    pi = torch.arange(c, device=f.device)
    pi[order[:h]] = order[h:2 * h]
    pi[order[h:2 * h]] = order[:h]
    n_pair_elements = f.numel() // c * h  # B * h * spatial
    return _gather_channels(f, pi, workspace), (2.0 * n_pair_elements, 2.0)


def intra_fd(f: torch.Tensor, workspace: Optional[Workspace] = None) -> torch.Tensor:
    """MSE between the more salient half of the channels and the less salient half (see module doc).

    With pairs (top_i, bottom_i), i < h, and the involution pi swapping top_i <-> bottom_i (an odd
    leftover channel maps to itself): ``sum_i ||f_top_i - f_bottom_i||^2 = 1/2 sum_c ||f_c - f_pi(c)||^2``
    and the gradient w.r.t. f_c is ``2 (f_c - f_pi(c)) / (B h P)``: one gather of f, no scatter.
    """
    _check(f)
    target = _intra_target(f, workspace)
    if target is None:
        return f.new_zeros((), dtype=torch.float32)
    return _SquaredDistances.apply(f, (target[1],), target[0])[0]


def pool_to(f: torch.Tensor, size: Tuple[int, ...]) -> torch.Tensor:
    """Adaptive average pooling of a 2D or 3D map to ``size`` (no-op if it already has it)."""
    if tuple(f.shape[2:]) == tuple(size):
        return f
    return (F.adaptive_avg_pool3d if f.ndim == 5 else F.adaptive_avg_pool2d)(f, size)


def pool_to_common_size(a: torch.Tensor, b: torch.Tensor):
    """Adaptive-average-pool both maps to the per-axis minimum of their spatial sizes."""
    size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:]))
    return pool_to(a, size), pool_to(b, size)


def _draw(n: int, k: int, device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """k of n indices without replacement; drawn on ``device`` unless a (CPU) generator is given."""
    if generator is None:
        return torch.randperm(n, device=device)[:k]
    return torch.randperm(n, generator=generator, device=generator.device)[:k].to(device, non_blocking=True)


def _inter_target(f_s: torch.Tensor, f_t: torch.Tensor, generator: Optional[torch.Generator],
                  pooled_teacher: Optional[Dict[Tuple[int, ...], torch.Tensor]], workspace: Optional[Workspace]):
    """inter_fd of one student: ``("fused", other, (denom, 1.0))`` when every student channel is
    paired (the teacher is reordered, the student used as is), else ``("loss", value)``."""
    if f_s.ndim != f_t.ndim:
        raise ValueError(f"student {tuple(f_s.shape)} and teacher {tuple(f_t.shape)} differ in dimensionality")
    size = tuple(min(x, y) for x, y in zip(f_s.shape[2:], f_t.shape[2:]))
    f_t = f_t.detach()
    if pooled_teacher is not None:
        if size not in pooled_teacher:
            pooled_teacher[size] = pool_to(f_t, size)
        t = pooled_teacher[size]
    else:
        t = pool_to(f_t, size)
    cs, ct = f_s.shape[1], t.shape[1]
    k = min(cs, ct)
    idx_s = _draw(cs, k, f_s.device, generator)
    idx_t = _draw(ct, k, t.device, generator)
    if k == cs and tuple(f_s.shape[2:]) == size:
        # every student channel is used: pair channel idx_s[j] with idx_t[j] by reordering the teacher
        partner = torch.empty_like(idx_t)
        partner[idx_s] = idx_t
        return "fused", _gather_channels(t, partner, workspace), (float(f_s.numel()), 1.0)
    s = pool_to(f_s, size)
    return "loss", F.mse_loss(_acc(s.index_select(1, idx_s)), _acc(t.index_select(1, idx_t)))


def inter_fd(f_s: torch.Tensor, f_t: torch.Tensor, generator: Optional[torch.Generator] = None,
             workspace: Optional[Workspace] = None) -> torch.Tensor:
    """MSE between random channels of the student map and of the detached teacher map."""
    _check(f_s)
    target = _inter_target(f_s, f_t, generator, None, workspace)
    if target[0] == "loss":
        return target[1]
    return _SquaredDistances.apply(f_s, (target[2],), target[1])[0]


def feature_distillation(features: Sequence[torch.Tensor], teacher: torch.Tensor, use_intra: bool = True,
                         use_inter: bool = True, generator: Optional[torch.Generator] = None,
                         workspace: Optional[Workspace] = None):
    """SelfReg-UNet's internal feature distillation over a group of features.

    Returns ``(intra, inter)``: intra_fd averaged over ``features`` (every tapped block output
    counts once) and inter_fd of every feature against ``teacher`` averaged. A feature that *is* the
    teacher tensor is left out of inter_fd (comparing the teacher with a detached copy of itself
    carries no signal). Disabled terms are 0. ``workspace`` (optional) recycles the map-sized
    buffers between training steps.
    """
    if workspace is not None:
        workspace.reset()
    zero = teacher.new_zeros((), dtype=torch.float32)
    cache: Dict[Tuple[int, ...], torch.Tensor] = {}
    intras, inters = [], []
    for f in features:
        _check(f)
        others, spec, kinds = [], [], []
        if use_intra:
            target = _intra_target(f, workspace)
            if target is None:
                intras.append(zero)
            else:
                others.append(target[0]), spec.append(target[1]), kinds.append("intra")
        if use_inter and f is not teacher:
            target = _inter_target(f, teacher, generator, cache, workspace)
            if target[0] == "loss":
                inters.append(target[1])
            else:
                others.append(target[1]), spec.append(target[2]), kinds.append("inter")
        if others:  # both terms of this feature in one autograd node: one gradient for f
            values = _SquaredDistances.apply(f, tuple(spec), *others)
            for kind, v in zip(kinds, values):
                (intras if kind == "intra" else inters).append(v)
    intra = torch.stack(intras).mean() if intras else zero
    inter = torch.stack(inters).mean() if inters else zero
    return intra, inter
