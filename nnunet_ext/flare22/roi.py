"""The region of interest of coarse-to-fine inference (FLARE22), from the coarse model's prediction.

Two rules (``ROIRule.mode``):

* ``"softmax"`` (the default): the ROI must not lose an organ the coarse model is unsure of. On the coarse grid,
  the candidate foreground is the union of the argmax foreground and the voxels whose softmax foreground
  probability ``1 - p(background)`` is at least ``fg_threshold`` (0.2). Its connected components (26-connected) are
  kept when (a) they hold the largest argmax component of a class (so the ROI always contains the ``"argmax"``
  ROI), (b) their expected foreground volume ``sum(1 - p(background)) * voxel volume`` is at least
  ``min_component_ml`` (1 mL), or (c) they hold the largest expected volume ``sum(p(c))`` of some class ``c``
  (at least one voxel's worth), so a class the argmax missed keeps its most probable place. A stray voxel or a few
  uncertain ones far away meet none of these and do not stretch the box. The box of what is kept grows by the
  margin: because uncertain voxels join the box, the region already grows where the coarse model is uncertain, so
  the margin itself is a fixed number of millimetres.
* ``"argmax"``: the rule before the softmax ROI: the largest connected component of every class of the argmax,
  nothing else.

Either way, a case whose coarse argmax has no voxel of a class that every training case has (``always_present``,
recorded by ``plan-c2f``) is reported; in ``"softmax"`` mode its box grows by ``missing_margin_mm`` instead of the
margin (3 x the margin by default, i.e. 60 mm at FLARE22's 20 mm: an abdominal organ lies within a few cm of the
others; ``inf``: the whole volume). The larger box is there to find the missing classes: the fine model segments
both boxes, and the larger one gives only the missing classes, the largest connected component of each
(``ROI.inner``, ``merge_widened``); the classes the coarse model found come from the box of the usual margin, as
without the widening (a fine model trained on crops around the labels makes false positives on tissue far from the
organs that it never saw). An empty or tiny coarse
prediction gives no ROI: the caller falls back to the whole volume (and says so).

Boxes are half-open ``[[start, end), ...]`` per axis, as everywhere in nnU-Net and acvl_utils. The margin is
converted per axis with that axis' spacing, ``ceil(margin_mm / spacing)`` voxels, so anisotropic volumes (e.g. 5 mm
slices, 0.8 mm in plane) get the same physical margin on every axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

DEFAULT_MARGIN_MM = 20.0
ROI_MODES = ("softmax", "argmax")
DEFAULT_ROI_MODE = "softmax"
#: 1 - p(background) at or above this joins the candidate foreground (see ``ROIRule``)
DEFAULT_FG_THRESHOLD = 0.2
#: a candidate component with at least this expected foreground volume is kept wherever it is
DEFAULT_MIN_COMPONENT_ML = 1.0
#: the margin of a case that misses an always-present class, as a multiple of the margin
MISSING_MARGIN_FACTOR = 3.0
#: how plans and the command line spell "the whole volume" for ``missing_margin_mm``
WHOLE_VOLUME = "whole"
#: ``ROI.fallback`` of a case that misses an always-present class when that means the whole volume
MISSING_FALLBACK = "the coarse prediction misses a class that every training case has"


@dataclass
class ROI:
    """``bbox``: half-open box per axis, or None for the whole volume; ``fallback``: why there is no box;
    ``missing``: always-present classes the coarse argmax did not find; ``margin_mm``: the margin the box grew by;
    ``inner``: when the box was widened for ``missing`` classes, the box of the usual margin (``merge_widened``)."""

    bbox: Optional[List[List[int]]]
    fallback: Optional[str] = None
    missing: List[int] = field(default_factory=list)
    margin_mm: Optional[float] = None
    inner: Optional[List[List[int]]] = None

    def slices(self, shape) -> tuple:
        box = self.bbox or [[0, n] for n in shape]
        return tuple(slice(a, b) for a, b in box)

    def fraction(self, shape) -> float:
        """Share of the volume ``shape`` inside the ROI (1 for the whole volume)."""
        if self.bbox is None:
            return 1.0
        return float(np.prod([b - a for a, b in self.bbox], dtype=np.float64) / np.prod(shape, dtype=np.float64))


def parse_margin(value) -> float:
    """A margin in mm from plans or the command line: a number >= 0, or ``"whole"`` / ``"inf"`` (the whole
    volume, ``math.inf``)."""
    if isinstance(value, str) and value.strip().lower() in (WHOLE_VOLUME, "inf", "infinity"):
        return math.inf
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a margin in mm must be a number >= 0 or {WHOLE_VOLUME!r}, not {value!r}") from None
    if not v >= 0:
        raise ValueError(f"a margin in mm must be a number >= 0 or {WHOLE_VOLUME!r}, not {value!r}")
    return v


def margin_for_json(value: float):
    """``parse_margin``'s inverse for JSON (which has no infinity): a number, or ``"whole"``."""
    return WHOLE_VOLUME if math.isinf(value) else float(value)


