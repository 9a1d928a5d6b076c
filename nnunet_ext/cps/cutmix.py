"""CutMix for cross pseudo supervision (Chen et al., CVPR 2021, "CPS + CutMix"; docs/methods/cps.md).

The CPS paper's CutMix setting, as its public code does it: two independent unlabelled batches ``U0`` and ``U1``
and one binary box mask ``M`` per sample (1 inside the box); the mixed image is ``U0 * (1 - M) + U1 * M`` (the box
of ``U1`` pasted into ``U0``). Each network predicts ``U0`` and ``U1`` without gradient, the two logit maps are
mixed with the same mask, and the argmax of the mix is that network's pseudo-label of the mixed image. Since ``M``
is 0 or 1 everywhere, mixing logits and then taking the argmax equals mixing the two argmaxes.

**Box masks** (:func:`draw_boxes`, :func:`boxes_to_mask`), in 2D and 3D (a box in every spatial axis). For each
sample and box:

1. the volume fraction ``p`` of the box is drawn uniformly from ``area`` (CPS: ``[0.25, 0.5]``);
2. the aspect ratio: the box's side along axis ``d`` is the fraction ``p ** w_d`` of the patch's size along ``d``,
   with ``(w_1, ..., w_D)`` drawn uniformly from the simplex (``w_d >= 0``, ``sum w_d = 1``, i.e. Dirichlet(1, ...,
   1), drawn as normalised exponentials). The product of the side fractions is ``p`` and every side fraction is in
   ``[p, 1]``, so the box fits in the patch. In 2D this is exactly the rule of French et al.'s box-mask generator
   that the CPS code uses (height fraction ``p ** u``, width fraction ``p ** (1 - u)``, ``u ~ U(0, 1)``); in 3D it is
   the same rule with one weight per axis;
3. sides are rounded to whole voxels (at least 1) and the box is placed uniformly at random fully inside the patch
   (start ``round((S_d - side_d) * v)``, ``v ~ U(0, 1)``).

With ``boxes = n > 1`` (French et al.'s ``n_boxes``; the CPS code's VOC and Cityscapes configurations use 3) each
box gets its own ``p`` and the volume fraction ``p / n`` (every side scaled by ``(1 / n) ** (1 / D)``), and the mask
is the boxes' exclusive or (a voxel covered twice is toggled back to 0), as in that generator. With one box (the
default here) the mask's volume fraction is ``p`` up to the rounding of the sides.

Random numbers come from a ``torch.Generator`` passed in (CPU), never from the global generators, so the boxes are
reproducible under the project's seeding (the trainer seeds its generator from ``nnUNet_ext_seed``, see
``nnunet_ext.core.seeding``) and drawing them does not shift any other random stream.

**Deep supervision** (:func:`mask_at`, :func:`mix_outputs`): nnU-Net's auxiliary outputs are lower-resolution
maps, and nnU-Net makes their targets by resampling the full-resolution label map with nearest-neighbour
interpolation (``interpolate(..., mode="nearest-exact")``, batchgeneratorsv2's ``DownsampleSegForDSTransform``).
Each scale's logits are mixed with the full-resolution mask resampled to that scale's shape the same way, so the
mixed pseudo-label at every scale is what nnU-Net's own downsampling would make of a full-resolution mixed label
(nearest-neighbour resampling picks voxels, and picking commutes with a voxel-wise mix).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from nnunet_ext.core.labels import class_argmax

Output = Union[torch.Tensor, List[torch.Tensor]]


def _check_area(area: Sequence[float]) -> Tuple[float, float]:
    lo, hi = (float(a) for a in area)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"cutmix area must be a range 0 < low <= high <= 1 (a volume fraction), got {tuple(area)}")
    return lo, hi


def draw_boxes(n: int, spatial_shape: Sequence[int], area: Sequence[float] = (0.25, 0.5), boxes: int = 1,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` samples of ``boxes`` boxes in a patch of ``spatial_shape`` (2 or 3 axes): a long tensor
    ``(n, boxes, D, 2)`` of ``[start, stop)`` per axis, every box inside the patch (rule in the module doc)."""
    lo, hi = _check_area(area)
    if boxes < 1:
        raise ValueError(f"cutmix boxes must be at least 1, got {boxes}")
    shape = torch.tensor([int(s) for s in spatial_shape], dtype=torch.float64)
    dims = len(shape)
    g = dict(generator=generator, dtype=torch.float64)
    p = lo + (hi - lo) * torch.rand(n, boxes, 1, **g)  # volume fraction of each box (before the 1/n split)
    e = -torch.log1p(-torch.rand(n, boxes, dims, **g))  # Exp(1) draws; normalised: uniform on the simplex
    w = e / e.sum(-1, keepdim=True).clamp_min(1e-12)
    fractions = p ** w * (1.0 / boxes) ** (1.0 / dims)  # side fraction per axis; product = p / boxes
    sides = torch.round(fractions * shape).clamp(min=1.0)
    sides = torch.minimum(sides, shape)
    starts = torch.round((shape - sides) * torch.rand(n, boxes, dims, **g))
    return torch.stack((starts, starts + sides), -1).long()


