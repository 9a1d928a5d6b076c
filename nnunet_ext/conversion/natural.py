"""2D natural images (photographs, endoscopy, dermoscopy, histology, ultrasound) with binary masks.

Written for nnU-Net's ``NaturalImage2DIO``: ``imagesXx/<case>_0000.png`` is RGB (nnU-Net reads it as
3 channels R, G, B) or greyscale (1 channel), consistently for the whole dataset, and
``labelsXx/<case>.png`` is a uint8 mask with values 0 (background) and 1 (foreground), obtained by
thresholding the source mask at ``> 127`` (masks are often 0/255 PNGs or lossy JPEGs).
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List

import numpy as np
from PIL import Image

from .build import Case
from .errors import CaseDataError, ConversionArgumentError
from .writers import binarise, read_mask, read_natural_image, to_mode, write_png

RGB_CHANNELS = {"0": "R", "1": "G", "2": "B"}
GREY_CHANNELS = {"0": "grey"}
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def channel_names(rgb: bool) -> Dict[str, str]:
    """dataset.json channel names for RGB (R, G, B) or greyscale images."""
    return dict(RGB_CHANNELS if rgb else GREY_CHANNELS)


def safe_case_id(stem: str) -> str:
    """A case id usable in nnU-Net file names (runs of other characters become '_')."""
    return _SAFE.sub("_", stem).strip("_") or "case"


def decide_rgb(color: str, image_paths: Iterable[str]) -> bool:
    """``color`` is 'rgb', 'grey' or 'auto' (RGB if any image file is stored in a colour mode; this
    only reads file headers; a file that cannot be opened is left out here and reported when its case
    is converted)."""
    if color in ("rgb", "grey", "gray"):
        return color == "rgb"
    if color != "auto":
        raise ConversionArgumentError(f"color must be 'auto', 'rgb' or 'grey', got {color!r}")
    for p in image_paths:
        try:
            with Image.open(p) as im:
                mode = im.mode
        except Exception:  # unreadable: the writer names it (or --skip-bad skips it)
            continue
        if mode not in ("L", "LA", "1", "I", "I;16", "F"):
            return True
    return False


def write_natural_case(case: Case, images_dir: str, labels_dir: str) -> List[int]:
    """Writer for :func:`~nnunet_ext.conversion.build.build_dataset`; ``case.source`` is a dict with
    ``image``, ``mask`` (paths), ``rgb`` (bool) and ``threshold``."""
    src = case.source
    img = to_mode(read_natural_image(src["image"]), src["rgb"])
    mask = read_mask(src["mask"])
    if mask.shape[:2] != img.shape[:2]:
        raise CaseDataError(src["mask"], f"the mask is {mask.shape[1]}x{mask.shape[0]} pixels but its image "
                            f"{src['image']} is {img.shape[1]}x{img.shape[0]}",
                            fix="check that the mask belongs to the image")
    lab = binarise(mask, src.get("threshold", 127))
    write_png(img, os.path.join(images_dir, case.case_id + "_0000.png"))
    write_png(lab, os.path.join(labels_dir, case.case_id + ".png"))
    return [int(v) for v in np.unique(lab)]
