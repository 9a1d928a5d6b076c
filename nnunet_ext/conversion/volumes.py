"""3D volumes stored as arrays (h5 volumes, per-slice h5/npz files) or NIfTI pairs, written as NIfTI.

Array files carry no geometry, so the writer gets the voxel spacing from the converter (an option
with a documented default) and uses origin (0, 0, 0) and the identity direction. Array axis order is
``'zyx'`` (slices first, as SimpleITK's ``GetArrayFromImage`` returns it) or ``'xyz'`` (as written by
``nrrd.read``, e.g. the LA 2018 h5 files); volumes stacked from 2D slices are ``'zyx'``.

``case.source`` for :func:`write_volume_case` is a dict with ``kind`` and:

* ``h5``: ``path`` (datasets ``image`` and ``label``), ``spacing`` (x, y, z), ``axes``;
* ``slices``: ``paths`` (one file per slice, in slice order, ``.npz`` or ``.h5`` with ``image`` and
  ``label``), ``spacing``;
* ``nifti``: ``image`` and ``label`` NIfTI paths (copied unchanged; geometry kept exactly); with
  ``link``: hard-linked where the file system allows (:func:`nnunet_ext.paths.link_or_copy`), else
  copied. For a case without label (``Case.unlabeled``: ``labels_dir`` is None) only ``image`` is
  needed: it must be a 3D volume and is read whole (a truncated file is found here), or, with
  ``check='header'``, only its header is read (fast, for thousands of unlabelled CTs);

plus ``labels``: the allowed label values (after mapping) and optionally ``label_map``
(source value -> target value).
"""
from __future__ import annotations

import os
import re
import shutil
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_ext.paths import link_or_copy

from .build import Case
from .errors import CaseDataError, SourceLayoutError, reading
from .writers import check_label_values, map_labels, stack_slices, write_volume


def read_arrays(path: str, converter: str = "", keys: Sequence[str] = ("image", "label")) -> Tuple[np.ndarray, ...]:
    """Read the ``keys`` arrays from an ``.h5`` or ``.npz`` file; missing keys raise SourceLayoutError,
    a file that cannot be read (truncated, corrupt) raises CorruptFileError."""
    with reading(path):
        if path.endswith(".npz"):
            with np.load(path) as f:
                found = list(f.keys())
                if not all(k in found for k in keys):
                    raise SourceLayoutError(converter, f"arrays {list(keys)} in each .npz file", f"arrays {found}",
                                            path)
                return tuple(np.asarray(f[k]) for k in keys)
        import h5py
        with h5py.File(path, "r") as f:
            found = list(f.keys())
            if not all(k in found for k in keys):
                raise SourceLayoutError(converter, f"datasets {list(keys)} in each .h5 file", f"datasets {found}",
                                        path)
            return tuple(np.asarray(f[k][()]) for k in keys)


def parse_slice_names(files: Sequence[str], pattern: str, flags: int = 0) -> Tuple[Dict[str, List[Tuple[int, str]]],
                                                                                   List[str]]:
    """Split file paths into slices and others by name: ``pattern`` (matched against the base name)
    has groups (case, index). Returns ({case: [(index, path), ...]}, [paths that are not slices])."""
    rx = re.compile(pattern, flags)
    groups: Dict[str, List[Tuple[int, str]]] = defaultdict(list)
    others = []
    for p in files:
        m = rx.match(os.path.basename(p))
        if m:
            groups[m.group(1)].append((int(m.group(2)), p))
        else:
            others.append(p)
    return dict(groups), others


def slice_numbering(groups: Dict[str, List[Tuple[int, str]]]) -> int:
    """The first slice index of this copy: 0, or 1 when no case has a slice 0 (copies number slices
    either way; one copy uses one convention)."""
    return 0 if not groups or any(min(i for i, _ in items) == 0 for items in groups.values()) else 1


def order_slices(converter: str, groups: Dict[str, List[Tuple[int, str]]], cases: Optional[Sequence[str]] = None,
                 start: Optional[int] = None) -> Dict[str, List[str]]:
    """case -> slice paths in slice order, for ``cases`` (default: all). The indices of a case must be
    ``start .. start+n-1`` without gaps or duplicates (else the volume cannot be rebuilt); ``start``
    defaults to :func:`slice_numbering` of all groups."""
    start = slice_numbering(groups) if start is None else start
    out = {}
    for case in sorted(groups if cases is None else cases):
        items = sorted(groups[case])
        idx = [i for i, _ in items]
        folder = os.path.dirname(items[0][1])
        if idx != list(range(start, start + len(idx))):
            gaps = sorted(set(range(start, max(idx) + 1)) - set(idx))[:5]
            found = (f"indices {idx[:3]}...{idx[-2:]} (missing {gaps})" if gaps else
                     f"duplicate indices {sorted({i for i in idx if idx.count(i) > 1})[:5]}")
            if gaps and start == 0 and min(idx) == 1:
                found += ("; this case's slices start at 1 while other cases' start at 0, so its slice 0 is "
                          "missing")
            raise SourceLayoutError(converter, f"slices {start}..n{'-1' if start == 0 else ''} of case {case!r} "
                                    "without gaps (to rebuild the volume)", found, folder)
        out[case] = [p for _, p in items]
    return out


