"""STEGO's image-folder layout (Hamilton et al., ICLR 2022), with or without labels.

Supported source layout (``--source`` is ROOT, or a folder directly above it)::

    ROOT/imgs/train/<name>.jpg|.png     training images
    ROOT/imgs/val/<name>.jpg|.png       optional: validation images
    ROOT/labels/train/<name>.png        optional: one label per training image (same stem)
    ROOT/labels/val/<name>.png          optional: one label per validation image

Result (``DatasetXXX_Name``): ``imgs/train`` -> ``imagesTr``, ``imgs/val`` -> ``imagesTs``; images as
RGB or greyscale PNG, consistently for the whole dataset (see :mod:`~nnunet_ext.conversion.natural`).

**With labels** (any file in ``labels/``): ``labels/train`` -> ``labelsTr``, ``labels/val`` ->
``labelsTs`` (a val split without labels goes to imagesTs alone). The sorted set of distinct values
over all label files of the dataset is mapped to 0..K-1 (a 0/255 mask becomes 0/1); the mapping is
recorded in dataset.json as ``"nnunet_ext": {"placeholder_labels": false, "n_clusters": K,
"label_values": {"0": 0, "255": 1}}``, and ``labels`` is ``{"background": 0, "class_1": 1, ...}``
(or the names of ``--class-names``). Every image of a split has a label, or none has.

**Images only** (no ``labels/``): the number of clusters K is given with ``--clusters K``. nnU-Net's
planning and preprocessing need ``labelsTr``, so every training image gets a *placeholder label*:
a uint8 PNG of the image's size in which every pixel holds the same value, ``K``, declared as
nnU-Net's ``"ignore"`` label. dataset.json has ``labels`` = ``{"background": 0, "cluster_1": 1, ...,
"cluster_{K-1}": K-1, "ignore": K}`` (so nnU-Net plans K output channels) and ``"nnunet_ext":
{"placeholder_labels": true, "n_clusters": K, "placeholder_value": K}``, and its ``description``
says that the labelsTr files are placeholders.

Why the ignore value and not 0: nnU-Net's dataset fingerprint collects intensity statistics from the
pixels with a label > 0 and fails (``IndexError`` in ``np.percentile``) on a dataset whose labels are
all 0. With every pixel "ignore" it plans and preprocesses (statistics over all pixels), and stock
nnU-Net training on such a dataset learns nothing from the placeholders (the loss skips ignored
pixels) instead of learning "everything is background".

A placeholder is never a segmentation. Training and evaluation code that reads a dataset must check
:func:`placeholder_labels` (or call :func:`check_real_labels`, which raises :class:`PlaceholderLabelsError`)
before it uses labelsTr/labelsTs as ground truth, and :func:`n_clusters` for the number of clusters. These
live in :mod:`nnunet_ext.core.labels` (what reads a dataset imports them from there); this module re-exports them.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from nnunet_ext.core.labels import (EXT_KEY, PlaceholderLabelsError, check_real_labels, n_clusters,
                                    placeholder_labels)

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import BadCaseError, CaseDataError, ConversionArgumentError, SourceLayoutError, reading
from .layout import describe_folder, child_dir, find_nested, list_files, require_source, strip_suffix
from .natural import channel_names, decide_rgb, safe_case_id
from .parallel import run_parallel
from .writers import read_natural_image, to_mode, write_png

__all__ = ["STEGO", "convert_stego", "placeholder_labels", "n_clusters", "check_real_labels",
           "PlaceholderLabelsError"]

_NAME = "stego"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIXES = (".png",)
SPLITS = ("train", "val")
REFERENCE = ("Hamilton et al., Unsupervised Semantic Segmentation by Distilling Feature Correspondences (STEGO), "
             "ICLR 2022")
_EXPECTED = "a STEGO dataset folder with imgs/train/ (images; optional imgs/val/, labels/train/, labels/val/)"


# ---------------------------------------------------------------- reading labels
def read_label(path: str) -> np.ndarray:
    """A label file as a (H, W) integer array of its stored values (palette PNGs: the palette indices).

    Colour-coded labels (different R, G, B) are refused with :class:`CaseDataError`."""
    with reading(path):
        with Image.open(path) as im:
            mode = im.mode
            if mode == "1":
                return np.asarray(im, dtype=np.uint8)
            if mode in ("L", "P") or mode.startswith("I"):
                return np.asarray(im).astype(np.int64 if mode.startswith("I") else np.uint8, copy=False)
            if mode in ("LA", "PA"):
                return np.asarray(im)[..., 0]
            if mode in ("RGB", "RGBA"):
                rgb = np.asarray(im.convert("RGB"))
            else:
                rgb = None
    if rgb is None:
        raise CaseDataError(path, f"unsupported label image mode {mode!r}", fix="store labels as 8/16-bit grey or "
                            "palette PNG holding one integer value per class")
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise CaseDataError(path, "a colour-coded label (R, G, B differ); one integer value per class is expected",
                            fix="convert it to a grey or palette PNG with one value per class")
    return rgb[..., 0]


def _label_values(job) -> Tuple[str, Optional[List[int]]]:
    """(path, sorted distinct values) of a label file; values None when it cannot be read and skip_bad."""
    path, skip_bad = job
    try:
        return path, [int(v) for v in np.unique(read_label(path))]
    except BadCaseError:
        if skip_bad:
            return path, None  # the writer reports it again and --skip-bad skips the case
        raise


def map_values(label: np.ndarray, values: Sequence[int], where: str) -> np.ndarray:
    """Map the stored values ``values`` (sorted) to 0..K-1 (uint8); another value is a :class:`CaseDataError`."""
    vals = np.asarray(values, dtype=np.int64)
    lab = label.astype(np.int64, copy=False)
    idx = np.clip(np.searchsorted(vals, lab), 0, len(vals) - 1)
    bad = lab != vals[idx]
    if bad.any():
        raise CaseDataError(where, f"label values {sorted(int(v) for v in np.unique(lab[bad]))[:10]} that the other "
                            f"label files do not have ({list(values)[:10]})", fix="check the file")
    return idx.astype(np.uint8)


def write_stego_case(case: Case, images_dir: str, labels_dir: Optional[str]) -> List[int]:
    """Writer for :func:`~nnunet_ext.conversion.build.build_dataset`; ``case.source`` is a dict with
    ``image``, ``label`` (path or None: a placeholder), ``rgb``, ``values`` (the sorted stored label
    values, for real labels) and ``placeholder`` (the placeholder value)."""
    src = case.source
    img = to_mode(read_natural_image(src["image"]), src["rgb"])
    lab = None
    if labels_dir is not None:
        if src.get("label") is None:
            lab = np.full(img.shape[:2], src["placeholder"], dtype=np.uint8)
        else:
            raw = read_label(src["label"])
            if raw.shape[:2] != img.shape[:2]:
                raise CaseDataError(src["label"], f"the label is {raw.shape[1]}x{raw.shape[0]} pixels but its image "
                                    f"{src['image']} is {img.shape[1]}x{img.shape[0]}",
                                    fix="check that the label belongs to the image")
            lab = map_values(raw, src["values"], src["label"])
    write_png(img, os.path.join(images_dir, case.case_id + "_0000.png"))
    if lab is None:
        return []
    write_png(lab, os.path.join(labels_dir, case.case_id + ".png"))
    return [int(v) for v in np.unique(lab)]


# ---------------------------------------------------------------- the source layout
def _is_root(folder: str) -> bool:
    imgs = child_dir(folder, "imgs")
    return bool(imgs and child_dir(imgs, "train"))


def _find_root(source: str) -> str:
    hits = find_nested(source, _is_root, max_depth=1)
    if len(hits) > 1:
        raise SourceLayoutError(_NAME, _EXPECTED + " (one dataset)", f"{len(hits)} such folders "
                                f"{[os.path.relpath(h, source) for h in hits][:6]}; pass the one to convert as "
                                "--source", source)
    if not hits:
        imgs = child_dir(source, "imgs")
        found = (f"imgs/ without a train/ folder; imgs/ contains {describe_folder(imgs)}" if imgs else
                 f"no imgs/ folder; the folder contains {describe_folder(source)}")
        raise SourceLayoutError(_NAME, _EXPECTED, found, source)
    return hits[0]


def _names(files: Sequence[str], folder: str, what: str) -> Dict[str, str]:
    """stem -> file path; two files with one stem (a.jpg and a.png) are an error."""
    out: Dict[str, str] = {}
    for f in files:
        stem = strip_suffix(f, IMAGE_SUFFIXES if what == "image" else LABEL_SUFFIXES)
        if stem in out:
            raise SourceLayoutError(_NAME, f"one {what} file per name", f"{os.path.basename(out[stem])!r} and "
                                    f"{f!r}", folder)
        out[stem] = os.path.join(folder, f)
    return out


def _scan(root: str) -> Dict[str, List[Tuple[str, str, Optional[str]]]]:
    """split -> [(stem, image, label or None)] for the splits that have images."""
    imgs = child_dir(root, "imgs")
    labels_root = child_dir(root, "labels")
    out = {}
    for split in SPLITS:
        img_dir = child_dir(imgs, split)
        if img_dir is None:
            continue
        images = _names(list_files(_NAME, img_dir, IMAGE_SUFFIXES, f"images in imgs/{split}/",
                                   allow_empty=split != "train"), img_dir, "image")
        lab_dir = child_dir(labels_root, split) if labels_root else None
        labels = _names(list_files(_NAME, lab_dir, LABEL_SUFFIXES, f"labels in labels/{split}/", allow_empty=True),
                        lab_dir, "label") if lab_dir else {}
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise SourceLayoutError(_NAME, f"an image in imgs/{split}/ for every label in labels/{split}/ (same name)",
                                    f"{len(orphans)} labels without image: "
                                    f"{[os.path.basename(labels[s]) for s in orphans[:5]]}", lab_dir)
        if labels and len(labels) != len(images):
            missing = sorted(set(images) - set(labels))
            raise SourceLayoutError(_NAME, f"a label in labels/{split}/ for every image of imgs/{split}/, or none",
                                    f"{len(missing)} of {len(images)} images without label: "
                                    f"{[os.path.basename(images[s]) for s in missing[:5]]}", lab_dir)
        if images:
            out[split] = [(s, images[s], labels.get(s)) for s in sorted(images)]
    return out


def _class_names(names: Union[None, str, Sequence[str]], k: int) -> Dict[str, int]:
    if names is None:
        return {"background": 0, **{f"class_{i}": i for i in range(1, k)}}
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [str(n).strip() for n in names]
    if len(names) == k - 1:
        names = ["background", *names]
    if len(names) != k:
        raise ConversionArgumentError(f"--class-names gives {len(names)} names but the labels hold {k} values; give "
                                      f"{k} names (value 0 first) or {k - 1} (the foreground classes)")
    if len(set(names)) != k or "" in names or "ignore" in names:
        raise ConversionArgumentError(f"--class-names must be {k} different non-empty names other than 'ignore', "
                                      f"got {names}")
    return {n: i for i, n in enumerate(names)}


def _default_name(root: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", os.path.basename(os.path.normpath(root))).strip("_-") or "STEGO"


# ---------------------------------------------------------------- the converter
def convert_stego(source: str, dataset_id: int, name: Optional[str] = None, raw_root: Optional[str] = None,
                  overwrite: bool = False, num_processes: int = 2, clusters: Optional[int] = None,
                  class_names: Union[None, str, Sequence[str]] = None, color: str = "auto", verify: bool = True,
                  skip_bad: bool = False) -> str:
    """Convert a dataset in STEGO's layout (``imgs/train``, ``imgs/val``, optional ``labels/``).

    ``clusters``: the number of clusters K (>= 2); required without labels, checked against the
    labels' number of values with them. ``class_names``: names of the K label values (a list or a
    comma-separated string; K-1 names name the foreground classes). ``color``: 'auto' (RGB if any image
    is colour), 'rgb' or 'grey'. ``name`` defaults to the dataset folder's name. Returns the dataset folder.
    """
    given = require_source(_NAME, source)
    root = _find_root(given)
    parts = _scan(root)
    if clusters is not None and (isinstance(clusters, bool) or int(clusters) < 2):
        raise ConversionArgumentError(f"--clusters must be at least 2, got {clusters}")
    labelled = any(lab is not None for items in parts.values() for _, _, lab in items)
    if labelled and any(lab is None for _, _, lab in parts["train"]):
        raise SourceLayoutError(_NAME, "labels in labels/train/ for the training images (labels/ exists)",
                                "no labels for imgs/train/", os.path.join(root, "labels"))

    ids: Dict[str, str] = {}
    for split, items in parts.items():
        for stem, image, _ in items:
            cid = safe_case_id(stem)
            if cid in ids:
                raise SourceLayoutError(_NAME, "distinct image names (over train and val)",
                                        f"{ids[cid]} and {image} (both case {cid!r})", root)
            ids[cid] = image

    all_images = [im for items in parts.values() for _, im, _ in items]
    rgb = decide_rgb(color or "auto", all_images)
    n_train, n_val = len(parts["train"]), len(parts.get("val", []))
    if labelled:
        label_files = [lab for items in parts.values() for _, _, lab in items if lab is not None]
        scanned = run_parallel(_label_values, [(p, skip_bad) for p in label_files], num_processes,
                               desc=f"{_NAME}: reading label values")
        values = sorted({v for _, vs in scanned if vs for v in vs})
        k = len(values)
        if k < 2:
            raise SourceLayoutError(_NAME, "labels with at least two different values", f"only the value(s) "
                                    f"{values} in all {len(label_files)} label files", os.path.join(root, "labels"))
        if k > 255:
            raise SourceLayoutError(_NAME, "at most 255 different label values", f"{k} values",
                                    os.path.join(root, "labels"))
        if clusters is not None and int(clusters) != k:
            raise ConversionArgumentError(f"--clusters {clusters} does not match the labels of {root}, which hold "
                                          f"{k} values {values[:10]}; leave --clusters out or pass --clusters {k}")
        labels = _class_names(class_names, k)
        placeholder = None
    else:
        if clusters is None:
            raise ConversionArgumentError(f"{root} has no labels (no files in labels/train/, labels/val/): for an "
                                          "images-only dataset pass --clusters K (clusters=K), the number of "
                                          "clusters K >= 2 to segment into")
        if class_names is not None:
            raise ConversionArgumentError("--class-names needs labels; an images-only dataset has clusters "
                                          "(cluster_1, ...)")
        k = int(clusters)
        if k > 255:
            raise ConversionArgumentError(f"--clusters must be at most 255, got {k}")
        values = []
        placeholder = k
        labels = {"background": 0, **{f"cluster_{i}": i for i in range(1, k)}, "ignore": k}

    ds_name = name or _default_name(root)
    target = prepare_target(dataset_id, ds_name, raw_root, overwrite, [given])
    cases = []
    for split, items in parts.items():
        train = split == "train"
        for stem, image, lab in items:
            src = {"image": image, "label": lab, "rgb": rgb, "values": values, "placeholder": placeholder}
            cases.append(Case(safe_case_id(stem), src, train=train, test=not train,
                              unlabeled=not train and lab is None))

    ext: Dict[str, Any] = {"placeholder_labels": not labelled, "n_clusters": k,
                           "dataset": os.path.basename(target), "source_layout": "stego"}
    split_desc = f"imgs/train ({n_train}) -> imagesTr, imgs/val ({n_val}) -> imagesTs"
    if labelled:
        ext["label_values"] = {str(v): i for i, v in enumerate(values)}
        desc = (f"{ds_name} from STEGO's layout with labels: {split_desc}; label values {values[:10]}"
                f"{'...' if k > 10 else ''} mapped to 0..{k - 1} (nnunet_ext.label_values)")
    else:
        ext["placeholder_value"] = placeholder
        desc = (f"{ds_name} from STEGO's layout without labels (images only, {k} clusters): {split_desc}. The "
                f"labelsTr files are placeholders, not segmentations: every pixel is {placeholder} (the 'ignore' "
                "label), written only because nnU-Net's planning needs labelsTr; do not train or evaluate against "
                "them (nnunet_ext.placeholder_labels)")
    info = DatasetInfo(channel_names=channel_names(rgb), labels=labels, file_ending=".png", name=ds_name,
                       description=desc, reference=REFERENCE, extra={"split": split_desc, EXT_KEY: ext})
    summary = ([] if root == given else [f"dataset folder {root}"]) + \
        [f"{'labels' if labelled else 'no labels (placeholder labelsTr)'}; {k} "
         f"{'classes' if labelled else 'clusters'}; {'RGB' if rgb else 'greyscale'} images"]
    return build_dataset(_NAME, target, cases, write_stego_case, info, None, num_processes, overwrite, verify,
                         skip_bad=skip_bad, summary=summary)


def _add_args(p):
    p.add_argument("--clusters", type=int, default=None, metavar="K",
                   help="number of clusters K >= 2; required for an images-only dataset (no label files), "
                        "checked against the labels otherwise")
    p.add_argument("--class-names", default=None, metavar="A,B,...",
                   help="comma-separated names of the K label values (value 0 first), or of the K-1 foreground "
                        "classes; default background, class_1, ...")
    p.add_argument("--color", choices=["auto", "rgb", "grey"], default="auto",
                   help="write images as RGB (3 channels) or grey (1 channel); auto: RGB if any image is colour")


def _run(args) -> str:
    return convert_stego(args.source, args.id, args.name, clusters=args.clusters, class_names=args.class_names,
                         color=args.color, **common_kwargs(args))


STEGO = Converter("stego", "STEGO layout (imgs/train, imgs/val, optional labels/train, labels/val); images-only "
                  "datasets with --clusters K", _add_args, _run)