@dataclass
class ROIRule:
    """How the coarse prediction becomes the region of interest (module docstring). Defaults: ``"softmax"``
    mode, 20 mm margin, foreground probability threshold 0.2, components of at least 1 mL kept, a case missing an
    always-present class grown by ``missing_margin_mm`` (None: ``MISSING_MARGIN_FACTOR`` x the margin; ``inf``:
    the whole volume; never less than the margin), fewer than ``min_voxels`` coarse voxels: the whole volume.
    ``always_present``: classes that every training case has (None: unknown, no check)."""

    mode: str = DEFAULT_ROI_MODE
    margin_mm: float = DEFAULT_MARGIN_MM
    fg_threshold: float = DEFAULT_FG_THRESHOLD
    min_component_ml: float = DEFAULT_MIN_COMPONENT_ML
    missing_margin_mm: Optional[float] = None
    min_voxels: int = 10
    always_present: Optional[Tuple[int, ...]] = None

    def __post_init__(self):
        if self.mode not in ROI_MODES:
            raise ValueError(f"ROI mode {self.mode!r}: use one of {', '.join(ROI_MODES)}")
        if not 0 < self.fg_threshold <= 1:
            raise ValueError(f"the foreground probability threshold must be in (0, 1], not {self.fg_threshold}")
        if not self.min_component_ml >= 0:
            raise ValueError(f"the minimum component volume must be >= 0 mL, not {self.min_component_ml}")
        self.margin_mm = parse_margin(self.margin_mm)
        if math.isinf(self.margin_mm):
            raise ValueError("the ROI margin must be finite (the larger margin of a case that misses a class may "
                             f"be {WHOLE_VOLUME!r})")
        if self.missing_margin_mm is None:
            self.missing_margin_mm = MISSING_MARGIN_FACTOR * self.margin_mm
        # never below the margin
        self.missing_margin_mm = max(parse_margin(self.missing_margin_mm), self.margin_mm)
        if self.always_present is not None:
            self.always_present = tuple(sorted(int(v) for v in self.always_present))

    @classmethod
    def from_plans(cls, record: dict, **overrides) -> "ROIRule":
        """The rule a fine configuration's ``"nnunet_ext"`` record describes (plan-c2f), with ``overrides``
        (None values ignored) on top; keys the record lacks (plans from before) take this version's defaults."""
        keys = {"mode": "roi_mode", "margin_mm": "roi_margin_mm", "fg_threshold": "roi_fg_threshold",
                "min_component_ml": "roi_min_component_ml", "missing_margin_mm": "roi_missing_class_margin_mm",
                "always_present": "always_present_classes"}
        kw = {k: record[v] for k, v in keys.items() if record.get(v) is not None}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def plans_record(self) -> dict:
        """The settings as plan-c2f writes them into the fine configuration (``from_plans``' inverse)."""
        rec = {"roi_margin_mm": float(self.margin_mm), "roi_mode": self.mode,
               "roi_fg_threshold": float(self.fg_threshold), "roi_min_component_ml": float(self.min_component_ml),
               "roi_missing_class_margin_mm": margin_for_json(self.missing_margin_mm)}
        if self.always_present is not None:
            rec["always_present_classes"] = list(self.always_present)
        return rec

    def mask(self, probabilities: np.ndarray, labels: Sequence[int], grid_spacing: Sequence[float],
             seg: Optional[np.ndarray] = None) -> np.ndarray:
        """The ROI mask on the coarse grid. ``probabilities``: softmax, ``(classes, *grid)``, channel ``c`` = class
        ``c`` (channel 0 background; only read in ``"softmax"`` mode, may be None in ``"argmax"`` mode);
        ``seg``: the argmax (computed from ``probabilities`` if None)."""
        if seg is None:
            seg = np.asarray(probabilities).argmax(0).astype(np.uint8)
        base = keep_largest_components(seg, labels) > 0
        if self.mode == "argmax":
            return base
        return softmax_union_mask(probabilities, seg, base, labels, self.fg_threshold,
                                  self.min_component_ml * 1000.0 / float(np.prod(grid_spacing)))

    def missing_classes(self, seg: np.ndarray) -> List[int]:
        """The always-present classes with no voxel in the argmax ``seg``."""
        if not self.always_present:
            return []
        found = set(np.unique(seg).tolist())
        return [c for c in self.always_present if c not in found]

    def roi_of_box(self, box, spacing: Sequence[float], shape, missing: Sequence[int], fallback: Optional[str],
                   margin: Optional[float]) -> ROI:
        """The ROI of the mask's bounding box ``box`` (voxels of a volume of ``shape`` with ``spacing``) after
        ``decide`` gave ``(fallback, margin)`` (``fallback``: None or ``MISSING_FALLBACK``)."""
        inner = grow_box(box, spacing, self.margin_mm, shape) if missing and self.mode == "softmax" else None
        if fallback is not None:
            return ROI(None, fallback, list(missing), None, inner)
        return ROI(grow_box(box, spacing, margin, shape), None, list(missing), margin, inner)

    def decide(self, mask: np.ndarray, missing: Sequence[int]) -> Tuple[Optional[str], Optional[float]]:
        """``(fallback, margin_mm)``: why the fine model gets the whole volume (None: it gets a box), and the margin
        the box of ``mask`` grows by (the larger one when an always-present class is ``missing``, softmax mode)."""
        n = int(np.count_nonzero(mask))
        if n == 0:
            return "the coarse prediction is empty", None
        if n < self.min_voxels:
            return f"the coarse prediction has {n} voxel(s) (< {self.min_voxels})", None
        if missing and self.mode == "softmax":
            if math.isinf(self.missing_margin_mm):
                return MISSING_FALLBACK, None
            return None, self.missing_margin_mm
        return None, self.margin_mm


