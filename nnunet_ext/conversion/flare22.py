"""FLARE22 (MICCAI 2022 FLARE challenge: semi-supervised abdominal organ segmentation in CT).

The release: 50 labelled CTs, 2000 unlabelled CTs, 50 validation CTs (no labels; the 200 test cases
are hidden). Written as one nnU-Net raw dataset::

    imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz   the 50 labelled cases (numTraining)
    imagesUnlabeled/<case>_0000.nii.gz                    the unlabelled CTs (read by
                                                          nnunet-ext preprocess-unlabeled and the CPS trainers)
    imagesTs/<case>_0000.nii.gz                           the validation CTs (no labelsTs)
    dataset.json                                          channel CT, the 13 organs in the challenge's order

Labels (the challenge's order): 1 liver, 2 right kidney, 3 spleen, 4 pancreas, 5 aorta, 6 inferior
vena cava, 7 right adrenal gland, 8 left adrenal gland, 9 gallbladder, 10 esophagus, 11 stomach,
12 duodenum, 13 left kidney (0 background); other values are an error.

Accepted source layouts (``--source`` is the release folder; folder names are matched ignoring
upper/lower case and the separators ' ', '_', '-')::

    FLARE22/                                  the release as downloaded
        Training/
            FLARE22_LabeledCase50/
                images/FLARE22_Tr_0001_0000.nii.gz ...
                labels/FLARE22_Tr_0001.nii.gz ...
            FLARE22_UnlabeledCase1-1000/      any folder whose name contains 'unlabeled' / 'unlabelled'
                Case_00001_0000.nii.gz ...    (or FLARE22_Tr_XXXX_0000.nii.gz), possibly split over
            FLARE22_UnlabeledCase1001-2000/   several folders, possibly in sub-folders
        Validation/                           any folder whose name contains 'validation' (or imagesTs,
            FLARE22_Ts_0001_0000.nii.gz ...   imagesVal, Tuning)

* The labelled part is the folder holding ``images/`` + ``labels/`` (or ``imagesTr/`` +
  ``labelsTr/``): ``--source`` itself or a folder up to three levels below it (folders of the
  unlabelled and validation parts are not searched for it). Each image ``<case>_0000.nii.gz`` (or
  ``<case>.nii.gz``) needs the label ``<case>.nii.gz`` and vice versa. It must exist; a missing
  label or image is an error that names the file.
* The unlabelled and validation parts are the folders with ``.nii.gz`` files in (or below) a folder
  named as above, found up to four levels below ``--source``. Each is optional: when absent, the
  rest is converted and the summary says so. Folders named like labels inside them (e.g.
  ``Validation/labels``) are not converted (imagesTs holds images only); the summary names them.
* Case names are the file names without ``_0000.nii.gz``; a name must occur once across the three
  parts (nnU-Net identifies cases by name; ``unlabeled_prefix`` / ``--unlabeled-prefix`` renames the
  unlabelled cases when they clash).

Files are written unchanged (spacing, origin and direction kept exactly): hard-linked where the
file system allows it (no extra disk space for 2000 CTs; a hard link shares its data with the
source, so do not edit the output files in place), else copied; ``copy`` / ``--copy`` always copies.
Labelled cases are read whole (label values, image and label sizes). Unlabelled and validation
images are read whole too (a truncated download is found here), or, with ``quick_check`` /
``--quick-check``, by their header only (much faster; ``nnunet-ext preprocess-unlabeled`` later
names and skips unreadable files). ``max_unlabeled`` / ``--max-unlabeled N`` takes the first N
unlabelled images by name (FLARE22's UIF setting used 200 of the 2000). No split is published for
the 50 labelled cases: no ``splits_final.json`` is written (nnU-Net makes its 5-fold split).
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import ConversionArgumentError, SourceLayoutError
from .layout import describe_folder, loose_name, child_dir, find_nested, list_files, require_source, visible_dirs
from .volumes import write_volume_case

_NAME = "flare22"
NII = ".nii.gz"
LABELS = {"background": 0, "liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "aorta": 5,
          "inferior vena cava": 6, "right adrenal gland": 7, "left adrenal gland": 8, "gallbladder": 9,
          "esophagus": 10, "stomach": 11, "duodenum": 12, "left kidney": 13}
PAIRS = (("images", "labels"), ("imagesTr", "labelsTr"))
LABELLED = ("a labelled part: a folder with images/ and labels/ (e.g. Training/FLARE22_LabeledCase50/{images,labels}) "
            "or imagesTr/ and labelsTr/, in --source or up to 3 levels below")
SEARCH_DEPTH = 4  # how deep below --source the unlabelled and validation parts are looked for


def _is_unlabeled_name(name: str) -> bool:
    return "unlabel" in loose_name(name)


def _is_validation_name(name: str) -> bool:
    n = loose_name(name)
    return "validation" in n or n in ("imagests", "imagesval", "tuning")


def _is_label_name(name: str) -> bool:
    n = loose_name(name)
    return bool(re.search(r"(?<!un)label", n)) or n in ("gt", "groundtruth", "mask", "masks", "segmentations")


def _pair(folder: str) -> Optional[Tuple[str, str]]:
    """(images folder, labels folder) of a labelled folder, or None."""
    for im, lab in PAIRS:
        i, l_ = child_dir(folder, im), child_dir(folder, lab)
        if i and l_:
            return i, l_
    return None


def _in_other_part(source: str, folder: str) -> bool:
    return any(_is_unlabeled_name(p) or _is_validation_name(p) for p in os.path.relpath(folder, source).split(os.sep))


def _rel(source: str, path: str) -> str:
    r = os.path.relpath(path, source)
    return "--source" if r == "." else r


def _nifti_names(folder: str) -> List[str]:
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    return sorted(f for f in entries if f.lower().endswith(NII) and not f.startswith((".", "_"))
                  and os.path.isfile(os.path.join(folder, f)))


def image_case_id(file_name: str) -> str:
    """``FLARE22_Tr_0001_0000.nii.gz`` -> ``FLARE22_Tr_0001`` (``<case>.nii.gz`` -> ``<case>``)."""
    stem = file_name[: -len(NII)]
    return stem[:-5] if stem.endswith("_0000") else stem


def find_labelled(source: str) -> Tuple[str, str, str]:
    """(folder, images folder, labels folder) of the labelled part; a missing one is an error that says what
    was found instead."""
    hits = find_nested(source, lambda d: _pair(d) is not None and not _in_other_part(source, d), max_depth=3)
    if len(hits) > 1:
        raise SourceLayoutError(_NAME, LABELLED, f"{len(hits)} labelled folders: "
                                f"{[_rel(source, h) for h in hits][:5]}; pass the release folder that holds one "
                                "of them as --source", source)
    if hits:
        return (hits[0],) + _pair(hits[0])
    hint = ""
    half = find_nested(source, lambda d: bool(child_dir(d, "images") or child_dir(d, "imagesTr"))
                       and not _in_other_part(source, d), max_depth=3)
    if half:
        hint = f" ({_rel(source, half[0])} has an images folder but no labels folder)"
    elif _find_parts(source, _is_unlabeled_name, set())[0] or _find_parts(source, _is_validation_name, set())[0]:
        hint = (" (only the unlabelled and/or validation part is there: the labelled part, "
                "FLARE22_LabeledCase50, is needed too)")
    raise SourceLayoutError(_NAME, LABELLED, f"no such folder; --source contains {describe_folder(source)}{hint}",
                            source)


def _find_parts(source: str, matches, exclude: set) -> Tuple[List[str], List[str]]:
    """(folders holding .nii.gz files in or below a folder whose name ``matches``, label folders left out)
    up to SEARCH_DEPTH levels below ``source``; folders in ``exclude`` are not entered."""
    found: List[str] = []
    ignored: List[str] = []

    def walk(folder: str, depth: int, inside: bool) -> None:
        for name in visible_dirs(folder):
            path = os.path.join(folder, name)
            if path in exclude:
                continue
            now_inside = inside or matches(name)
            if now_inside and _is_label_name(name):
                if _nifti_names(path) or visible_dirs(path):
                    ignored.append(path)
                continue
            if now_inside and _nifti_names(path):
                found.append(path)
            if depth + 1 < SEARCH_DEPTH:
                walk(path, depth + 1, now_inside)

    walk(source, 0, False)
    return found, ignored


def _collect(folders: List[str], part: str, seen: Dict[str, str], prefix: str = "") -> Dict[str, str]:
    """case id -> image path for the images in ``folders``; a name seen before (``seen``: id -> path, updated)
    is an error naming both files."""
    out: Dict[str, str] = {}
    for folder in folders:
        for f in _nifti_names(folder):
            cid = prefix + image_case_id(f)
            path = os.path.join(folder, f)
            if cid in seen:
                fix = ("; pass --unlabeled-prefix (e.g. U_) to rename the unlabelled cases"
                       if part == "unlabelled" else "")
                raise SourceLayoutError(_NAME, "each case name once across the labelled, unlabelled and validation "
                                        "images (nnU-Net identifies cases by name)",
                                        f"case {cid!r} twice: {seen[cid]} and {path}{fix}", path)
            seen[cid] = path
            out[cid] = path
    return out


def convert_flare22(source: str, dataset_id: int, name: str = "FLARE22", raw_root: Optional[str] = None,
                    overwrite: bool = False, num_processes: int = 2, max_unlabeled: Optional[int] = None,
                    unlabeled_prefix: str = "", quick_check: bool = False, copy: bool = False,
                    verify: bool = True, skip_bad: bool = False) -> str:
    """Convert the FLARE22 release (see the module docstring for the accepted layouts) to ``DatasetXXX_<name>``.

    ``max_unlabeled``: only the first N unlabelled images by case name (None: all). ``unlabeled_prefix``:
    prepended to the unlabelled case names. ``quick_check``: check unlabelled and validation images by
    their header only. ``copy``: copy files instead of hard-linking them. ``skip_bad``: skip cases whose
    files cannot be read. Returns the written dataset folder.
    """
    source = require_source(_NAME, source)
    if max_unlabeled is not None and max_unlabeled < 0:
        raise ConversionArgumentError(f"--max-unlabeled must be 0 or more, got {max_unlabeled}")
    if unlabeled_prefix and not re.match(r"^[A-Za-z0-9_\-]+$", unlabeled_prefix):
        raise ConversionArgumentError(f"--unlabeled-prefix {unlabeled_prefix!r}: use letters, digits, '_' and '-' only")
    pair_dir, images_dir, labels_dir = find_labelled(source)

    expected_img = f"labelled images <case>_0000.nii.gz in {_rel(source, images_dir)}"
    expected_lab = f"one label <case>.nii.gz per image in {_rel(source, labels_dir)}"
    list_files(_NAME, images_dir, [NII], expected_img)  # at least one image (else an error naming the folder)
    labels = list_files(_NAME, labels_dir, [NII], expected_lab, allow_empty=True)
    seen: Dict[str, str] = {}
    labelled = _collect([images_dir], "labelled", seen)
    label_of = {f[: -len(NII)]: os.path.join(labels_dir, f) for f in labels}
    missing = sorted(c for c in labelled if c not in label_of)
    if missing:
        raise SourceLayoutError(_NAME, expected_lab, f"no label {missing[0]}.nii.gz for image "
                                f"{os.path.basename(labelled[missing[0]])!r} ({len(missing)} of {len(labelled)} "
                                "images without label)", labelled[missing[0]])
    orphans = sorted(c for c in label_of if c not in labelled)
    if orphans:
        raise SourceLayoutError(_NAME, expected_img, f"no image {orphans[0]}_0000.nii.gz for label "
                                f"{os.path.basename(label_of[orphans[0]])!r} ({len(orphans)} labels without image)",
                                label_of[orphans[0]])

    exclude = {images_dir, labels_dir} | ({pair_dir} if pair_dir != source else set())
    u_dirs, u_ignored = _find_parts(source, _is_unlabeled_name, exclude)
    v_dirs, v_ignored = _find_parts(source, _is_validation_name, exclude | set(u_dirs))
    validation = _collect(v_dirs, "validation", seen)
    unlabeled_all = _collect(u_dirs, "unlabelled", seen, unlabeled_prefix)
    chosen = sorted(unlabeled_all)[:max_unlabeled] if max_unlabeled is not None else sorted(unlabeled_all)

    target = prepare_target(dataset_id, name, raw_root, overwrite, [source])
    link = not copy
    check = "header" if quick_check else "full"
    cases = [Case(c, {"kind": "nifti", "image": labelled[c], "label": label_of[c], "labels": list(LABELS.values()),
                      "link": link}) for c in sorted(labelled)]
    cases += [Case(c, {"kind": "nifti", "image": unlabeled_all[c], "link": link, "check": check}, train=False,
                   unlabeled=True) for c in chosen]
    cases += [Case(c, {"kind": "nifti", "image": p, "link": link, "check": check}, train=False, test=True,
                   unlabeled=True) for c, p in sorted(validation.items())]

    where = f" under {source}"
    summary = [f"labelled part: {len(labelled)} cases from {_rel(source, images_dir)} + {_rel(source, labels_dir)}"
               f"{where}"]
    extra: Dict[str, object] = {}
    if not u_dirs:
        summary.append("no unlabelled part found (no folder named like '*Unlabeled*' with .nii.gz files"
                       f"{where}): imagesUnlabeled not written")
    else:
        sel = ""
        if max_unlabeled is not None and max_unlabeled < len(unlabeled_all):
            sel = f" (--max-unlabeled {max_unlabeled}: the first {len(chosen)} by name)"
            extra["unlabeled_selection"] = (f"the first {len(chosen)} of {len(unlabeled_all)} unlabelled images by "
                                            f"case name (--max-unlabeled {max_unlabeled})")
        summary.append(f"unlabelled part: {len(chosen)} of {len(unlabeled_all)} images from "
                       f"{', '.join(_rel(source, d) for d in u_dirs)}"
                       + (" into imagesUnlabeled" if chosen else ": imagesUnlabeled not written") + sel)
    if not v_dirs:
        summary.append("no validation part found (no folder named like 'Validation' with .nii.gz files"
                       f"{where}): imagesTs not written")
    else:
        summary.append(f"validation part: {len(validation)} images from {', '.join(_rel(source, d) for d in v_dirs)} "
                       "into imagesTs (no labels)")
    for d in u_ignored + v_ignored:
        summary.append(f"not converted: {_rel(source, d)} (labels of the unlabelled / validation part; imagesTs "
                       "and imagesUnlabeled hold images only)")
    if unlabeled_prefix and chosen:
        summary.append(f"unlabelled cases named {unlabeled_prefix}<file name> (--unlabeled-prefix)")
    summary.append(("files copied (--copy)" if copy else "files hard-linked where the file system allows, else copied")
                   + "; unlabelled and validation images checked by "
                   + ("their header only (--quick-check)" if quick_check else "reading them whole"))
    description = (f"FLARE22 abdominal CT, 13 organs: {len(labelled)} labelled cases (imagesTr/labelsTr), "
                   f"{len(chosen)} unlabelled (imagesUnlabeled), {len(validation)} validation images without labels "
                   "(imagesTs)")
    info = DatasetInfo(channel_names={"0": "CT"}, labels=dict(LABELS), file_ending=NII, name=name,
                       description=description,
                       reference=("Ma et al., Unleashing the strengths of unlabelled data in deep learning-assisted "
                                  "pan-cancer abdominal organ quantification: the FLARE22 challenge, Lancet Digital "
                                  "Health 2024; https://flare22.grand-challenge.org"),
                       licence="FLARE22 challenge data terms (research use; cite Ma et al., FLARE22)", extra=extra)
    return build_dataset(_NAME, target, cases, write_volume_case, info, None, num_processes, overwrite, verify,
                         skip_bad=skip_bad, summary=summary)


LAYOUT_HELP = """\
accepted source layouts (--source: the release folder; folder names in any case, ' ' '_' '-' ignored):
  Training/FLARE22_LabeledCase50/images/FLARE22_Tr_XXXX_0000.nii.gz   labelled images (required)
  Training/FLARE22_LabeledCase50/labels/FLARE22_Tr_XXXX.nii.gz        one label per image (required)
      or images/ + labels/, or imagesTr/ + labelsTr/, in --source or up to 3 levels below it
  Training/FLARE22_UnlabeledCase1-1000/Case_XXXXX_0000.nii.gz         unlabelled images (optional)
  Training/FLARE22_UnlabeledCase1001-2000/...
      every folder whose name contains 'unlabeled' or 'unlabelled', up to 4 levels below --source;
      files Case_XXXXX_0000.nii.gz or FLARE22_Tr_XXXX_0000.nii.gz
  Validation/FLARE22_Ts_XXXX_0000.nii.gz                              validation images (optional)
      a folder whose name contains 'validation' (or imagesTs, imagesVal, Tuning); label folders
      in it are not converted
