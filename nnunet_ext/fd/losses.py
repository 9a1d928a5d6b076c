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

Implementation (same values and gradients as the plain index_select + mse_loss formulation, which
a test checks; the tapped maps are the network's largest tensors, so memory traffic is the cost):

- values from channel statistics: with n_c = ||f_c||^2 (over batch and space, a by-product of the
  saliency pass) a pair's squared distance is ``n_a + n_b - 2 <f_a, g_b>``; only the k dot
  products of paired channel slices are computed. Nothing map-sized is gathered or stored.
- gradients in closed form: d intra / d f_c = 2 (f_c - f_pi(c)) / (B h P), with pi the involution
  swapping top_i and bottom_i (a leftover odd channel maps to itself and gets 0), and
  d inter / d f_{s_j} = 2 (f_{s_j} - t_{t_j}) / (B k P). They are written into one buffer per map
  with one multiply and one ``index_add_`` per term.
- every map of a training step goes through one autograd node, so the two upstream gradients are
  read once per step (one host sync on CUDA, and one in forward for the channel indices).

Caveat of the closed form: a logged value is computed as a difference of sums, so when two paired
channels are nearly equal it carries an absolute rounding error of about 1e-7 of their squared
norms (the gradient is exact).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """At least fp32 for accumulation (fp16/bf16 under autocast are promoted, fp64 stays fp64)."""
    return torch.promote_types(x.dtype, torch.float32)


def _check(f: torch.Tensor) -> None:
    if f.ndim not in (4, 5):
        raise ValueError(f"expected a 2D (B,C,Y,X) or 3D (B,C,Z,Y,X) feature map, got shape {tuple(f.shape)}")


@torch.no_grad()
def channel_statistics(f: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(saliency, squared_norm)`` per channel, in at least fp32.

    saliency_c = ``mean_{b,p} f[b,c,p] / max(||f[b,c,:]||_2, 1e-12)`` (as ``F.normalize``), the
    ranking score of intra_fd; squared_norm_c = ``sum_{b,p} f[b,c,p]^2``. Two reductions, no copy.
    """
    _check(f)
    flat = f.detach().flatten(2)
    acc = _acc_dtype(f)
    total = flat.sum(2, dtype=acc)
    norm = torch.linalg.vector_norm(flat, dim=2, dtype=acc)
    saliency = (total / norm.clamp_min(1e-12)).mean(0) / flat.shape[2]
    return saliency, norm.square().sum(0)


def channel_saliency(f: torch.Tensor) -> torch.Tensor:
    """Per-channel score of intra_fd (see ``channel_statistics``)."""
    return channel_statistics(f)[0]


def _pair_dots(x: torch.Tensor, y: torch.Tensor, a: Sequence[int], b: Sequence[int]) -> torch.Tensor:
    """``sum_{batch, space} x[:, a_j] * y[:, b_j]`` for every j, in at least fp32; shape (len(a),).

    Works on channel slices (views for contiguous maps), so nothing map-sized is gathered.
    """
    n, acc = x.shape[0], _acc_dtype(x)
    dots = [torch.linalg.vecdot(x[:, i].reshape(n, -1).to(acc), y[:, j].reshape(n, -1).to(acc)).sum()
            for i, j in zip(a, b)]
    return torch.stack(dots) if dots else x.new_zeros(0, dtype=acc)


class Workspace:
    """Map-sized gradient buffers reused from one training step to the next (use it on CPU).

    On CPU a fresh 100 MB tensor costs more (page faults) than the arithmetic done with it; CUDA's
    caching allocator already recycles memory, so there no workspace is needed. Buffers are handed
    out in call order; ``reset`` before each loss evaluation. A buffer is written in backward and
    handed to autograd as the gradient of a (non-leaf) feature map; autograd adds the rest of that
    map's gradient into it and consumes it within the same backward pass. So a gradient of a tapped
    map must not be kept beyond its backward pass (e.g. by a tensor hook) while a workspace is used.
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


@dataclass
class _Intra:
    """intra_fd of one map: pairs (top_i, bottom_i) and the involution pi swapping them."""

    slot: int
    pi: torch.Tensor
    top: torch.Tensor
    bottom: torch.Tensor
    denom: float  # B * h * P
    squared_norm: torch.Tensor
    host: Tuple[List[int], List[int]] = field(default_factory=lambda: ([], []))


@dataclass
class _Inter:
    """inter_fd of one map against the detached teacher pooled to the map's size."""

    slot: int
    teacher: torch.Tensor
    teacher_squared_norm: torch.Tensor
    idx_s: torch.Tensor
    idx_t: torch.Tensor
    denom: float  # B * k * P
    squared_norm: torch.Tensor
    host: Tuple[List[int], List[int]] = field(default_factory=lambda: ([], []))


@dataclass
class _Item:
    """One differentiable map and the terms computed on it (``x`` is dropped once it is saved)."""

    x: Optional[torch.Tensor]
    intra: Optional[_Intra] = None
    inter: Optional[_Inter] = None
    buffer: Optional[torch.Tensor] = None


class _FeatureDistillationFunction(torch.autograd.Function):
    """All maps of a step in one node: returns (intra values, inter values), gradients in closed form."""

    @staticmethod
    def forward(ctx, items: List[_Item], n_intra: int, n_inter: int, *maps):
        acc = torch.float32 if not maps else _acc_dtype(maps[0])
        device = maps[0].device if maps else torch.device("cpu")
        intra_vals = [torch.zeros((), dtype=acc, device=device)] * n_intra
        inter_vals = [torch.zeros((), dtype=acc, device=device)] * n_inter
        for it in items:
            if it.intra is not None and it.intra.host[0]:
                t = it.intra
                sq = t.squared_norm.index_select(0, t.top).sum() + t.squared_norm.index_select(0, t.bottom).sum()
                dots = _pair_dots(it.x, it.x, *t.host).sum()
                intra_vals[t.slot] = ((sq - 2 * dots) / t.denom).clamp_min(0)
            if it.inter is not None:
                t = it.inter
                sq = t.squared_norm.index_select(0, t.idx_s).sum() + t.teacher_squared_norm.index_select(0, t.idx_t).sum()
                dots = _pair_dots(it.x, t.teacher, *t.host).sum()
                inter_vals[t.slot] = ((sq - 2 * dots) / t.denom).clamp_min(0)
        ctx.save_for_backward(*maps)  # autograd's version check guards against in-place changes
        for it in items:
            it.x = None
        ctx.items = items
        return torch.stack(intra_vals) if n_intra else torch.zeros(0, dtype=acc, device=device), \
            torch.stack(inter_vals) if n_inter else torch.zeros(0, dtype=acc, device=device)

    @staticmethod
    def backward(ctx, grad_intra, grad_inter):
        # the upstream gradients, read once for all maps (one host sync per backward on CUDA)
        g_intra = grad_intra.tolist() if grad_intra is not None and grad_intra.numel() else []
        g_inter = grad_inter.tolist() if grad_inter is not None and grad_inter.numel() else []
        grads = []
        for i, (it, x) in enumerate(zip(ctx.items, ctx.saved_tensors)):
            if not ctx.needs_input_grad[3 + i]:
                grads.append(None)
                continue
            alpha = 2.0 * g_intra[it.intra.slot] / it.intra.denom if it.intra is not None and g_intra else 0.0
            beta = 2.0 * g_inter[it.inter.slot] / it.inter.denom if it.inter is not None and g_inter else 0.0
            if alpha == 0.0 and beta == 0.0:
                grads.append(None)
                continue
            # per-channel coefficient of x: alpha on every channel (a leftover odd channel is its own
            # partner under pi and is set exactly below), plus beta on the channels drawn for inter_fd;
            # the product is formed in fp32 and rounded once when the map is fp16/bf16
            coef = torch.full((x.shape[1],), alpha, dtype=_acc_dtype(x), device=x.device)
            if beta:
                coef.index_fill_(0, it.inter.idx_s, alpha + beta)
            coef = coef.view((1, -1) + (1,) * (x.ndim - 2))
            g = torch.mul(x, coef, out=it.buffer) if it.buffer is not None else torch.mul(x, coef).to(x.dtype)
            if alpha:
                g.index_add_(1, it.intra.pi, x, alpha=-alpha)  # g_c -= alpha x_pi(c)
            if beta:
                t = it.inter
                teacher = t.teacher.to(x.dtype)
                if t.idx_t.numel() == teacher.shape[1]:  # every teacher channel is used: no gather
                    target = torch.empty_like(t.idx_s)
                    target[t.idx_t] = t.idx_s
                    g.index_add_(1, target, teacher, alpha=-beta)
                else:
                    g.index_add_(1, t.idx_s, teacher.index_select(1, t.idx_t), alpha=-beta)
            if alpha and x.shape[1] % 2:
                _exact_leftover_channel(g, x, it, beta)
            # a workspace buffer goes to autograd as an alias with a storage of its own, so autograd may
            # accumulate the network's gradient into it in place (no fresh map-sized allocation)
            grads.append(torch.from_dlpack(g) if it.buffer is not None else g)
        return (None, None, None) + tuple(grads)


def _exact_leftover_channel(g: torch.Tensor, x: torch.Tensor, it: _Item, beta: float) -> None:
    """The odd channel left out of intra_fd got ``alpha x_c - alpha x_c`` (not exactly 0 with fused
    multiply-add); set it to its exact gradient: 0, or its inter_fd part alone."""
    c = (set(range(x.shape[1])) - set(it.intra.host[0]) - set(it.intra.host[1])).pop()
    g_c = g[:, c]
    if beta and c in it.inter.host[0]:
        t_c = it.inter.host[1][it.inter.host[0].index(c)]
        g_c.copy_((x[:, c] - it.inter.teacher[:, t_c].to(x.dtype)) * beta)
    else:
        g_c.zero_()


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


class _Plan:
    """Builds the items of one evaluation: channel statistics, rankings, draws, pooled teachers."""

    def __init__(self, teacher: torch.Tensor, generator: Optional[torch.Generator], workspace: Optional[Workspace]):
        self.teacher = teacher.detach()
        self.generator, self.workspace = generator, workspace
        self.items: List[_Item] = []
        self.n_intra = self.n_inter = 0
        self._stats: Dict[tuple, Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]] = {}
        self._pooled: Dict[Tuple[int, ...], Tuple[torch.Tensor, torch.Tensor]] = {}

    def _item(self, x: torch.Tensor) -> _Item:
        for it in self.items:
            if it.x is x:
                return it
        it = _Item(x)
        if self.workspace is not None and x.grad_fn is not None:  # never for a leaf: its .grad would alias it
            it.buffer = self.workspace.take(x.shape, x.dtype, x.device)
        self.items.append(it)
        return it

    def statistics(self, x: torch.Tensor):
        # keyed by storage and layout, so the teacher and its detached alias share one pass
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype)
        if key not in self._stats:
            self._stats[key] = (x, channel_statistics(x))
        return self._stats[key][1]

    def add_intra(self, f: torch.Tensor) -> int:
        """Adds intra_fd of f; returns its slot (a map with one channel has value 0 and no item)."""
        slot, self.n_intra = self.n_intra, self.n_intra + 1
        c = f.shape[1]
        h = c // 2
        if h == 0:
            return slot
        saliency, sq = self.statistics(f)
        order = torch.argsort(saliency, descending=True)
        top, bottom = order[:h], order[h:2 * h]
        pi = torch.arange(c, device=f.device)
        pi[top] = bottom
        pi[bottom] = top
        self._item(f).intra = _Intra(slot, pi, top, bottom, float(f.numel() // c * h), sq)
        return slot

    def _nearest_pooled_teacher(self, size: Tuple[int, ...]) -> torch.Tensor:
        """The smallest already pooled teacher that pools to ``size`` exactly like the teacher itself
        (every axis divides evenly at both steps, so averages of averages are the plain averages)."""
        full = tuple(self.teacher.shape[2:])
        best = self.teacher
        for s, (t, _) in self._pooled.items():
            if all(f % a == 0 and a % b == 0 for f, a, b in zip(full, s, size)) and t.numel() < best.numel():
                best = t
        return best

    def add_inter(self, f: torch.Tensor) -> int:
        """Adds inter_fd of f against the teacher; returns its slot."""
        if f.ndim != self.teacher.ndim:
            raise ValueError(f"student {tuple(f.shape)} and teacher {tuple(self.teacher.shape)} differ in dimensionality")
        slot, self.n_inter = self.n_inter, self.n_inter + 1
        size = tuple(min(x, y) for x, y in zip(f.shape[2:], self.teacher.shape[2:]))
        if size not in self._pooled:
            t = pool_to(self._nearest_pooled_teacher(size), size)
            self._pooled[size] = (t, self.statistics(t)[1])
        t, t_sq = self._pooled[size]
        x = pool_to(f, size)  # the student is pooled only if it is larger than the teacher on some axis
        cs, ct = x.shape[1], t.shape[1]
        k = min(cs, ct)
        idx_s = _draw(cs, k, x.device, self.generator)
        idx_t = _draw(ct, k, t.device, self.generator)
        self._item(x).inter = _Inter(slot, t, t_sq, idx_s, idx_t, float(x.numel() // cs * k), self.statistics(x)[1])
        return slot

    def evaluate(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(intra values, inter values), one per added map, through one autograd node."""
        # all channel indices to the host at once (one sync on CUDA), for the per-pair dot products
        index_lists = []
        for it in self.items:
            if it.intra is not None:
                index_lists += [it.intra.top, it.intra.bottom]
            if it.inter is not None:
                index_lists += [it.inter.idx_s, it.inter.idx_t]
        flat = torch.cat([i.to(torch.long) for i in index_lists]).tolist() if index_lists else []
        pos = 0

        def take(n):
            nonlocal pos
            pos += n
            return flat[pos - n:pos]

        for it in self.items:
            if it.intra is not None:
                it.intra.host = (take(it.intra.top.numel()), take(it.intra.bottom.numel()))
            if it.inter is not None:
                it.inter.host = (take(it.inter.idx_s.numel()), take(it.inter.idx_t.numel()))
        return _FeatureDistillationFunction.apply(self.items, self.n_intra, self.n_inter,
                                                  *[it.x for it in self.items])


def intra_fd(f: torch.Tensor, workspace: Optional[Workspace] = None) -> torch.Tensor:
    """MSE between the more salient half of the channels and the less salient half (see module doc)."""
    _check(f)
    plan = _Plan(f, None, workspace)
    plan.add_intra(f)
    return plan.evaluate()[0][0]


def inter_fd(f_s: torch.Tensor, f_t: torch.Tensor, generator: Optional[torch.Generator] = None,
             workspace: Optional[Workspace] = None) -> torch.Tensor:
    """MSE between random channels of the student map and of the detached teacher map."""
    _check(f_s)
    _check(f_t)
    plan = _Plan(f_t, generator, workspace)
    plan.add_inter(f_s)
    return plan.evaluate()[1][0]


def feature_distillation(features: Sequence[torch.Tensor], teacher: torch.Tensor, use_intra: bool = True,
                         use_inter: bool = True, generator: Optional[torch.Generator] = None,
                         workspace: Optional[Workspace] = None):
    """SelfReg-UNet's internal feature distillation over a group of features.

    Returns ``(intra, inter)``: intra_fd averaged over ``features`` (every tapped block output
    counts once) and inter_fd of every feature against ``teacher`` averaged. A feature that *is* the
    teacher tensor is left out of inter_fd (comparing the teacher with a detached copy of itself
    carries no signal). Disabled terms are 0. ``workspace`` (optional, for CPU) recycles the
    map-sized gradient buffers between training steps.
    """
    if workspace is not None:
        workspace.reset()
    _check(teacher)
    plan = _Plan(teacher, generator, workspace)
    for f in features:
        _check(f)
        if use_intra:
            plan.add_intra(f)
        if use_inter and f is not teacher:
            plan.add_inter(f)
    zero = teacher.new_zeros((), dtype=torch.float32)
    if not plan.n_intra and not plan.n_inter:
        return zero, zero
    intra, inter = plan.evaluate()
    return (intra.mean() if plan.n_intra else zero), (inter.mean() if plan.n_inter else zero)
