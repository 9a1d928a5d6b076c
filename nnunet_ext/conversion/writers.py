"""Reading and writing single images in the forms nnU-Net's readers expect.

* 3D volumes are written as NIfTI (``.nii.gz``) with SimpleITK, keeping spacing, origin and direction.
* 2D natural images are written as PNG for nnU-Net's ``NaturalImage2DIO``: one file ``<case>_0000.png``
  that is either RGB (read by nnU-Net as 3 channels R, G, B) or greyscale (1 channel).
* Labels are written as uint8 images whose values are consecutive integers 0..K.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image

from .errors import CaseDataError, reading

IDENTITY_3D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def write_volume(array_zyx: np.ndarray, path: str, spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
                 origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
                 direction: Sequence[float] = IDENTITY_3D, dtype=None) -> None:
    """Write a numpy volume in SimpleITK's (z, y, x) index order with the given geometry."""
    arr = np.asarray(array_zyx)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    img.SetOrigin(tuple(float(o) for o in origin_xyz))
    img.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(img, path, True)


def read_natural_image(path: str) -> np.ndarray:
    """Read an 8-bit 2D image file as uint8: (H, W) for greyscale, (H, W, 3) for colour (alpha dropped).

    Raises :class:`CaseDataError` (a ``ValueError``) for images with more than 8 bits per channel
    (nnU-Net's PNG reader would accept them, but mixing them with 8-bit colour images in one dataset
    is not meaningful) and :class:`CorruptFileError` for a file that cannot be read (a truncated JPEG).
    """
    with reading(path):
        with Image.open(path) as im:
            if im.mode in ("L", "LA", "1"):
                return np.asarray(im.convert("L"))
            if im.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                return np.asarray(im.convert("RGB"))
            mode = im.mode
    raise CaseDataError(path, f"unsupported image mode {mode!r} (only 8-bit grey or colour)",
                        fix="convert the image to 8-bit")


def to_mode(arr: np.ndarray, rgb: bool) -> np.ndarray:
    """Convert an image read by :func:`read_natural_image` to RGB (H, W, 3) or greyscale (H, W)."""
    if rgb:
        return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr
    if arr.ndim == 3:
        return np.asarray(Image.fromarray(arr).convert("L"))
    return arr


def write_png(arr: np.ndarray, path: str) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as a losslessly compressed PNG."""
    Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8, copy=False))).save(path, compress_level=1)


def read_mask(path: str) -> np.ndarray:
    """Read a 2D mask file as a (H, W) array; for colour masks the maximum over R, G, B is used, so a
    mask drawn in any pure colour keeps its foreground. An unreadable file raises :class:`CorruptFileError`."""
    with reading(path):
        with Image.open(path) as im:
            if im.mode in ("L", "I", "I;16", "F"):
                return np.asarray(im)
            if im.mode == "1":
                return np.asarray(im, dtype=np.uint8) * 255
            return np.asarray(im.convert("RGB")).max(axis=2)


def binarise(mask: np.ndarray, threshold: float = 127) -> np.ndarray:
    """Foreground where ``mask > threshold`` (handles 0/255 PNGs and lossy JPEG masks); uint8 0/1."""
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return (mask > threshold).astype(np.uint8)


def map_labels(label: np.ndarray, mapping: Mapping[int, int], where: str = "") -> np.ndarray:
    """Map label values through ``mapping`` (source value -> consecutive target value).

    Raises :class:`CaseDataError` (a ``ValueError``) naming the unexpected values (and ``where``) if a
    value is not mapped.
    """
    values = np.unique(label)
    unknown = [int(v) for v in values if int(v) not in mapping]
    if unknown:
        raise CaseDataError(where or "label", f"unexpected label values {unknown}; expected only {sorted(mapping)}",
                            fix="check that this is the dataset the converter is for")
    if all(int(k) == int(v) for k, v in mapping.items()):
        return label.astype(np.uint8, copy=False)
    lut = np.zeros(int(max(values.max(), max(mapping))) + 1, dtype=np.uint8)
    for k, v in mapping.items():
        if k < len(lut):
            lut[int(k)] = int(v)
    return lut[label.astype(np.int64)]


def check_label_values(label: np.ndarray, allowed: Sequence[int], where: str) -> None:
    """Raise :class:`CaseDataError` (a ``ValueError``) when ``label`` holds values outside ``allowed``."""
    found = [int(v) for v in np.unique(label)]
    bad = [v for v in found if v not in set(int(a) for a in allowed)]
    if bad:
        raise CaseDataError(where, f"unexpected label values {bad}; expected only {sorted(allowed)}",
                            fix="check that this is the dataset the converter is for (and its label names)")


def stack_slices(slices: Sequence[np.ndarray], where: str) -> np.ndarray:
    """Stack equally shaped 2D slices into a (z, y, x) volume; clear error on shape mismatch."""
    shapes = {tuple(s.shape) for s in slices}
    if len(shapes) != 1:
        raise CaseDataError(where, f"cannot stack slices of different shapes {sorted(shapes)} into one volume",
                            fix="check that the slice files belong to one volume")
    return np.stack(slices, axis=0)
