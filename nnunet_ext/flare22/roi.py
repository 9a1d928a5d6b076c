"""The region of interest of coarse-to-fine inference (FLARE22): coarse prediction -> largest connected component
of every organ -> bounding box of what is left -> a margin in millimetres (20 mm by default) -> clipped to the
volume. An empty or tiny coarse prediction gives no ROI: the caller falls back to the whole volume (and says so).

Boxes are half-open ``[[start, end), ...]`` per axis, as everywhere in nnU-Net and acvl_utils. The margin is
converted per axis with that axis' spacing, ``ceil(margin_mm / spacing)`` voxels, so anisotropic volumes (e.g. 5 mm
slices, 0.8 mm in plane) get the same physical margin on every axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

DEFAULT_MARGIN_MM = 20.0


@dataclass
class ROI:
    """``bbox``: half-open box per axis, or None for the whole volume; ``fallback``: why there is no box."""

    bbox: Optional[List[List[int]]]
    fallback: Optional[str] = None

    def slices(self, shape) -> tuple:
        box = self.bbox or [[0, n] for n in shape]
        return tuple(slice(a, b) for a, b in box)


def keep_largest_components(seg: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``seg`` with every label reduced to its largest connected component (nnU-Net's own post-processing)."""
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation

    for v in labels:  # one label at a time (a list would be taken as one region)
        if v != 0 and np.any(seg == v):
            seg = remove_all_but_largest_component_from_segmentation(seg, int(v))
    return seg


def margin_voxels(spacing: Sequence[float], margin_mm: float = DEFAULT_MARGIN_MM) -> List[int]:
    """The margin in voxels per axis: ``ceil(margin_mm / spacing)``."""
    return [int(math.ceil(margin_mm / float(s) - 1e-9)) for s in spacing]


def roi_from_mask(mask: np.ndarray, spacing: Sequence[float], margin_mm: float = DEFAULT_MARGIN_MM,
                  min_voxels: int = 1) -> ROI:
    """Bounding box of ``mask`` grown by ``margin_mm`` and clipped to the volume; fewer than ``min_voxels``
    foreground voxels: no box (``fallback`` says why)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import get_bbox_from_mask

    if len(spacing) != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {mask.ndim}D mask")
    n = int(np.count_nonzero(mask))
    if n == 0:
        return ROI(None, "the coarse prediction is empty")
    if n < min_voxels:
        return ROI(None, f"the coarse prediction has {n} voxels (< {min_voxels})")
    return ROI(grow_box(get_bbox_from_mask(mask), spacing, margin_mm, mask.shape))


def grow_box(box, spacing: Sequence[float], margin_mm: float, shape) -> List[List[int]]:
    """``box`` (half-open, per axis) grown by ``margin_mm`` on every side and clipped to ``shape``."""
    grow = margin_voxels(spacing, margin_mm)
    return [[max(0, int(a) - g), min(int(size), int(b) + g)] for (a, b), g, size in zip(box, grow, shape)]


def box_in_original(box_t, grid_shape_t, properties: dict, transpose_forward: Sequence[int]) -> List[List[int]]:
    """A box on nnU-Net's preprocessed grid (transposed axes, cropped to non-zero, resampled) as a box of the
    original image (original axes): each grid voxel covers ``shape_after_cropping_and_before_resampling /
    grid_shape`` original voxels, offset by nnU-Net's crop (``bbox_used_for_cropping``); rounded outwards."""
    crop_shape = properties["shape_after_cropping_and_before_resampling"]
    crop_start = [b[0] for b in properties["bbox_used_for_cropping"]]
    out_t = []
    for (a, b), n_grid, n_crop, o in zip(box_t, grid_shape_t, crop_shape, crop_start):
        scale = n_crop / n_grid
        out_t.append([o + int(math.floor(a * scale + 1e-6)), o + min(int(n_crop), int(math.ceil(b * scale - 1e-6)))])
    box = [None] * len(out_t)
    for j, axis in enumerate(transpose_forward):  # transposed axis j is original axis transpose_forward[j]
        box[axis] = out_t[j]
    return box


def coarse_roi(seg: np.ndarray, spacing: Sequence[float], labels: Sequence[int],
               margin_mm: float = DEFAULT_MARGIN_MM, min_voxels: int = 1) -> ROI:
    """The ROI of a coarse segmentation: largest component per label, then ``roi_from_mask``."""
    return roi_from_mask(keep_largest_components(seg, labels) > 0, spacing, margin_mm, min_voxels)


def paste(full_shape, part: np.ndarray, roi: ROI, background=0) -> np.ndarray:
    """``part`` (the prediction on the ROI) written into a volume of ``full_shape`` filled with ``background``."""
    out = np.full(full_shape, background, dtype=part.dtype)
    out[roi.slices(full_shape)] = part
    return out
