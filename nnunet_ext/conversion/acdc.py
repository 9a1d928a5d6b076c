"""ACDC cardiac cine MRI (Bernard et al., IEEE TMI 2018). Labels: 0 background, 1 RV, 2 MYO, 3 LV.

Two source layouts are supported.

``acdc`` -- the original NIfTI release::

    <source>/                  the release folder, its 'database/' sub-folder, a folder above them (the
                               data are found up to three levels down), or a folder of patients
        training/patient001/patient001_frame01.nii.gz
                           /patient001_frame01_gt.nii.gz   (one image + _gt pair per annotated frame:
                           /patient001_frame12.nii.gz       end-diastole and end-systole)
                           /patient001_frame12_gt.nii.gz
                           /patient001_4d.nii.gz, Info.cfg  (ignored)
        testing/patient101/... same structure (the ground truth of the 50 test patients is part of the
                               later releases; test frames without _gt are skipped with a message)

    'training' / 'testing' may be spelt in any case ('Training'); ``.nii`` works as ``.nii.gz``.
    Each annotated frame is a case ``patientXXX_frameYY``; images and labels are copied unchanged, so
    spacing, origin and direction are kept. Published split: training/ (100 patients) vs testing/
    (50 patients) -> fold 0 of ``splits_final.json`` = (training, testing), testing frames also in
    imagesTs/labelsTs (``holdout_test``: imagesTs only). A folder of patientXXX folders (no
    training/ or testing/) gives training cases only and no split.

``acdc_h5`` -- the h5 layout of semi-supervised segmentation code (SSL4MIS and successors), in the
variants it circulates in::

    <source>/                             (or a folder above it, or its data/ folder)
        train.list, val.list, test.list   volume names, one per line (patient001_frame01); slice
                                          names (patient001_frame01_slice_3) are reduced to volumes,
                                          patient ids (patient001) stand for all their frames,
                                          '.h5' suffixes, paths and blank lines are ignored;
                                          train.txt / val.txt / test.txt are accepted as well, and
                                          train_slices.list when there is no train.list
        data/<name>.h5                    volumes, datasets 'image' (slices, H, W) float and
                                          'label' (slices, H, W); or ACDC_training_volumes/
        data/slices/<name>_slice_<k>.h5   2D slices; or ACDC_training_slices/, or beside the volumes
                                          in data/ (slice files are recognised by their name wherever
                                          they are). k counts from 0 or from 1 (one convention per copy)

    A volume absent as a file is rebuilt from its slices (contiguous, from 0 or 1); copies that hold
    volumes for the validation and test patients only and the training patients only as slices
    convert completely. At least one list must exist. train + val go to imagesTr with fold 0 =
    (train, val); test goes to imagesTs/labelsTs (without val.list, test cases are fold-0 validation
    cases as above). The h5 files store no spacing: ``spacing`` (x, y, z) defaults to
    (1.5625, 1.5625, 10.0) mm, a typical ACDC voxel size, not the true per-case value.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import SourceLayoutError
from .layout import describe_folder, child_dir, child_file, find_nested, require_source, visible_dirs
from .splits import SplitPlan, read_list_file
from .volumes import order_slices, parse_slice_names, slice_numbering, write_volume_case

LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
DEFAULT_SPACING = (1.5625, 1.5625, 10.0)
REFERENCE = ("Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-structures Segmentation, "
             "IEEE TMI 2018")
LICENCE = "ACDC data: see the terms of the ACDC challenge (non-commercial research use)"
_PATIENT = re.compile(r"^patient\d+$", re.I)
_FRAME = re.compile(r"^(patient\d+_frame\d+)\.nii(\.gz)?$", re.I)
_SLICE = r"^(.+?)_slice_?(\d+)\.h5$"


# ------------------------------------------------------------------ NIfTI release
def _frames(patient_dir: str) -> Dict[str, tuple]:
    """case id -> (image, gt or None) for the annotated frames of one patient folder."""
    out = {}
    files = sorted(os.listdir(patient_dir))
    lower = {f.lower(): f for f in files}
    for f in files:
        m = _FRAME.match(f)
        if m:
            base = m.group(1)
            gt = [lower.get((base + "_gt" + ext).lower()) for ext in (".nii.gz", ".nii")]
            gt = [os.path.join(patient_dir, g) for g in gt if g]
            out[base.lower()] = (os.path.join(patient_dir, f), gt[0] if gt else None)
    return out


def _patient_dirs(folder: str) -> List[str]:
    return [d for d in visible_dirs(folder) if _PATIENT.match(d)]


def _scan_patients(folder: str, expected: str = "patientXXX folders with patientXXX_frameYY.nii.gz and _gt files"
                   ) -> Dict[str, tuple]:
    patients = _patient_dirs(folder)
    if not patients:
        raise SourceLayoutError("acdc", expected,
                                f"no patientXXX folder; the folder contains {describe_folder(folder)}", folder)
    cases = {}
    for p in patients:
        frames = _frames(os.path.join(folder, p))
        if not frames:
            raise SourceLayoutError("acdc", "patientXXX_frameYY.nii.gz (+ _gt.nii.gz) in each patient folder",
                                    "no frame images", os.path.join(folder, p))
        cases.update(frames)
    return cases


def _find_release_root(source: str) -> Tuple[str, Optional[str], Optional[str]]:
    """(root, training folder or None, testing folder or None); root holds training/ and/or testing/,
    or is a folder of patientXXX folders (then both are None)."""
    expected = ("the ACDC release: training/ and testing/ folders of patientXXX folders (in --source, its "
                "database/ folder or a folder below), or a folder of patientXXX folders")
    hits = find_nested(source, lambda d: bool(child_dir(d, "training") or child_dir(d, "testing")), max_depth=3)
    if len(hits) > 1:
        raise SourceLayoutError("acdc", expected, f"{len(hits)} release folders "
                                f"{[os.path.relpath(h, source) for h in hits][:5]}; pass the one to convert as "
                                "--source", source)
    if hits:
        return hits[0], child_dir(hits[0], "training"), child_dir(hits[0], "testing")
    hits = find_nested(source, lambda d: bool(_patient_dirs(d)), max_depth=2)
    if len(hits) == 1:
        return hits[0], None, None
    return source, None, None  # _scan_patients names what was found


def convert_acdc(source: str, dataset_id: int, name: str = "ACDC", raw_root: Optional[str] = None,
                 overwrite: bool = False, num_processes: int = 2, holdout_test: bool = False,
                 verify: bool = True, skip_bad: bool = False) -> str:
    """Convert the ACDC NIfTI release (``training/``, ``testing/`` patient folders). Returns the dataset folder."""
    source = require_source("acdc", source)
    root, tr_dir, ts_dir = _find_release_root(source)
    if tr_dir or ts_dir:
        train = _scan_patients(tr_dir) if tr_dir else {}
        test = _scan_patients(ts_dir) if ts_dir else {}
    else:
        train, test = _scan_patients(root, "the ACDC release (training/ and testing/ folders of patientXXX folders, "
                                           "in --source or a folder below it) or a folder of patientXXX folders with "
                                           "patientXXX_frameYY.nii.gz and _gt files"), {}
    no_gt_train = sorted(c for c, (_, g) in train.items() if g is None)
    if no_gt_train:
        raise SourceLayoutError("acdc", "a _gt file for every annotated training frame",
                                f"no ground truth for {no_gt_train[:3]}", tr_dir or root)
    no_gt = sorted(c for c, (_, g) in test.items() if g is None)
    if no_gt:
        print(f"acdc: skipping {len(no_gt)} test frames without ground truth (the original release has none)")
    test = {c: v for c, v in test.items() if v[1] is not None}
    plan = SplitPlan(sorted(train), test=sorted(test), holdout_test=holdout_test)
    target = prepare_target(dataset_id, name, raw_root, overwrite, [source])
    in_tr, in_ts = set(plan.training_cases()), set(plan.test)
    allv = {**train, **test}
    cases = [Case(c, {"kind": "nifti", "image": allv[c][0], "label": allv[c][1], "labels": list(LABELS.values())},
                  c in in_tr, c in in_ts) for c in sorted(in_tr | in_ts)]
    summary = [] if root == source else [f"release folder {root}"]
    summary.append(f"{len(train)} frames from {tr_dir or root}" + (f", {len(test)} from {ts_dir}" if ts_dir else ""))
    info = DatasetInfo(channel_names={"0": "cineMRI"}, labels=dict(LABELS), file_ending=".nii.gz", name=name,
                       description=f"ACDC NIfTI release; {plan.describe()}", reference=REFERENCE, licence=LICENCE,
                       extra={"split": plan.describe()})
    return build_dataset("acdc", target, cases, write_volume_case, info, plan.fold0(), num_processes, overwrite, verify,
                         skip_bad=skip_bad, summary=summary)


# ------------------------------------------------------------------ h5 layout
_LIST_NAMES = {"train": ("train", "train_slices"), "val": ("val",), "test": ("test",)}
_H5_FOLDERS = (("ACDC_training_volumes",), ("data",), ("volumes",), ("ACDC_training_slices",), ("data", "slices"),
               ("slices",))
H5_EXPECTED = ("volumes <name>.h5 in data/ or ACDC_training_volumes/, and/or slices <name>_slice_<k>.h5 in data/, "
               "data/slices/ or ACDC_training_slices/")


def _find_lists(folder: str) -> Dict[str, str]:
    out = {}
    for part, stems in _LIST_NAMES.items():
        path = child_file(folder, *(stem + ext for stem in stems for ext in (".list", ".txt")))
        if path:
            out[part] = path
    return out


def _find_h5_root(source: str) -> Tuple[str, Dict[str, str]]:
    """(folder holding the lists, {part: list path}): --source, a folder below it, or the folder above it."""
    hits = find_nested(source, lambda d: bool(_find_lists(d)), max_depth=2)
    if len(hits) > 1:
        raise SourceLayoutError("acdc_h5", "one folder with train.list / val.list / test.list",
                                f"{len(hits)}: {[os.path.relpath(h, source) for h in hits][:5]}; pass the one to "
                                "convert as --source", source)
    if not hits and _find_lists(os.path.dirname(source)):  # --source is the data/ folder beside the lists
        hits = [os.path.dirname(source)]
    if not hits:
        raise SourceLayoutError("acdc_h5", "train.list / val.list / test.list (or .txt; volume names, one per line)",
                                f"none of them; the folder contains {describe_folder(source)}", source)
    return hits[0], _find_lists(hits[0])


def _h5_folders(root: str) -> List[str]:
    out = []
    for rel in _H5_FOLDERS:
        d: Optional[str] = root
        for part in rel:
            d = child_dir(d, part) if d else None
        if d and d not in out:
            out.append(d)
    if any(f.lower().endswith(".h5") for f in os.listdir(root)):
        out.append(root)
    return out


def _scan_h5(root: str) -> Tuple[Dict[str, str], Dict[str, List[Tuple[int, str]]]]:
    """({volume name: path}, {volume name: [(slice index, path), ...]}) over the data folders: a file
    is a slice when its name says so (``<name>_slice_<k>.h5``), wherever it is; else a volume. The
    first folder that holds a volume (or slices of one) wins."""
    volumes: Dict[str, str] = {}
    slices: Dict[str, List[Tuple[int, str]]] = {}
    folders = _h5_folders(root)
    if not folders:
        raise SourceLayoutError("acdc_h5", H5_EXPECTED, f"no such folder; the folder contains {describe_folder(root)}",
                                root)
    for folder in folders:
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                       if f.lower().endswith(".h5") and not f.startswith((".", "_"))
                       and os.path.isfile(os.path.join(folder, f)))
        groups, others = parse_slice_names(files, _SLICE, re.I)
        for p in others:
            volumes.setdefault(os.path.basename(p)[:-3], p)
        for case, items in groups.items():
            slices.setdefault(case, items)
    if not volumes and not slices:
        raise SourceLayoutError("acdc_h5", H5_EXPECTED, f"no .h5 files in {folders}", root)
    return volumes, slices


def _volume_names(entries: List[str]) -> List[str]:
    out = []
    for e in entries:
        e = os.path.basename(e.replace("\\", "/").rstrip("/"))
        e = re.sub(r"\.h5$", "", e, flags=re.I)
        e = re.sub(r"_slice_?\d+$", "", e, flags=re.I)
        if e not in out:
            out.append(e)
    return out


def _expand(names: List[str], available: set) -> List[str]:
    """Names that are not a volume but a patient id (``patient001``) stand for all its frames."""
    out = []
    for n in names:
        frames = [] if n in available else sorted(a for a in available if a.startswith(n + "_"))
        out.extend(f for f in (frames or [n]) if f not in out)
    return out


def _rel(path: str, root: str) -> str:
    r = os.path.relpath(path, root)
    return "./" if r == "." else r + "/"


def convert_acdc_h5(source: str, dataset_id: int, name: str = "ACDC", raw_root: Optional[str] = None,
                    overwrite: bool = False, num_processes: int = 2, spacing: Sequence[float] = DEFAULT_SPACING,
                    allow_missing: bool = False, holdout_test: bool = False, verify: bool = True,
                    skip_bad: bool = False) -> str:
    """Convert ACDC in the SSL4MIS h5 layout (``*.list`` + ``data/*.h5``, slices in ``data/``,
    ``data/slices/`` or ``ACDC_training_slices/``; see the module docstring). Returns the dataset folder.
    """
    source = require_source("acdc_h5", source)
    root, lists = _find_h5_root(source)
    volumes, slices = _scan_h5(root)
    available = set(volumes) | set(slices)
    parts: Dict[str, List[str]] = {}
    for p in ("train", "val", "test"):
        path = lists.get(p, "")
        names = _expand(_volume_names(read_list_file(path)), available) if path else []
        missing = [n for n in names if n not in available]
        if missing and not allow_missing:
            raise SourceLayoutError("acdc_h5", f"a volume (or its slices) for every name in "
                                    f"{os.path.basename(path)}; {H5_EXPECTED}",
                                    f"{len(missing)} names without data, e.g. {missing[:3]} (pass --allow-missing "
                                    "to skip them)", path)
        if missing:
            print(f"acdc_h5: skipping {len(missing)} cases of {os.path.basename(path)} without data")
        parts[p] = [n for n in names if n not in missing]
    plan = SplitPlan(parts["train"], parts["val"], parts["test"], holdout_test=holdout_test)
    in_tr, in_ts = set(plan.training_cases()), set(plan.test)
    wanted = sorted(in_tr | in_ts)
    from_slices = [c for c in wanted if c not in volumes]
    start = slice_numbering(slices)
    ordered = order_slices("acdc_h5", {c: slices[c] for c in from_slices}, start=start)
    target = prepare_target(dataset_id, name, raw_root, overwrite, [source])
    common = {"spacing": tuple(float(s) for s in spacing), "labels": list(LABELS.values()), "converter": "acdc_h5"}
    cases = []
    for c in wanted:
        src = dict(common, kind="h5", path=volumes[c], axes="zyx") if c in volumes else \
            dict(common, kind="slices", paths=ordered[c])
        cases.append(Case(c, src, c in in_tr, c in in_ts))
    summary = [f"split lists in {root}: " + ", ".join(f"{os.path.basename(lists[p])} ({len(parts[p])} volumes)"
                                                for p in ("train", "val", "test") if p in lists)]
    n_vol = len(wanted) - len(from_slices)
    if n_vol:
        folders = sorted({_rel(os.path.dirname(volumes[c]), root) for c in wanted if c in volumes})
        summary.append(f"{n_vol} volumes read from {', '.join(folders)}")
    if from_slices:
        folders = sorted({_rel(os.path.dirname(ordered[c][0]), root) for c in from_slices})
        summary.append(f"{len(from_slices)} volumes rebuilt from slices (numbered from {start}) in "
                       f"{', '.join(folders)}")
    info = DatasetInfo(channel_names={"0": "cineMRI"}, labels=dict(LABELS), file_ending=".nii.gz", name=name,
                       description=f"ACDC in the SSL4MIS h5 layout; {plan.describe()}", reference=REFERENCE,
                       licence=LICENCE,
                       extra={"spacing_note": f"spacing {list(common['spacing'])} (x, y, z) mm assigned by the "
                                              "converter (not stored in the h5 files)", "split": plan.describe(),
                              "split_lists": [lists[p] for p in ("train", "val", "test") if p in lists]})
    return build_dataset("acdc_h5", target, cases, write_volume_case, info, plan.fold0(), num_processes, overwrite,
                         verify, skip_bad=skip_bad, summary=summary)


def _add_nifti_args(p):
    p.add_argument("--holdout-test", action="store_true",
                   help="testing/ frames only in imagesTs (no splits_final.json)")


def _add_h5_args(p):
    p.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("X", "Y", "Z"),
                   help=f"voxel spacing in mm (not stored in the h5 files); default {DEFAULT_SPACING}")
    p.add_argument("--allow-missing", action="store_true", help="skip listed cases without data")
    p.add_argument("--holdout-test", action="store_true",
                   help="without val.list: test.list cases only in imagesTs (no splits_final.json)")


ACDC = Converter("acdc", "ACDC cardiac MRI, original NIfTI release (training/, testing/ patientXXX folders)",
                 _add_nifti_args, lambda a: convert_acdc(a.source, a.id, a.name or "ACDC",
                                                         holdout_test=a.holdout_test, **common_kwargs(a)),
                 with_split=True)
ACDC_H5 = Converter("acdc_h5", "ACDC cardiac MRI, SSL4MIS h5 layout (train/val/test.list + data/*.h5)",
                    _add_h5_args, lambda a: convert_acdc_h5(a.source, a.id, a.name or "ACDC", spacing=a.spacing,
                                                            allow_missing=a.allow_missing,
                                                            holdout_test=a.holdout_test, **common_kwargs(a)),
                    with_split=True)
