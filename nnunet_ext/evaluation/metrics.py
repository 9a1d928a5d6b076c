"""Per-case segmentation metrics: Dice, normalised surface Dice (NSD), HD95 and volumes.

All distances are in mm (the spacing of the images; PNG/BMP images have spacing 1 per pixel, so "mm"
means pixels there) and all volumes in mm^3 (areas in mm^2 for 2D images). Background (0) is never
evaluated. A *class* is either one label value (``int``) or, for nnU-Net's region-based datasets, a
region: a tuple of label values whose union is the mask (as ``nnunetv2.evaluation`` does).

Definitions, for one class with reference mask R and predicted mask P:

Dice
    ``2 |R & P| / (|R| + |P|)``, counted in voxels (nnU-Net's ``compute_metrics``).

NSD (normalised surface Dice at tolerance tau mm, Nikolov et al. 2021, "Clinically applicable
segmentation of head and neck anatomy for radiotherapy", JMIR, arXiv:1809.04430)
    ``(|S_P within tau of S_R| + |S_R within tau of S_P|) / (|S_P| + |S_R|)`` where S_X is the surface of
    X and |.| its area. Computed by MONAI's ``compute_surface_dice(..., use_subvoxels=True)``, which
    follows Nikolov et al.'s reference implementation (DeepMind's ``surface-distance``): the surface is
    made of surface elements on the grid of voxel corners (one per 2x2x2 neighbourhood that holds both
    foreground and background voxels, marching-cubes style; contour segments per 2x2 neighbourhood in 2D),
    each weighted by its area in mm^2 (length in mm in 2D), so anisotropic spacing is weighted correctly.
    An element counts as "within tau" when its distance to the nearest element of the other surface
    is <= tau.

HD95 (95th percentile Hausdorff distance, mm)
    ``max(P95(d(S_P -> S_R)), P95(d(S_R -> S_P)))``: the larger of the two *directed* 95th percentiles,
    where ``d(A -> B)`` is the list of Euclidean distances (in mm, using the spacing) from every surface
    voxel of A to the nearest surface voxel of B and P95 is numpy/torch's linearly interpolated 95th
    percentile. This is MONAI's ``compute_hausdorff_distance(..., percentile=95)`` (and the definition of
    DeepMind's ``compute_robust_hausdorff``, there area weighted). The surface voxels here are the
    foreground voxels with at least one face-connected (6-neighbourhood; 4 in 2D) background neighbour
    (MONAI's ``get_mask_edges``: ``mask XOR binary_erosion(mask)``); each counts once, distances run
    between voxel centres. It is *not* the 95th percentile of the pooled distances of both directions.

Volumes
    ``vol_ref = |R| * voxel volume``, ``vol_pred = |P| * voxel volume``, ``vol_diff = vol_pred - vol_ref``
    (signed: positive = over-segmentation).

Empty masks (column ``empty``: ``""``, ``"ref"``, ``"pred"`` or ``"both"``):

==================  ======  ======  =====================================================
case                Dice    NSD     HD95
==================  ======  ======  =====================================================
both non-empty      value   value   value
reference empty     0       0       NaN (undefined; counted as ``n_one_empty`` in summaries)
prediction empty    0       0       NaN (undefined; counted as ``n_one_empty`` in summaries)
both empty          NaN     NaN     NaN
==================  ======  ======  =====================================================

NaN values are left out of every mean: a class absent from both reference and prediction is nnU-Net's
convention (``evaluate_predictions``: Dice NaN, excluded); a missed or hallucinated structure counts as
Dice 0 and NSD 0 in the means, while its HD95 (infinite in principle) is kept out of the HD95 mean and
reported as a count instead, so the HD95 mean is over cases where both masks are non-empty.

Speed: each class is cropped to the bounding box of ``R | P`` plus a one-voxel margin before anything
else is computed, so large images with small structures cost little.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

#: tolerance of the NSD in mm when none is given
DEFAULT_TOLERANCE_MM = 1.0

#: the columns of one row of :func:`case_metrics` (``evaluate_folders`` adds ``case`` and ``name``)
METRIC_COLUMNS = ("dice", "nsd", "hd95", "vol_ref", "vol_pred", "vol_diff", "tolerance", "empty")


from nnunet_ext.errors import UserError


class EvaluationError(UserError, ValueError):
    """A user error in an evaluation: missing or mismatched files, bad labels or tolerances.

    A ``ValueError`` (and the project's ``nnunet_ext.errors.UserError``). The message names the file or
    value at fault, what differs and how to fix it. The ``nnunet-ext evaluate`` command prints it as one
    line and exits with code 2 (the traceback only with ``nnunet-ext --debug`` / ``nnUNet_ext_debug=1``).
    """


# --------------------------------------------------------------------------------------------- classes
def normalize_class(value):
    """A class key: ``int`` for a label, a tuple of ints for a region (a one-element region is its label).

    Accepts ints, numpy ints, digit strings ("3"), lists/tuples of those and nnU-Net's region keys
    ("(1, 2)" or "1,2").
    """
    if isinstance(value, (bool, np.bool_)):
        raise EvaluationError(f"class {value!r} is not a label value (an integer > 0 or a list of them)")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().strip("()[]")
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            ints = tuple(int(p) for p in parts)
        except ValueError:
            raise EvaluationError(f"class {value!r} is not a label value (an integer > 0 or a list of them)") from None
        if not ints:
            raise EvaluationError(f"class {value!r} is empty")
        return ints[0] if len(ints) == 1 else ints
    if isinstance(value, (list, tuple)):
        ints = tuple(normalize_class(v) for v in value)
        if not ints or any(isinstance(v, tuple) for v in ints):
            raise EvaluationError(f"region {value!r} must be a non-empty list of label values")
        return ints[0] if len(ints) == 1 else ints
    raise EvaluationError(f"class {value!r} is not a label value (an integer > 0 or a list of them)")


def class_key(cls) -> str:
    """The text form of a class: "3" for a label, "(1, 2)" for a region (nnU-Net's summary.json keys)."""
    return str(cls)


def _members(cls) -> tuple:
    return cls if isinstance(cls, tuple) else (cls,)


def resolve_tolerance(tolerance, classes, names: Mapping | None = None) -> dict:
    """``{class: tolerance in mm}`` for every class.

    ``tolerance``: a number (all classes), or a mapping ``{class: mm}`` whose keys are label values (or
    region keys, or class names when ``names`` maps classes to names) plus an optional ``"default"``
    entry for the classes not listed. Without a default every class must be listed. Keys for classes
    that are not evaluated are ignored with a warning.
    """
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE_MM
    classes = list(classes)
    if isinstance(tolerance, Mapping):
        by_name = {str(n): c for c, n in (names or {}).items()}
        default = None
        given = {}
        for k, v in tolerance.items():
            if k is None or (isinstance(k, str) and k.strip().lower() == "default"):
                default = _tolerance_value(v, "default")
                continue
            if isinstance(k, str) and k in by_name:
                key = by_name[k]
            else:
                try:
                    key = normalize_class(k)
                except EvaluationError:
                    raise EvaluationError(f"tolerance given for {k!r}, which is neither a label value nor a class "
                                          f"name (classes: {', '.join(class_key(c) for c in classes)})") from None
            given[key] = _tolerance_value(v, k)
        unknown = [k for k in given if k not in classes]
        if unknown:
            warnings.warn(f"tolerance given for classes that are not evaluated, ignored: "
                          f"{', '.join(class_key(k) for k in unknown)}", stacklevel=2)
        missing = [c for c in classes if c not in given]
        if missing and default is None:
            raise EvaluationError(
                f"no NSD tolerance for class(es) {', '.join(class_key(c) for c in missing)}; give one per class "
                f"(e.g. --tolerance 1=2.0,2=1.5) or a default for the others (e.g. --tolerance 1.0,2=1.5)")
        return {c: given.get(c, default) for c in classes}
    value = _tolerance_value(tolerance, "tolerance")
    return {c: value for c in classes}


def _tolerance_value(value, what) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EvaluationError(f"NSD tolerance {value!r} (for {what}) is not a number of mm") from None
    if not math.isfinite(v) or v < 0:
        raise EvaluationError(f"NSD tolerance {value!r} (for {what}) must be a finite number of mm >= 0")
    return v


# --------------------------------------------------------------------------------------------- arrays
def as_label_array(arr: np.ndarray, what: str = "segmentation") -> np.ndarray:
    """An integer label map (uint8/uint16/int32, the smallest that fits) from any numeric array.

    Raises :class:`EvaluationError` for negative or non-integer values (e.g. probabilities).
    """
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.size == 0:
        raise EvaluationError(f"{what} is empty (shape {arr.shape})")
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise EvaluationError(f"{what} holds negative values (min {lo}); expected label values >= 0")
    dtype = np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.int32
    if arr.dtype == dtype:
        return arr
    out = arr.astype(dtype)
    if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(out, arr):
        raise EvaluationError(f"{what} holds non-integer values; expected a label map, not probabilities")
    return out


def _bounding_boxes(seg: np.ndarray, max_label: int) -> list:
    """``boxes[v - 1]`` = tuple of slices of label v in ``seg`` (None when absent), for v = 1..max_label."""
    from scipy.ndimage import find_objects

    if max_label < 1:
        return []
    return find_objects(seg, max_label=max_label)


def _union_box(boxes: Sequence) -> tuple | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    ndim = len(boxes[0])
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(ndim))


def _grow(box: tuple, shape: tuple, margin: int = 1) -> tuple:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


# --------------------------------------------------------------------------------------------- metrics
def surface_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance: float) -> tuple:
    """(NSD at ``tolerance`` mm, HD95 in mm) of two non-empty boolean masks (2D or 3D), with MONAI.

    See the module docstring for the definitions. Both masks must be non-empty (the empty cases are
    handled by :func:`binary_metrics`).
    """
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    y = torch.from_numpy(np.ascontiguousarray(ref, dtype=bool))[None, None]
    y_pred = torch.from_numpy(np.ascontiguousarray(pred, dtype=bool))[None, None]
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nsd = compute_surface_dice(y_pred, y, class_thresholds=[float(tolerance)], include_background=True,
                                   distance_metric="euclidean", spacing=spacing, use_subvoxels=True)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, distance_metric="euclidean",
                                          percentile=95, directed=False, spacing=spacing)
    return float(nsd.reshape(-1)[0]), float(hd95.reshape(-1)[0])