def softmax_union_mask(probabilities: np.ndarray, seg: np.ndarray, base: np.ndarray, labels: Sequence[int],
                       threshold: float, min_component_voxels: float) -> np.ndarray:
    """``base`` (the argmax rule's mask) plus the components of ``seg > 0 | 1 - p(background) >= threshold``
    (26-connected) that touch ``base``, whose expected foreground ``sum(1 - p(background))`` is at least
    ``min_component_voxels``, or that hold the largest expected count ``sum(p(c))`` of a class ``c`` in ``labels``
    (when that is at least one voxel)."""
    from scipy import ndimage

    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.shape[1:] != seg.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not match the segmentation {seg.shape}")
    fg = 1.0 - probabilities[0]
    candidates = (seg > 0) | (fg >= threshold) | base
    comp, n = ndimage.label(candidates, ndimage.generate_binary_structure(seg.ndim, seg.ndim))
    if n == 0:
        return base
    index = np.arange(1, n + 1)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(comp[base])] = True
    keep[1:] |= np.asarray(ndimage.sum_labels(fg, comp, index)) >= min_component_voxels
    for c in labels:
        if 0 < c < probabilities.shape[0]:
            mass = np.asarray(ndimage.sum_labels(probabilities[c], comp, index))
            best = int(mass.argmax())
            if mass[best] >= 1.0:
                keep[best + 1] = True
    keep[0] = False
    return keep[comp] | base


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
    """The ROI of a coarse segmentation by the ``"argmax"`` rule: largest component per label, then
    ``roi_from_mask``."""
    return roi_from_mask(keep_largest_components(seg, labels) > 0, spacing, margin_mm, min_voxels)


def roi_from_probabilities(probabilities: np.ndarray, spacing: Sequence[float], labels: Sequence[int],
                           rule: ROIRule) -> ROI:
    """The ROI of a coarse softmax prediction ``(classes, *grid)`` by ``rule``, in voxels of that same grid
    (``predict-c2f`` maps the box of ``rule.mask`` to the original image instead; same decisions)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import get_bbox_from_mask

    seg = np.asarray(probabilities).argmax(0).astype(np.uint8)
    mask = rule.mask(probabilities, labels, spacing, seg)
    missing = rule.missing_classes(seg)
    fallback, margin = rule.decide(mask, missing)
    if fallback is not None and fallback != MISSING_FALLBACK:
        return ROI(None, fallback, missing)
    return rule.roi_of_box(get_bbox_from_mask(mask), spacing, mask.shape, missing, fallback, margin)


def merge_widened(inner_part: np.ndarray, widened: np.ndarray, roi: ROI) -> np.ndarray:
    """The segmentation of a case whose ROI was widened for ``roi.missing`` classes: the classes the coarse model
    found from the fine model on ``roi.inner`` (the box of the usual margin: ``inner_part``), each missing class
    from the fine model on the widened box (``widened``, a whole volume with its prediction pasted in): its largest
    connected component, wherever it is. So the found classes come out as without the widening (the fine model,
    trained on crops around the labels, sees the context it was trained with), and the second pass adds one organ
    per missing class, not every false positive it makes on tissue far from the organs."""
    out = np.zeros_like(widened)
    out[ROI(roi.inner).slices(widened.shape)] = inner_part
    missing = list(roi.missing)
    found = keep_largest_components(np.where(np.isin(widened, missing), widened, 0), missing)
    out[found > 0] = found[found > 0]
    return out


def class_names(dataset_json: dict) -> Dict[int, str]:
    """``{label value: name}`` of dataset.json's class labels (regions and the ignore label left out)."""
    return {int(v): str(k) for k, v in (dataset_json.get("labels") or {}).items()
            if k != "ignore" and not isinstance(v, (list, tuple))}


def paste(full_shape, part: np.ndarray, roi: ROI, background=0) -> np.ndarray:
    """``part`` (the prediction on the ROI) written into a volume of ``full_shape`` filled with ``background``."""
    out = np.full(full_shape, background, dtype=part.dtype)
    out[roi.slices(full_shape)] = part
    return out
