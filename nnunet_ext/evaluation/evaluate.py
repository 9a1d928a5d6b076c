"""Evaluate a folder of predictions against a folder of reference segmentations.

Files are read with nnU-Net's own reader classes (NIfTI, NRRD, MHA, PNG, BMP, TIF, ...), chosen from
``dataset.json`` (``overwrite_image_reader_writer``, ``file_ending``) or from the file ending. Cases
are matched by file name (``CASE<file_ending>`` in both folders). Spacing comes from the reference
file; the prediction must have the same shape and geometry (spacing, and origin/direction or the
affine where the reader reports them), within :data:`GEOMETRY_ATOL` / :data:`GEOMETRY_RTOL`.

2D images: nnU-Net's readers return them as (1, 1, y, x) with a dummy first spacing (999 for
PNG/BMP/TIF, 999 x the largest spacing for 2D NIfTI). Any image whose first axis has one slice is
evaluated in 2D on its (y, x) plane with the in-plane spacing (1 per pixel for PNG), so surfaces are
contours, NSD weighs contour length and "volumes" are areas in mm^2.

Metrics, their definitions and the conventions for empty masks: :mod:`nnunet_ext.evaluation.metrics`.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nnunet_ext.atomic_io import write_text_atomic
from nnunet_ext.core.labels import check_real_labels
from nnunet_ext.paths import require_output_folder
from nnunet_ext.evaluation.metrics import (DEFAULT_TOLERANCE_MM, EvaluationError, case_metrics, class_key,
                                           normalize_class, resolve_tolerance, summarize)

#: geometry tolerances when comparing a prediction with its reference (mm for spacing/origin, unitless
#: for direction cosines and affines): ``|a - b| <= GEOMETRY_ATOL + GEOMETRY_RTOL * |b|``
GEOMETRY_ATOL = 1e-3
GEOMETRY_RTOL = 1e-4

#: columns of ``per_case.csv`` (one row per case and class)
PER_CASE_COLUMNS = ("case", "class", "name", "dice", "nsd", "hd95", "vol_ref", "vol_pred", "vol_diff",
                    "tolerance", "empty")
#: columns of ``summary.csv`` (one row per class, then the ``overall`` row)
SUMMARY_COLUMNS = ("class", "name", "n", "dice", "nsd", "hd95", "n_hd95", "n_one_empty", "n_both_empty",
                   "vol_ref", "vol_pred", "vol_diff", "abs_vol_diff", "tolerance")

CONVENTIONS = (
    "Dice = 2|R&P|/(|R|+|P|); NSD = normalised surface Dice at the tolerance (Nikolov et al. 2021, surface "
    "elements weighted by area, MONAI use_subvoxels=True); HD95 = max of the two directed 95th percentiles of "
    "surface-voxel distances (MONAI compute_hausdorff_distance, percentile=95); vol_diff = vol_pred - vol_ref. "
    "Both masks empty: Dice, NSD, HD95 NaN (left out of means). Exactly one empty: Dice 0, NSD 0 (in the means), "
    "HD95 NaN (left out of the HD95 mean, counted in n_one_empty). Class means are over cases; 'overall' is the "
    "mean of the class means.")


# --------------------------------------------------------------------------------------------- labels
def find_dataset_json(dataset) -> Path:
    """``dataset.json`` of an nnU-Net dataset (id or name): ``$nnUNet_raw/DatasetXXX_*/dataset.json``, else
    ``$nnUNet_preprocessed/DatasetXXX_*/dataset.json``."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(str(dataset))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise EvaluationError(f"dataset {dataset!r} not found: {first} (nnUNet_raw={os.environ.get('nnUNet_raw')}, "
                              f"nnUNet_preprocessed={os.environ.get('nnUNet_preprocessed')}); set these variables "
                              f"or pass --labels PATH/dataset.json") from None
    tried = []
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        root = os.environ.get(var)
        if root:
            cand = Path(root) / name / "dataset.json"
            tried.append(str(cand))
            if cand.is_file():
                return cand
    looked = ", ".join(tried) or "nothing: nnUNet_raw and nnUNet_preprocessed are not set"
    raise EvaluationError(f"no dataset.json for {name} (looked for {looked}); pass --labels PATH/dataset.json instead")


def _load_json_file(path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise EvaluationError(f"cannot read JSON file {path}: {e}") from None


def load_dataset_json(dataset_json) -> dict | None:
    """A dataset.json as a dict, from a dict, a path, or None."""
    if dataset_json is None or isinstance(dataset_json, Mapping):
        return dataset_json
    return _load_json_file(dataset_json)


def parse_labels(labels) -> tuple:
    """``({class: name}, ignore_label)`` from the forms ``labels`` may take.

    - ``{int: name}`` (the Python API form), or ``{name: value}`` like dataset.json's ``"labels"`` where a
      value is a label (int) or a region (a list of labels, nnU-Net's region-based training; evaluated as
      the union of its labels, as nnU-Net does). ``background`` (0) is skipped, and ``ignore`` becomes the
      ignore label (its voxels in the reference are left out of every metric).
    - a dataset.json dict (has ``"labels"``), a path to a dataset.json or to a JSON file holding a labels
      mapping, or inline JSON text of either.
    """
    if labels is None:
        return None, None
    if isinstance(labels, (str, os.PathLike)):
        text = str(labels).strip()
        if text.startswith("{"):
            try:
                labels = json.loads(text)
            except json.JSONDecodeError as e:
                raise EvaluationError(f"--labels is not valid JSON ({e}): {text}") from None
        elif os.path.isfile(text):
            labels = _load_json_file(text)
        else:
            raise EvaluationError(f"--labels {text!r}: no such file, and not inline JSON like "
                                  '\'{"liver": 1, "tumour": 2}\'')
    if not isinstance(labels, Mapping):
        raise EvaluationError(f"labels must be a mapping, got {type(labels).__name__}")
    if "labels" in labels and isinstance(labels["labels"], Mapping):  # a whole dataset.json
        labels = labels["labels"]
    out, ignore = {}, None
    for k, v in labels.items():
        api_form = isinstance(k, (int, np.integer, tuple)) or (  # {value: name}, also as JSON text {"1": "liver"}
            isinstance(k, str) and k.strip().isdigit() and isinstance(v, str) and not v.strip().isdigit())
        if api_form:
            cls, name = normalize_class(k), str(v)
        else:  # dataset.json form {name: value}
            cls, name = normalize_class(v), str(k)
            if name == "ignore":
                if isinstance(cls, tuple):
                    raise EvaluationError(f"the ignore label must be one label value, got {v!r}")
                ignore = cls
                continue
        if cls == 0:
            continue  # background is not evaluated
        members = cls if isinstance(cls, tuple) else (cls,)
        if any(m <= 0 for m in members):
            raise EvaluationError(f"class {name!r} = {v!r}: label values must be > 0 (background 0 is not evaluated)")
        if cls in out:
            raise EvaluationError(f"label {class_key(cls)} is given twice ({out[cls]!r} and {name!r})")
        out[cls] = name
    if not out:
        raise EvaluationError("the labels hold no foreground class (only background/ignore)")
    return out, ignore


def parse_tolerance(text):
    """The CLI's ``--tolerance``: ``1`` (mm, all classes), ``1=2.0,2=1.5`` (per class; a bare number in the
    list is the default for the classes not listed: ``1.0,2=1.5``; class names work as keys), inline JSON
    ``{"1": 2.0, "liver": 1.5, "default": 1}`` or a path to such a JSON file."""
    if text is None or isinstance(text, (int, float, Mapping)):
        return text
    text = str(text).strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise EvaluationError(f"--tolerance is not valid JSON ({e}): {text}") from None
    if text.lower().endswith(".json") or (os.path.isfile(text) and "=" not in text):
        return _load_json_file(text)
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise EvaluationError(f"--tolerance {text!r}: expected mm (e.g. 1), per class (e.g. 1=2.0,2=1.5) "
                                  "or JSON") from None
    out = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, v = (s.strip() for s in part.split("=", 1))
        else:
            k, v = "default", part
        try:
            out[k] = float(v)
        except ValueError:
            raise EvaluationError(f"--tolerance {text!r}: {v!r} is not a number of mm") from None
    return out


# --------------------------------------------------------------------------------------------- files
def _supported_endings() -> list:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = {e.lower() for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}
    return sorted(endings, key=len, reverse=True)


def infer_file_ending(folder: Path) -> str:
    """The one file ending (of those nnU-Net's readers know) of the segmentation files in ``folder``."""
    endings = _supported_endings()
    counts = {}
    for f in folder.iterdir():
        if f.name.startswith(".") or not f.is_file():
            continue
        for e in endings:  # longest first: ".nii.gz" before ".gz"-like shorter ones
            if f.name.lower().endswith(e):
                counts[e] = counts.get(e, 0) + 1
                break
    if not counts:
        raise EvaluationError(f"no segmentation files in {folder} (looked for {', '.join(sorted(endings))}); "
                              f"check the folder, or give the ending with --file-ending")
    if len(counts) > 1:
        found = ", ".join(f"{n} x {e}" for e, n in sorted(counts.items()))
        raise EvaluationError(f"{folder} holds files with several endings ({found}); choose one with --file-ending "
                              f"(or -d DATASET to use its dataset.json)")
    return next(iter(counts))


def list_cases(folder: Path, file_ending: str) -> dict:
    """``{case: file}`` of the visible files in ``folder`` ending in ``file_ending`` (sorted)."""
    n = len(file_ending)
    return {f.name[:-n]: f for f in sorted(folder.iterdir())
            if f.is_file() and not f.name.startswith(".") and f.name.endswith(file_ending) and len(f.name) > n}


def reader_class(dataset_json: dict | None, file_ending: str, example: Path):
    """nnU-Net's reader class for these files: dataset.json's, else the one for the file ending."""
    import contextlib
    import io

    from nnunetv2.imageio.reader_writer_registry import (determine_reader_writer_from_dataset_json,
                                                         determine_reader_writer_from_file_ending)

    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            if dataset_json is not None:
                dj = dict(dataset_json)
                dj.setdefault("file_ending", file_ending)
                return determine_reader_writer_from_dataset_json(dj, str(example), verbose=False)
            return determine_reader_writer_from_file_ending(file_ending, str(example), verbose=False)
    except RuntimeError:
        raise EvaluationError(f"no nnU-Net reader can read {example} (file ending {file_ending}); check the file "
                              f"or the ending (--file-ending)") from None


def _geometry(props: dict) -> dict:
    """What the reader tells about where the image lies: spacing, and origin/direction or affine."""
    geo = {"spacing": tuple(float(s) for s in props.get("spacing", ()))}
    sitk = props.get("sitk_stuff")
    if isinstance(sitk, Mapping):
        for k in ("origin", "direction"):
            if k in sitk:
                geo[k] = tuple(float(v) for v in np.ravel(sitk[k]))
    nib = props.get("nibabel_stuff")
    if isinstance(nib, Mapping) and "original_affine" in nib:
        geo["affine"] = tuple(float(v) for v in np.ravel(nib["original_affine"]))
    return geo


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _check_geometry(ref_shape, ref_geo, pred_shape, pred_geo, ref_path, pred_path) -> None:
    fix = ("predictions must lie on the reference image's grid (nnUNetv2_predict writes them so); resample the "
           "prediction onto the reference or check that both folders hold the same images")
    if tuple(ref_shape) != tuple(pred_shape):
        raise EvaluationError(f"{pred_path}: shape {tuple(pred_shape)} differs from the reference {ref_path} "
                              f"{tuple(ref_shape)}; {fix}")
    diffs = []
    for key in ("spacing", "origin", "direction", "affine"):
        if key not in ref_geo or key not in pred_geo:
            continue
        a, b = np.asarray(pred_geo[key], float), np.asarray(ref_geo[key], float)
        if a.shape != b.shape or not np.allclose(a, b, atol=GEOMETRY_ATOL, rtol=GEOMETRY_RTOL):
            diffs.append(f"{key} {_fmt(a)} vs reference {_fmt(b)}")
    if diffs:
        raise EvaluationError(f"{pred_path}: geometry differs from the reference {ref_path}: {'; '.join(diffs)}; {fix}")


def read_segmentation(reader, path: Path) -> tuple:
    """(label map 2D (y, x) or 3D (z, y, x), spacing of its axes, geometry dict, raw shape) with nnU-Net's reader."""
    from nnunet_ext.evaluation.metrics import as_label_array

    try:
        seg, props = reader.read_seg(str(path))
    except Exception as e:  # readers raise anything: name the file
        raise EvaluationError(f"cannot read {path} with {type(reader).__name__}: {type(e).__name__}: {e}") from None
    seg = np.asarray(seg)
    if seg.ndim != 4 or seg.shape[0] != 1:
        raise EvaluationError(f"{path}: expected one segmentation channel, got an array of shape {seg.shape} "
                              f"(a colour image? save label maps as single-channel images)")
    geo = _geometry(props)
    spacing = geo["spacing"]
    if len(spacing) != 3:
        raise EvaluationError(f"{path}: the reader reports spacing {spacing}, expected 3 values")
    seg = seg[0]
    if seg.shape[0] == 1:  # 2D image (nnU-Net's dummy first axis) or a single slice: evaluate its (y, x) plane
        seg, spacing = seg[0], spacing[1:]
    return as_label_array(seg, str(path)), spacing, geo, seg.shape


# --------------------------------------------------------------------------------------------- one case
def _worker_init() -> None:
    """One thread per worker process (the pool runs one case per core). Set before torch is imported, so
    that workers that never compute a surface distance do not pay for importing torch."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


def _evaluate_case(task: dict) -> dict:
    reader = task["reader"]()
    ref, spacing, ref_geo, ref_shape = read_segmentation(reader, task["ref_file"])
    pred, _, pred_geo, pred_shape = read_segmentation(reader, task["pred_file"])
    _check_geometry(ref_shape, ref_geo, pred_shape, pred_geo, task["ref_file"], task["pred_file"])
    present = sorted(int(v) for v in np.unique(ref) if v != 0)
    classes = task["classes"]
    if classes is None:  # labels from the references: all labels in this case's reference or prediction
        classes = sorted(set(present) | {int(v) for v in np.unique(pred) if v != 0} - {task["ignore_label"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. tolerances given for classes this case does not hold
        rows = case_metrics(ref, pred, spacing, classes, task["tolerance"], names=task["names"],
                            ignore_label=task["ignore_label"])
    return {"case": task["case"], "rows": rows, "present": present, "spacing": list(spacing),
            "shape": list(ref.shape), "dims": ref.ndim, "ref_file": str(task["ref_file"]),
            "pred_file": str(task["pred_file"])}


# --------------------------------------------------------------------------------------------- folders
def _refuse_placeholder_labels(dj: dict | None, gt_dir: Path) -> None:
    """Placeholder labels (an images-only dataset, ``nnunet-ext convert stego``) are never evaluated against:
    checked in the given dataset.json and in the one beside ``gt_dir`` (``labelsTr``/``labelsTs``)."""
    near = gt_dir.parent / "dataset.json"
    for d in (dj, _load_json_file(near) if near.is_file() else None):
        if d is not None:
            check_real_labels(d, f"evaluate {gt_dir}")


def evaluate_folders(gt_dir, pred_dir, labels=None, tolerance=1.0, num_processes=None, out_dir=None,
                     file_ending=None, dataset_json=None, progress=True, *, allow_missing=False) -> dict:
    """Evaluate every reference in ``gt_dir`` against the prediction of the same name in ``pred_dir``.

    labels: None (the classes from ``dataset_json`` if given, else every foreground label found in the
        reference files), ``{label_value: name}``, or any form :func:`parse_labels` takes (dataset.json
        path or dict, ``{name: value}``; regions as lists of labels).
    tolerance: NSD tolerance in mm: a number, or ``{label_value: mm}`` (optionally with ``"default"``).
    num_processes: worker processes (default ``min(cpu_count, 8)``, at most one per case; 1 = no pool).
    out_dir: if given, writes ``per_case.csv``, ``summary.csv``, ``summary.md`` and ``summary.json`` there.
    file_ending: e.g. ``".nii.gz"`` (default: dataset.json's, else the one ending found in ``gt_dir``).
    dataset_json: path or dict; chooses the reader (``overwrite_image_reader_writer``), the file ending,
        and the class names when ``labels`` is None.
    progress: show a tqdm progress bar (stderr).
    allow_missing: if False (default) a reference without prediction raises :class:`EvaluationError`
        naming the cases; if True such cases are skipped and listed in ``missing_in_pred``.
    Predictions without reference are ignored with a warning and listed in ``extra_in_pred``.

    Returns ``{"per_case": [rows as in per_case.csv], "per_class": {class: {"name", "dice", "nsd", "hd95",
    "vol_diff", "n", ...}}, "overall": {"dice", "nsd", "hd95", "n"}, "tolerance": {class: mm},
    "missing_in_pred": [...], "extra_in_pred": [...], "cases": [case ids], ...}``; see
    :func:`nnunet_ext.evaluation.metrics.summarize` for the summary columns and
    :mod:`nnunet_ext.evaluation.metrics` for the definitions and the empty-mask conventions.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    _check_folders(gt_dir, pred_dir, out_dir)
    dj = load_dataset_json(dataset_json)
    _refuse_placeholder_labels(dj, gt_dir)
    if isinstance(tolerance, str):  # the CLI's forms ("1", "1=2.0,2=1.5", JSON) work here too
        tolerance = parse_tolerance(tolerance)
    file_ending = _choose_file_ending(file_ending, dj, gt_dir)
    names, ignore_label, label_source = _choose_labels(labels, dj)
    gt_cases, pred_cases, missing, extra = _pair_cases(gt_dir, pred_dir, file_ending, allow_missing)
    cases = [c for c in gt_cases if c in pred_cases]

    classes = list(names) if names is not None else None
    if classes is not None:
        tol_map = resolve_tolerance(tolerance, classes, names)  # bad or incomplete tolerances fail here
        task_tol = tol_map
    else:  # classes known only after reading: check the values now, completeness at the end
        task_tol = _tolerance_for_unknown_classes(tolerance)

    reader = reader_class(dj, file_ending, gt_cases[cases[0]])
    tasks = [{"case": c, "ref_file": gt_cases[c], "pred_file": pred_cases[c], "reader": reader, "classes": classes,
              "names": names, "ignore_label": ignore_label,
              "tolerance": task_tol} for c in cases]
    results = _run(tasks, num_processes, progress)

    if classes is None:  # the foreground labels present in the references
        classes, names = _classes_found(results, ignore_label, gt_dir)
        tol_map = resolve_tolerance(tolerance, classes, names)
    _warn_unevaluated_labels(results, classes, ignore_label, label_source)
    per_case = _per_case_rows(results, classes, names, tol_map)
    result = _result(per_case, results, classes, names, tol_map, missing, extra, label_source, ignore_label,
                     gt_dir, pred_dir, file_ending, reader)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def _check_folders(gt_dir: Path, pred_dir: Path, out_dir) -> None:
    """Both input folders exist; the output folder (if any) can be written."""
    for what, d in (("reference folder", gt_dir), ("prediction folder", pred_dir)):
        if not d.is_dir():
            raise EvaluationError(f"{what} {d} does not exist or is not a folder")
    if out_dir is not None:
        require_output_folder(out_dir, "output folder", EvaluationError)


def _choose_file_ending(file_ending, dj: dict | None, gt_dir: Path) -> str:
    """The given ending, else dataset.json's, else the one ending found in ``gt_dir``; with its leading dot."""
    if file_ending is None:
        file_ending = dj.get("file_ending") if dj and dj.get("file_ending") else infer_file_ending(gt_dir)
    return file_ending if file_ending.startswith(".") else "." + file_ending


def _choose_labels(labels, dj: dict | None):
    """``(names, ignore_label, source)``: from ``labels``, else dataset.json, else (None, None) = the foreground
    labels found in the reference files."""
    if labels is not None:
        return (*parse_labels(labels), "labels argument")
    if dj is not None and "labels" in dj:
        return (*parse_labels(dj), "dataset.json")
    return None, None, "foreground labels found in the reference files"


def _pair_cases(gt_dir: Path, pred_dir: Path, file_ending: str, allow_missing: bool):
    """``(references, predictions, missing, extra)`` by case id: a reference without prediction is an error
    (unless ``allow_missing``), a prediction without reference a warning; at least one case has both."""
    gt_cases = list_cases(gt_dir, file_ending)
    if not gt_cases:
        raise EvaluationError(f"no reference files ending in {file_ending} in {gt_dir}")
    pred_cases = list_cases(pred_dir, file_ending)
    missing = sorted(set(gt_cases) - set(pred_cases))
    extra = sorted(set(pred_cases) - set(gt_cases))
    if missing and not allow_missing:
        shown = ", ".join(missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        raise EvaluationError(f"{len(missing)} of {len(gt_cases)} reference cases have no prediction in {pred_dir}: "
                              f"{shown} (expected e.g. {pred_dir / (missing[0] + file_ending)}); predict them, or "
                              f"pass --allow-missing to evaluate only the cases present")
    if extra:
        warnings.warn(f"{len(extra)} prediction(s) in {pred_dir} have no reference in {gt_dir} and are ignored: "
                      f"{', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}", stacklevel=3)
    if not any(c in pred_cases for c in gt_cases):
        raise EvaluationError(f"no case has both a reference in {gt_dir} and a prediction in {pred_dir}")
    return gt_cases, pred_cases, missing, extra


def _classes_found(results: list, ignore_label, gt_dir: Path):
    """``(classes, names)`` when no labels were given: the foreground labels present in the references."""
    classes = sorted(set().union(*(r["present"] for r in results)) - {ignore_label})
    if not classes:
        raise EvaluationError(f"the references in {gt_dir} hold no foreground label; pass the labels to "
                              f"evaluate (-d DATASET or --labels)")
    return classes, {c: f"label_{c}" for c in classes}


def _warn_unevaluated_labels(results: list, classes, ignore_label, label_source: str) -> None:
    unexpected = sorted(set().union(*(r["present"] for r in results)) - set(_all_members(classes)) - {ignore_label})
    if unexpected:
        warnings.warn(f"label values {unexpected} occur in the references but are not among the evaluated classes "
                      f"({label_source}); they are not evaluated", stacklevel=3)


def _per_case_rows(results: list, classes, names: dict, tol_map) -> list:
    """One row (``PER_CASE_COLUMNS``) per case and class; a class absent from a case's reference and prediction
    (labels from the files) gets NaN metrics and ``empty = "both"``."""
    per_case = []
    for r in results:
        by_class = {row["class"]: row for row in r["rows"]}
        for c in classes:
            row = by_class.get(c)
            if row is None:  # labels from files: absent from this case's reference and prediction
                row = {"class": c, "dice": math.nan, "nsd": math.nan, "hd95": math.nan, "vol_ref": 0.0,
                       "vol_pred": 0.0, "vol_diff": 0.0, "tolerance": tol_map[c], "empty": "both"}
            full = {**row, "case": r["case"], "class": c, "name": names[c]}
            per_case.append({k: full[k] for k in PER_CASE_COLUMNS})
    return per_case


def _result(per_case: list, results: list, classes, names: dict, tol_map, missing: list, extra: list,
            label_source: str, ignore_label, gt_dir: Path, pred_dir: Path, file_ending: str, reader) -> dict:
    """The summary (``summarize``) and everything that says how it was computed, with its markdown."""
    per_class, overall = summarize(per_case, classes, names)
    dims = sorted({r["dims"] for r in results})
    result = {
        "per_case": per_case,
        "per_class": per_class,
        "overall": overall,
        "tolerance": dict(tol_map),
        "missing_in_pred": missing,
        "extra_in_pred": extra,
        "cases": [r["case"] for r in results],
        "case_files": [{k: r[k] for k in ("case", "ref_file", "pred_file", "spacing", "shape", "dims")}
                       for r in results],
        "classes": {c: names[c] for c in classes},
        "label_source": label_source,
        "ignore_label": ignore_label,
        "gt_dir": str(gt_dir),
        "pred_dir": str(pred_dir),
        "file_ending": file_ending,
        "reader": reader.__name__,
        "spacing_source": f"each reference file, as read by nnU-Net's {reader.__name__} (predictions checked to "
                          f"match within atol {GEOMETRY_ATOL} / rtol {GEOMETRY_RTOL}); 2D images use their "
                          f"in-plane spacing",
        "volume_unit": {(2,): "mm^2", (3,): "mm^3"}.get(tuple(dims), "mm^2 (2D cases) / mm^3 (3D cases)"),
        "conventions": CONVENTIONS,
    }
    result["markdown"] = format_markdown(result)
    return result


def _all_members(classes) -> list:
    out = []
    for c in classes:
        out.extend(c if isinstance(c, tuple) else (c,))
    return out


def _tolerance_for_unknown_classes(tolerance):
    """The tolerance handed to the workers when the classes are not known yet: a number, or ``{class: mm,
    "default": mm}`` (values checked; a class without tolerance is caught once the classes are known)."""
    if not isinstance(tolerance, Mapping):
        return resolve_tolerance(tolerance, [0])[0]
    out = {"default": DEFAULT_TOLERANCE_MM}
    for k, v in tolerance.items():
        if k is None or (isinstance(k, str) and k.strip().lower() == "default"):
            out["default"] = resolve_tolerance(v, [0])[0]
        else:
            key = normalize_class(k)
            out[key] = resolve_tolerance(v, [key])[key]
    return out


def _run(tasks: list, num_processes, progress: bool) -> list:
    from tqdm import tqdm

    if num_processes is None:
        num_processes = min(os.cpu_count() or 1, 8)
    try:
        num_processes = int(num_processes)
    except (TypeError, ValueError):
        raise EvaluationError(f"number of processes {num_processes!r} is not an integer") from None
    if num_processes < 1:
        raise EvaluationError(f"number of processes must be >= 1, got {num_processes}")
    num_processes = min(num_processes, len(tasks))
    bar = tqdm(total=len(tasks), desc="evaluate", unit="case", disable=not progress, file=sys.stderr)
    results = []
    try:
        if num_processes == 1:
            for t in tasks:
                results.append(_evaluate_case(t))
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn, as nnU-Net does: the parent may hold torch/OpenMP threads that fork would copy badly
            ex = ProcessPoolExecutor(num_processes, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init)
            try:
                futures = [ex.submit(_evaluate_case, t) for t in tasks]
                for fut in as_completed(futures):
                    results.append(fut.result())
                    bar.update()
            finally:
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    order = {t["case"]: i for i, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[r["case"]])


# --------------------------------------------------------------------------------------------- outputs
def _num(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_markdown(result: dict) -> str:
    """The summary as a markdown table: one row per class, then the overall mean."""
    unit = result.get("volume_unit", "mm^3")
    tols = sorted({float(v) for v in result["tolerance"].values()})
    tol_text = f"{tols[0]:g} mm" if len(tols) == 1 else "per class"
    lines = [f"| class | name | n | Dice | NSD ({tol_text}) | HD95 (mm) | HD95 n | one empty | both empty "
             f"| mean vol diff ({unit}) | mean abs vol diff ({unit}) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, v in result["per_class"].items():
        lines.append(f"| {class_key(c)} | {v['name']} | {v['n']} | {_num(v['dice'], 4)} | {_num(v['nsd'], 4)} | "
                     f"{_num(v['hd95'], 2)} | {v['n_hd95']} | {v['n_one_empty']} | {v['n_both_empty']} | "
                     f"{_num(v['vol_diff'], 1)} | {_num(v['abs_vol_diff'], 1)} |")
    o = result["overall"]
    lines.append(f"| **overall** | mean of classes | {o['n']} | **{_num(o['dice'], 4)}** | **{_num(o['nsd'], 4)}** | "
                 f"**{_num(o['hd95'], 2)}** | | | | | |")
    lines.append("")
    lines.append(f"{len(result['cases'])} cases. n: cases where the class is in the reference or the prediction "
                 f"(Dice/NSD means); HD95 n: cases where both are non-empty (HD95 mean); one empty: HD95 undefined "
                 f"(Dice 0, NSD 0); both empty: left out. vol diff = pred - ref.")
    if result.get("missing_in_pred"):
        lines.append(f"Not evaluated (no prediction): {', '.join(result['missing_in_pred'])}.")
    return "\n".join(lines) + "\n"


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {class_key(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _csv_value(v):
    if isinstance(v, tuple):
        return class_key(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v


def _csv_text(rows, columns) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _csv_value(row.get(k, "")) for k in columns})
    return buf.getvalue()


def write_outputs(result: dict, out_dir) -> dict:
    """Write per_case.csv, summary.csv, summary.md and summary.json to ``out_dir`` (created); returns the paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvaluationError(f"cannot create output folder {out}: {e}") from None
    summary_rows = [{"class": c, **v} for c, v in result["per_class"].items()]
    summary_rows.append({"class": "overall", "name": "mean of classes", **result["overall"]})
    paths = {"per_case": out / "per_case.csv", "summary_csv": out / "summary.csv", "summary_md": out / "summary.md",
             "summary_json": out / "summary.json"}
    write_text_atomic(paths["per_case"], _csv_text(result["per_case"], PER_CASE_COLUMNS))
    write_text_atomic(paths["summary_csv"], _csv_text(summary_rows, SUMMARY_COLUMNS))
    write_text_atomic(paths["summary_md"], result.get("markdown") or format_markdown(result))
    payload = {k: v for k, v in result.items() if k != "markdown"}
    write_text_atomic(paths["summary_json"], json.dumps(_jsonable(payload), indent=2) + "\n")
    return paths