def binary_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance: float = 1.0) -> dict:
    """Dice, NSD, HD95 and volumes of two boolean masks of the same shape (2D or 3D).

    ``spacing`` has one entry per axis (mm). Empty masks follow the module's conventions. Returns a
    dict with the keys of :data:`METRIC_COLUMNS`.
    """
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    voxel = float(np.prod(spacing))
    n_ref, n_pred = int(ref.sum()), int(pred.sum())
    row = {"dice": math.nan, "nsd": math.nan, "hd95": math.nan, "vol_ref": n_ref * voxel,
           "vol_pred": n_pred * voxel, "vol_diff": (n_pred - n_ref) * voxel, "tolerance": float(tolerance),
           "empty": ""}
    if n_ref == 0 and n_pred == 0:
        row["empty"] = "both"
    elif n_ref == 0 or n_pred == 0:
        row.update(dice=0.0, nsd=0.0, empty="ref" if n_ref == 0 else "pred")
    else:
        tp = int(np.count_nonzero(ref & pred))
        row["dice"] = 2.0 * tp / (n_ref + n_pred)
        row["nsd"], row["hd95"] = surface_metrics(ref, pred, spacing, tolerance)
    return row


def case_metrics(ref: np.ndarray, pred: np.ndarray, spacing: tuple, labels: list, tolerance=1.0, *,
                 names: Mapping | None = None, ignore_label: int | None = None) -> list:
    """Metrics of one case: one row (dict) per class, in the order of ``labels``.

    ref, pred: integer label maps of the same shape, 2D (y, x) or 3D (z, y, x).
    spacing: mm per voxel along the same axes (``len(spacing) == ref.ndim``).
    labels: the classes: label values (ints > 0) or regions (tuples of label values).
    tolerance: NSD tolerance in mm, a number or ``{class: mm}`` (see :func:`resolve_tolerance`).
    names: optional ``{class: name}`` for the ``name`` column (default: the label value as text).
    ignore_label: voxels with this value in ``ref`` are set to background in both maps first (Dice is
        then nnU-Net's ignore-label Dice; surfaces may gain edges along the ignored region).

    Each row holds ``class``, ``name`` and :data:`METRIC_COLUMNS` (``dice``, ``nsd``, ``hd95``,
    ``vol_ref``, ``vol_pred``, ``vol_diff``, ``tolerance``, ``empty``); see the module docstring for
    definitions and the conventions for empty masks.
    """
    ref = np.asarray(ref)
    pred = np.asarray(pred)
    if ref.shape != pred.shape:
        raise EvaluationError(f"reference and prediction shapes differ: {ref.shape} vs {pred.shape}")
    if ref.ndim not in (2, 3):
        raise EvaluationError(f"expected 2D (y, x) or 3D (z, y, x) label maps, got shape {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ref.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise EvaluationError(f"spacing {spacing} does not fit a {ref.ndim}D image (one positive value per axis)")
    classes = [normalize_class(c) for c in labels]
    for c in classes:
        if 0 in _members(c):
            raise EvaluationError(f"class {class_key(c)} contains the background (0), which is not evaluated")
    tol = resolve_tolerance(tolerance, classes, names)
    ref = as_label_array(ref, "reference")
    pred = as_label_array(pred, "prediction")
    if ignore_label is not None:
        ignored = ref == ignore_label
        if ignored.any():
            ref = np.where(ignored, 0, ref).astype(ref.dtype, copy=False)
            pred = np.where(ignored, 0, pred).astype(pred.dtype, copy=False)

    # one pass per map gives every label's bounding box
    max_label = max((max(_members(c)) for c in classes), default=0)
    boxes_ref = _bounding_boxes(ref, max_label)
    boxes_pred = _bounding_boxes(pred, max_label)
    rows = []
    for c in classes:
        members = _members(c)
        box = _union_box([boxes_ref[m - 1] for m in members] + [boxes_pred[m - 1] for m in members])
        if box is None:  # absent from both maps
            row = {"dice": math.nan, "nsd": math.nan, "hd95": math.nan, "vol_ref": 0.0, "vol_pred": 0.0,
                   "vol_diff": 0.0, "tolerance": tol[c], "empty": "both"}
        else:
            # Crop to the bounding box of R | P plus a 1-voxel margin (clipped at the image border). This is
            # exact: every foreground voxel of R and P, hence every surface voxel/element and every voxel
            # counted by Dice and the volumes, lies inside the box; the margin keeps the background voxels
            # next to the surface, so the surfaces found in the crop are those of the full image (MONAI
            # treats space outside the array as background, as the full image does beyond its border).
            # Distances depend only on the positions of surface points relative to each other, which
            # the crop does not change.
            crop = _grow(box, ref.shape, 1)
            r, p = ref[crop], pred[crop]
            if len(members) == 1:
                r, p = r == members[0], p == members[0]
            else:
                r, p = np.isin(r, members), np.isin(p, members)
            row = binary_metrics(r, p, spacing, tol[c])
        name = (names or {}).get(c, class_key(c))
        rows.append({"class": c, "name": name, **row})
    return rows


# --------------------------------------------------------------------------------------------- summaries
def summarize(rows: Sequence[Mapping], classes: Sequence, names: Mapping | None = None) -> tuple:
    """(per_class, overall) from per-case rows (see the module docstring for which values enter means).

    per_class[c]: ``name``, ``dice``, ``nsd``, ``hd95`` (means over the cases where they are defined),
    ``vol_diff`` and ``abs_vol_diff`` (mean signed / absolute volume difference over the cases where the
    class is in the reference or the prediction), ``vol_ref``, ``vol_pred`` (means, same cases), ``n``
    (cases where the class is in the reference or the prediction: the Dice/NSD mean's cases),
    ``n_hd95`` (cases where both are non-empty: the HD95 mean's cases), ``n_one_empty`` (cases where
    exactly one is empty: HD95 undefined), ``n_both_empty`` (left out of all means) and ``tolerance``.
    overall: the mean over classes of the class means (nnU-Net's ``foreground_mean``), classes with an
    undefined mean left out; its ``n`` is the number of classes that entered the Dice mean.
    """
    per_class = {}
    for c in classes:
        sel = [r for r in rows if r["class"] == c]
        defined = [r for r in sel if r["empty"] != "both"]
        tols = sorted({r["tolerance"] for r in sel})
        per_class[c] = {
            "name": (names or {}).get(c, sel[0]["name"] if sel else class_key(c)),
            "dice": _nanmean(r["dice"] for r in sel),
            "nsd": _nanmean(r["nsd"] for r in sel),
            "hd95": _nanmean(r["hd95"] for r in sel),
            "vol_diff": _nanmean(r["vol_diff"] for r in defined),
            "abs_vol_diff": _nanmean(abs(r["vol_diff"]) for r in defined),
            "vol_ref": _nanmean(r["vol_ref"] for r in defined),
            "vol_pred": _nanmean(r["vol_pred"] for r in defined),
            "n": len(defined),
            "n_hd95": sum(1 for r in sel if r["empty"] == ""),
            "n_one_empty": sum(1 for r in sel if r["empty"] in ("ref", "pred")),
            "n_both_empty": sum(1 for r in sel if r["empty"] == "both"),
            "tolerance": tols[0] if tols else math.nan,
        }
    overall = {k: _nanmean(v[k] for v in per_class.values()) for k in ("dice", "nsd", "hd95")}
    overall["n"] = sum(1 for v in per_class.values() if not math.isnan(v["dice"]))
    return per_class, overall


def _nanmean(values) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan
