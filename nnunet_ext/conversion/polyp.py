"""Polyp datasets for the domain-generalisation protocol (train on one, test on the other):
Kvasir-SEG and CVC-ClinicDB.

Supported source layouts (the public releases):

* Kvasir-SEG: ``<source>/images/<name>.jpg`` and ``<source>/masks/<name>.jpg`` (same names;
  ``kavsir_bboxes.json`` is ignored).
* CVC-ClinicDB: ``<source>/Original/<n>.tif|png`` and ``<source>/Ground Truth/<n>.tif|png``; the
  ``PNG/`` or ``TIF/`` sub-folder of the release may be given as source or found inside it (PNG/ is
  used when both are there). An ``images/`` + ``masks/`` pair (as in re-distributions of both sets)
  or ``image/`` + ``mask/`` (PraNet's TrainDataset) is accepted as well.

Folder names may be spelt in any case and with ' ', '_' or nothing between words ('GroundTruth',
'ground_truth'); the pair is found in ``--source`` or one level below it (the folder an archive
extracts to, or the release's PNG/ folder). Images and masks may be .jpg, .png, .tif or .bmp, and need not share the
extension.

Images are written as RGB PNG (3 channels), masks binarised at ``> 127`` (label 1 = polyp). No split
was published: with ``role='train'`` every case goes to imagesTr (nnU-Net makes its own 5-fold
split), with ``role='test'`` every case goes to imagesTs/labelsTs (a test-only dataset, numTraining 0,
for predicting with a model trained on the other dataset).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import ConversionArgumentError, SourceLayoutError
from .layout import describe_folder, child_dir, find_file, find_nested, list_files, require_source, strip_suffix
from .natural import channel_names, safe_case_id, write_natural_case

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
PAIRS = (("images", "masks"), ("Original", "Ground Truth"), ("image", "mask"))


def _pair_in(root: str, pairs: Sequence[Tuple[str, str]]) -> Optional[Tuple[str, str]]:
    for img, msk in pairs:
        a, b = child_dir(root, img), child_dir(root, msk)
        if a and b:
            return a, b
    return None


def _find_pair(converter: str, source: str, pairs: Sequence[Tuple[str, str]]) -> Tuple[str, str]:
    expected = "an image folder and a mask folder: one of " + ", ".join(f"{a}/ + {b}/" for a, b in pairs)
    hits = find_nested(source, lambda d: _pair_in(d, pairs) is not None, max_depth=1)
    if len(hits) > 1:
        # the CVC-ClinicDB release holds the same images twice, in PNG/ and in TIF/: use PNG/
        kinds = {os.path.basename(h).lower(): h for h in hits}
        if "png" in kinds and set(kinds) <= {"png", "tif", "tiff"} and len(kinds) == len(hits):
            hits = [kinds["png"]]
        else:
            raise SourceLayoutError(converter, expected + " (one dataset)", f"{len(hits)} such pairs in "
                                    f"{[os.path.relpath(h, source) for h in hits][:6]}; pass the folder of the one "
                                    "to convert as --source", source)
    if not hits:
        deeper = find_nested(source, lambda d: _pair_in(d, pairs) is not None, max_depth=3)
        hint = (f" (such folders are deeper, in {[os.path.relpath(h, source) for h in deeper][:3]}: pass that "
                "folder as --source)" if deeper else "")
        raise SourceLayoutError(converter, expected,
                                f"no such pair; the folder contains {describe_folder(source)}{hint}", source)
    return _pair_in(hits[0], pairs)


def _pairs(converter: str, img_dir: str, mask_dir: str) -> List[Tuple[str, str, str]]:
    images = list_files(converter, img_dir, IMAGE_SUFFIXES, f"image files in {os.path.basename(img_dir)}/")
    masks = set(list_files(converter, mask_dir, IMAGE_SUFFIXES, f"mask files in {os.path.basename(mask_dir)}/"))
    out, seen = [], set()
    for f in images:
        stem = strip_suffix(f, IMAGE_SUFFIXES)
        mask = os.path.join(mask_dir, f) if f in masks else find_file(mask_dir, stem, IMAGE_SUFFIXES)
        if mask is None:
            raise SourceLayoutError(converter, f"a mask with the same name in {os.path.basename(mask_dir)}/ for "
                                    "every image", f"no mask for {f!r}", mask_dir)
        cid = safe_case_id(stem)
        if cid in seen:
            raise SourceLayoutError(converter, "unique image names", f"two images named {stem!r}", img_dir)
        seen.add(cid)
        out.append((cid, os.path.join(img_dir, f), mask))
    return out


def _convert_polyp(converter: str, default_name: str, reference: str, source: str, dataset_id: int,
                   name: Optional[str], raw_root: Optional[str], overwrite: bool, num_processes: int,
                   role: str, max_cases: Optional[int], verify: bool, skip_bad: bool = False) -> str:
    if role not in ("train", "test"):
        raise ConversionArgumentError(f"role must be 'train' or 'test', got {role!r}")
    source = require_source(converter, source)
    img_dir, mask_dir = _find_pair(converter, source, PAIRS)
    pairs = _pairs(converter, img_dir, mask_dir)
    if max_cases is not None:
        pairs = pairs[:max_cases]
    ds_name = name or default_name
    target = prepare_target(dataset_id, ds_name, raw_root, overwrite, [source])
    train = role == "train"
    cases = [Case(cid, {"image": im, "mask": m, "rgb": True, "threshold": 127}, train, not train)
             for cid, im, m in pairs]
    desc = (f"all {len(cases)} cases in imagesTr (train on this dataset)" if train else
            f"all {len(cases)} cases in imagesTs/labelsTs (test-only dataset for domain generalisation)")
    info = DatasetInfo(channel_names=channel_names(True), labels={"background": 0, "polyp": 1}, file_ending=".png",
                       name=ds_name, description=f"{default_name}: {desc}", reference=reference,
                       extra={"split": desc, "role": role})
    summary = [f"images from {img_dir}, masks from {mask_dir}"]
    return build_dataset(converter, target, cases, write_natural_case, info, None, num_processes, overwrite, verify,
                         skip_bad=skip_bad, summary=summary)


def convert_kvasir_seg(source: str, dataset_id: int, name: Optional[str] = None, raw_root: Optional[str] = None,
                       overwrite: bool = False, num_processes: int = 2, role: str = "train",
                       max_cases: Optional[int] = None, verify: bool = True, skip_bad: bool = False) -> str:
    """Convert Kvasir-SEG (``images/*.jpg`` + ``masks/*.jpg``) to ``DatasetXXX_KvasirSEG``.

    ``role``: 'train' (all cases in imagesTr) or 'test' (all cases in imagesTs/labelsTs).
    ``max_cases`` converts only the first N images (sorted by name). Returns the dataset folder.
    """
    return _convert_polyp("kvasir_seg", "KvasirSEG", "Jha et al., Kvasir-SEG, MMM 2020", source, dataset_id,
                          name, raw_root, overwrite, num_processes, role, max_cases, verify, skip_bad)


def convert_cvc_clinicdb(source: str, dataset_id: int, name: Optional[str] = None, raw_root: Optional[str] = None,
                         overwrite: bool = False, num_processes: int = 2, role: str = "test",
                         max_cases: Optional[int] = None, verify: bool = True, skip_bad: bool = False) -> str:
    """Convert CVC-ClinicDB (``Original/`` + ``Ground Truth/``, .tif or .png) to ``DatasetXXX_CVCClinicDB``.

    ``role`` defaults to 'test' (the usual target domain when training on Kvasir-SEG).
    Returns the dataset folder.
    """
    return _convert_polyp("cvc_clinicdb", "CVCClinicDB", "Bernal et al., WM-DOVA maps, CMIG 2015", source,
                          dataset_id, name, raw_root, overwrite, num_processes, role, max_cases, verify, skip_bad)


def _add_args(default_role):
    def add(p):
        p.add_argument("--role", choices=["train", "test"], default=default_role,
                       help="train: all cases in imagesTr; test: all cases in imagesTs/labelsTs "
                            f"(default: {default_role})")
        p.add_argument("--max-cases", type=int, default=None, metavar="N", help="convert only the first N images")
    return add


KVASIR_SEG = Converter("kvasir_seg", "Kvasir-SEG polyps (images/*.jpg + masks/*.jpg)", _add_args("train"),
                       lambda a: convert_kvasir_seg(a.source, a.id, a.name, role=a.role, max_cases=a.max_cases,
                                                    **common_kwargs(a)))
CVC_CLINICDB = Converter("cvc_clinicdb", "CVC-ClinicDB polyps (Original/ + Ground Truth/, .tif or .png)",
                         _add_args("test"),
                         lambda a: convert_cvc_clinicdb(a.source, a.id, a.name, role=a.role, max_cases=a.max_cases,
                                                        **common_kwargs(a)))