def boxes_to_mask(boxes: torch.Tensor, spatial_shape: Sequence[int], device=None) -> torch.Tensor:
    """The binary mask ``(n, 1, *spatial_shape)`` (bool, True inside) of :func:`draw_boxes`' boxes; the exclusive
    or of a sample's boxes when it has several."""
    boxes = boxes.to(device)
    n, nb, dims, _ = boxes.shape
    inside = None
    for d, size in enumerate(spatial_shape):
        coord = torch.arange(int(size), device=boxes.device)
        axis = (coord >= boxes[:, :, d, :1]) & (coord < boxes[:, :, d, 1:])  # (n, nb, size)
        view = [n, nb] + [1] * dims
        view[2 + d] = int(size)
        axis = axis.view(view)
        inside = axis if inside is None else inside & axis
    # exclusive or over the boxes: covered an odd number of times
    return (inside.sum(1, keepdim=True) % 2).bool()


def box_masks(n: int, spatial_shape: Sequence[int], area: Sequence[float] = (0.25, 0.5), boxes: int = 1,
              generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """``n`` CutMix masks ``(n, 1, *spatial_shape)`` (bool, True = take ``U1``) on ``device``."""
    return boxes_to_mask(draw_boxes(n, spatial_shape, area, boxes, generator), spatial_shape, device)


def _mask_for(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (n, 1, *spatial) shaped to broadcast against ``x``: (n, C, *spatial) or a label map (n, *spatial)."""
    if x.ndim == mask.ndim:
        return mask
    if x.ndim == mask.ndim - 1:
        return mask[:, 0]
    raise ValueError(f"cannot mix a tensor of shape {tuple(x.shape)} with a mask of shape {tuple(mask.shape)}")


def mix(x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x0 * (1 - M) + x1 * M`` for a binary mask ``M`` (exact, any dtype): images, logits or label maps."""
    if x0.shape != x1.shape:
        raise ValueError(f"cannot mix tensors of shapes {tuple(x0.shape)} and {tuple(x1.shape)}")
    m = _mask_for(x0, mask)
    spatial = mask.shape[2:]
    if m.shape[0] != x0.shape[0] or x0.shape[x0.ndim - len(spatial):] != spatial:
        raise ValueError(f"a mask of shape {tuple(mask.shape)} does not fit tensors of shape {tuple(x0.shape)}")
    return torch.where(m.bool(), x1, x0)


def mask_at(mask: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """``mask`` resampled to ``spatial_shape`` like nnU-Net resamples labels for deep supervision (nearest-exact);
    the mask itself at full resolution."""
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if tuple(mask.shape[2:]) == spatial_shape:
        return mask
    return F.interpolate(mask.float(), spatial_shape, mode="nearest-exact") > 0.5


def mix_outputs(out0: Output, out1: Output, mask: torch.Tensor) -> Output:
    """Mix two network outputs (a tensor, or a list of deep-supervision outputs) scale by scale, each with the mask
    at that scale (:func:`mask_at`)."""
    if isinstance(out0, (list, tuple)):
        return [mix(a, b, mask_at(mask, a.shape[2:])) for a, b in zip(out0, out1)]
    return mix(out0, out1, mask_at(mask, out0.shape[2:]))


def mixed_pseudo_labels(out0: Output, out1: Output, mask: torch.Tensor) -> Output:
    """The pseudo-label of the mixed image: argmax over classes of the mixed logits, at every scale."""
    mixed = mix_outputs(out0, out1, mask)
    if isinstance(mixed, list):
        return [class_argmax(m.detach(), 1) for m in mixed]
    return class_argmax(mixed.detach(), 1)


def split_halves(output: Output) -> Tuple[Output, Output]:
    """The first and second half of a batch output (a tensor or a list of deep-supervision outputs)."""
    if isinstance(output, (list, tuple)):
        halves = [o.chunk(2) for o in output]
        return [h[0] for h in halves], [h[1] for h in halves]
    return tuple(output.chunk(2))


def mask_share(mask: torch.Tensor) -> float:
    """Mean share of the voxels that a batch of masks takes from ``U1``."""
    return float(mask.float().mean()) if mask.numel() else math.nan


def pair_pseudo_labels(network, u0: torch.Tensor, u1: torch.Tensor, mask: torch.Tensor) -> Tuple[Output, Output]:
    """Both networks' pseudo-labels of the mixed images: ``network`` (the CPS pair, in training mode: it returns
    ``(output_a, output_b)``) predicts ``cat(U0, U1)`` without gradient, and each network's logits of ``U0`` and
    ``U1`` are mixed with ``mask`` (scale by scale) and argmaxed. Returns ``(labels of A, labels of B)``."""
    with torch.no_grad():
        out_a, out_b = network(torch.cat((u0, u1)))
    return mixed_pseudo_labels(*split_halves(out_a), mask), mixed_pseudo_labels(*split_halves(out_b), mask)
