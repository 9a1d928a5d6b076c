"""3D volumes stored as arrays (h5 volumes, per-slice h5/npz files) or NIfTI pairs, written as NIfTI.

Array files carry no geometry, so the writer gets the voxel spacing from the converter (an option
with a documented default) and uses origin (0, 0, 0) and the identity direction. Array axis order is
``'zyx'`` (slices first, as SimpleITK's ``GetArrayFromImage`` returns it) or ``'xyz'`` (as written by
``nrrd.read``, e.g. the LA 2018 h5 files); volumes stacked from 2D slices are ``'zyx'``.

``case.source`` for :func:`write_volume_case` is a dict with ``kind`` and:

* ``h5``: ``path`` (datasets ``image`` and ``label``), ``spacing`` (x, y, z), ``axes``;
* ``slices``: ``paths`` (one file per slice, in slice order, ``.npz`` or ``.h5`` with ``image`` and
  ``label``), ``spacing``;
* ``nifti``: ``image`` and ``label`` NIfTI paths (copied unchanged; geometry kept exactly);

plus ``labels``: the allowed label values (after mapping) and optionally ``label_map``
(source value -> target value).
"""
from __future__ import annotations

import os
import re
import shutil
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .build import Case
from .errors import SourceLayoutError
from .writers import check_label_values, map_labels, stack_slices, write_volume


def read_arrays(path: str, converter: str = "", keys: Sequence[str] = ("image", "label")) -> Tuple[np.ndarray, ...]:
    """Read the ``keys`` arrays from an ``.h5`` or ``.npz`` file; missing keys raise SourceLayoutError."""
    if path.endswith(".npz"):
        with np.load(path) as f:
            found = list(f.keys())
            if not all(k in found for k in keys):
                raise SourceLayoutError(converter, f"arrays {list(keys)} in each .npz file", f"arrays {found}", path)
            return tuple(np.asarray(f[k]) for k in keys)
    import h5py
    with h5py.File(path, "r") as f:
        found = list(f.keys())
        if not all(k in found for k in keys):
            raise SourceLayoutError(converter, f"datasets {list(keys)} in each .h5 file", f"datasets {found}", path)
        return tuple(np.asarray(f[k][()]) for k in keys)


def group_slices(converter: str, folder: str, files: Sequence[str], pattern: str) -> Dict[str, List[str]]:
    """Group slice files by case: ``pattern`` has groups (case, index). Indices of a case must be
    0..n-1 without gaps (else the volume cannot be rebuilt) -> case -> file paths in slice order."""
    rx = re.compile(pattern)
    groups: Dict[str, List[Tuple[int, str]]] = defaultdict(list)
    for f in files:
        m = rx.match(f)
        if not m:
            raise SourceLayoutError(converter, f"slice files named like {pattern!r}", f"file {f!r}",
                                    os.path.join(folder, f))
        groups[m.group(1)].append((int(m.group(2)), f))
    out = {}
    for case, items in sorted(groups.items()):
        items.sort()
        idx = [i for i, _ in items]
        if idx != list(range(len(idx))):
            gaps = sorted(set(range(max(idx) + 1)) - set(idx))[:5]
            raise SourceLayoutError(converter, f"slices 0..n-1 of case {case!r} without gaps (to rebuild the volume)",
                                    f"indices {idx[:3]}...{idx[-2:]} (missing {gaps})" if gaps
                                    else "duplicate indices",
                                    folder)
        out[case] = [os.path.join(folder, f) for _, f in items]
    return out


def _to_zyx(arr: np.ndarray, axes: str) -> np.ndarray:
    if arr.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {arr.shape}")
    return arr if axes == "zyx" else np.transpose(arr, (2, 1, 0))


def write_volume_case(case: Case, images_dir: str, labels_dir: str) -> List[int]:
    """Writer for :func:`~nnunet_ext.conversion.build.build_dataset` (see module docstring)."""
    src = case.source
    img_out = os.path.join(images_dir, case.case_id + "_0000.nii.gz")
    lab_out = os.path.join(labels_dir, case.case_id + ".nii.gz")
    kind = src["kind"]
    if kind == "nifti":
        label = sitk.GetArrayFromImage(sitk.ReadImage(src["label"]))
        if src.get("label_map"):
            raise ValueError("label_map is not supported for NIfTI copies")
        check_label_values(label, src["labels"], src["label"])
        shutil.copyfile(src["image"], img_out)
        shutil.copyfile(src["label"], lab_out)
        return [int(v) for v in np.unique(label)]
    if kind == "h5":
        image, label = read_arrays(src["path"], src.get("converter", ""))
        image, label = _to_zyx(image, src.get("axes", "zyx")), _to_zyx(label, src.get("axes", "zyx"))
        where = src["path"]
    elif kind == "slices":
        pairs = [read_arrays(p, src.get("converter", "")) for p in src["paths"]]
        where = os.path.dirname(src["paths"][0]) + f" ({case.case_id})"
        image = stack_slices([p[0] for p in pairs], where)
        label = stack_slices([p[1] for p in pairs], where)
    else:
        raise ValueError(f"unknown source kind {kind!r}")
    if image.shape != label.shape:
        raise ValueError(f"image shape {image.shape} != label shape {label.shape} in {where}")
    if label.dtype.kind == "f":
        if not np.all(np.mod(label, 1) == 0):
            raise ValueError(f"non-integer label values in {where}")
        label = label.astype(np.int64)
    if src.get("label_map"):
        label = map_labels(label, src["label_map"], where)
    else:
        check_label_values(label, src["labels"], where)
    image = image.astype(np.float32, copy=False) if image.dtype.kind == "f" else image
    write_volume(image, img_out, src["spacing"])
    write_volume(label.astype(np.uint8), lab_out, src["spacing"])
    return [int(v) for v in np.unique(label)]