def group_slices(converter: str, folder: str, files: Sequence[str], pattern: str) -> Dict[str, List[str]]:
    """Group the slice files ``files`` (names in ``folder``) by case: ``pattern`` has groups (case,
    index); every file must match. Indices of a case must be contiguous from 0 (or from 1 in a copy
    that numbers all slices from 1) -> case -> file paths in slice order."""
    groups, others = parse_slice_names([os.path.join(folder, f) for f in files], pattern)
    if others:
        raise SourceLayoutError(converter, f"slice files named like {pattern!r}",
                                f"file {os.path.basename(others[0])!r}", others[0])
    return order_slices(converter, groups)


def _to_zyx(arr: np.ndarray, axes: str, where: str, what: str) -> np.ndarray:
    if arr.ndim != 3:
        hint = (" (a 2D slice: name slice files <case>_slice_<k>.h5 so that they are stacked into a volume)"
                if arr.ndim == 2 else "")
        raise CaseDataError(where, f"expected a 3D {what} array, got shape {tuple(arr.shape)}{hint}",
                            fix="check that the file holds a whole volume")
    return arr if axes == "zyx" else np.transpose(arr, (2, 1, 0))


def _read_nifti(path: str):
    with reading(path):
        return sitk.ReadImage(path)


def check_nifti_image(path: str, check: str = "full") -> None:
    """Check that ``path`` is a readable 3D image: ``check='full'`` reads it whole (finds truncated files),
    ``'header'`` reads its header only. Raises CorruptFileError / CaseDataError naming the file."""
    with reading(path):
        if check == "full":
            dim = sitk.ReadImage(path).GetDimension()
        elif check == "header":
            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
            dim = reader.GetDimension()
        else:
            raise ValueError(f"unknown check {check!r} (expected 'full' or 'header')")
    if dim != 3:
        raise CaseDataError(path, f"a {dim}D image (expected a 3D volume with one channel)",
                            fix="check that the file is an image volume of this dataset")


def _put(src: str, dst: str, link: bool) -> None:
    """Copy ``src`` to ``dst`` unchanged; with ``link`` hard-link it where the file system allows."""
    if link:
        link_or_copy(src, dst)
    else:
        shutil.copyfile(src, dst)


def write_volume_case(case: Case, images_dir: str, labels_dir: str) -> List[int]:
    """Writer for :func:`~nnunet_ext.conversion.build.build_dataset` (see module docstring)."""
    src = case.source
    img_out = os.path.join(images_dir, case.case_id + "_0000.nii.gz")
    kind = src["kind"]
    if kind == "nifti" and labels_dir is None:  # an image without label (imagesUnlabeled, or imagesTs)
        check_nifti_image(src["image"], src.get("check", "full"))
        _put(src["image"], img_out, src.get("link", False))
        return []
    lab_out = os.path.join(labels_dir, case.case_id + ".nii.gz")
    if kind == "nifti":
        image = _read_nifti(src["image"])  # read, not only copied: a truncated file is found here
        label_img = _read_nifti(src["label"])
        if image.GetSize() != label_img.GetSize():
            raise CaseDataError(src["label"], f"label size {label_img.GetSize()} differs from the image's "
                                f"{image.GetSize()} ({src['image']})", fix="check that the label belongs to the image")
        label = sitk.GetArrayFromImage(label_img)
        if src.get("label_map"):
            raise ValueError("label_map is not supported for NIfTI copies")
        check_label_values(label, src["labels"], src["label"])
        _put(src["image"], img_out, src.get("link", False))
        _put(src["label"], lab_out, src.get("link", False))
        return [int(v) for v in np.unique(label)]
    if kind == "h5":
        image, label = read_arrays(src["path"], src.get("converter", ""))
        where = src["path"]
        image = _to_zyx(image, src.get("axes", "zyx"), where, "image")
        label = _to_zyx(label, src.get("axes", "zyx"), where, "label")
    elif kind == "slices":
        pairs = [read_arrays(p, src.get("converter", "")) for p in src["paths"]]
        where = os.path.dirname(src["paths"][0]) + f" (slices of {case.case_id})"
        for p, (im, lab) in zip(src["paths"], pairs):
            if im.ndim != 2 or lab.ndim != 2:
                raise CaseDataError(p, f"expected 2D slice arrays, got image {tuple(im.shape)}, label "
                                    f"{tuple(lab.shape)}", fix="check that the file is a slice")
        image = stack_slices([p[0] for p in pairs], where)
        label = stack_slices([p[1] for p in pairs], where)
    else:
        raise ValueError(f"unknown source kind {kind!r}")
    if image.shape != label.shape:
        raise CaseDataError(where, f"image shape {image.shape} != label shape {label.shape}",
                            fix="check that image and label belong together")
    if label.dtype.kind == "f":
        if not np.all(np.mod(label, 1) == 0):
            raise CaseDataError(where, "non-integer label values", fix="check that 'label' holds a label map")
        label = label.astype(np.int64)
    if src.get("label_map"):
        label = map_labels(label, src["label_map"], where)
    else:
        check_label_values(label, src["labels"], where)
    image = image.astype(np.float32, copy=False) if image.dtype.kind == "f" else image
    write_volume(image, img_out, src["spacing"])
    write_volume(label.astype(np.uint8), lab_out, src["spacing"])
    return [int(v) for v in np.unique(label)]