written: imagesTr + labelsTr (labelled), imagesUnlabeled (unlabelled), imagesTs (validation, no
labels) and dataset.json with the 13 organs in the challenge's label order (1 liver ... 13 left
kidney); an absent optional part is named in the summary. Files are hard-linked (--copy: copied)."""


def _add_args(p):
    import argparse
    p.epilog = LAYOUT_HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--max-unlabeled", type=int, default=None, metavar="N",
                   help="take only the first N unlabelled images by case name (default: all; FLARE22's UIF setting "
                        "used 200 of 2000; 0: none)")
    p.add_argument("--unlabeled-prefix", default="", metavar="P",
                   help="prepend P to the unlabelled case names (when they clash with labelled or validation names)")
    p.add_argument("--quick-check", action="store_true",
                   help="check unlabelled and validation images by their NIfTI header only instead of reading them "
                        "whole (much faster for 2000 CTs; nnunet-ext preprocess-unlabeled names and skips "
                        "unreadable files later)")
    p.add_argument("--copy", action="store_true",
                   help="copy the files (default: hard links where the file system allows, else copies)")


FLARE22 = Converter(
    "flare22", "FLARE22 abdominal CT release (labelled images/+labels/, unlabelled and validation images)", _add_args,
    lambda a: convert_flare22(a.source, a.id, a.name or "FLARE22", max_unlabeled=a.max_unlabeled,
                              unlabeled_prefix=a.unlabeled_prefix, quick_check=a.quick_check, copy=a.copy,
                              **common_kwargs(a)))
