"""ACDC cardiac cine MRI (Bernard et al., IEEE TMI 2018). Labels: 0 background, 1 RV, 2 MYO, 3 LV.

Two source layouts are supported.

``acdc`` -- the original NIfTI release::

    <source>/                  the release folder (or its 'database/' sub-folder, or a folder of patients)
        training/patient001/patient001_frame01.nii.gz
                           /patient001_frame01_gt.nii.gz   (one image + _gt pair per annotated frame:
                           /patient001_frame12.nii.gz       end-diastole and end-systole)
                           /patient001_frame12_gt.nii.gz
                           /patient001_4d.nii.gz, Info.cfg  (ignored)
        testing/patient101/... same structure (the ground truth of the 50 test patients is part of the
                               later releases; test frames without _gt are skipped with a message)

    Each annotated frame is a case ``patientXXX_frameYY``; images and labels are copied unchanged, so
    spacing, origin and direction are kept. Published split: training/ (100 patients) vs testing/
    (50 patients) -> fold 0 of ``splits_final.json`` = (training, testing), testing frames also in
    imagesTs/labelsTs (``holdout_test``: imagesTs only). A folder of patientXXX folders (no
    training/ or testing/) gives training cases only and no split.

``acdc_h5`` -- the h5 layout of semi-supervised segmentation code (SSL4MIS and successors)::

    <source>/
        train.list, val.list, test.list   volume names, one per line (patient001_frame01); slice
                                          names (patient001_frame01_slice_3) are reduced to volumes,
                                          patient ids (patient001) stand for all their frames;
                                          train.txt / val.txt / test.txt are accepted as well
        data/<name>.h5                    volumes, or ACDC_training_volumes/<name>.h5; datasets
                                          'image' (slices, H, W) float and 'label' (slices, H, W)
        data/slices/<name>_slice_<k>.h5   2D slices (or ACDC_training_slices/); used to rebuild a
                                          volume when its volume file is absent

    At least one list must exist. train + val go to imagesTr with fold 0 = (train, val); test goes
    to imagesTs/labelsTs (without val.list, test cases are fold-0 validation cases as above). The h5
    files store no spacing: ``spacing`` (x, y, z) defaults to (1.5625, 1.5625, 10.0) mm, a typical
    ACDC voxel size, not the true per-case value.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Sequence

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import SourceLayoutError
from .layout import first_existing_dir, list_files
from .splits import SplitPlan, read_list_file
from .volumes import group_slices, write_volume_case

LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
DEFAULT_SPACING = (1.5625, 1.5625, 10.0)
REFERENCE = ("Bernard et al., Deep Learning Techniques for Automatic MRI Cardiac Multi-structures Segmentation, "
             "IEEE TMI 2018")
LICENCE = "ACDC data: see the terms of the ACDC challenge (non-commercial research use)"
_PATIENT = re.compile(r"^patient\d+$")
_FRAME = re.compile(r"^(patient\d+_frame\d+)\.nii(\.gz)?$")


# ------------------------------------------------------------------ NIfTI release
def _frames(patient_dir: str) -> Dict[str, tuple]:
    """case id -> (image, gt or None) for the annotated frames of one patient folder."""
    out = {}
    for f in sorted(os.listdir(patient_dir)):
        m = _FRAME.match(f)
        if m:
            base = m.group(1)
            gt = [os.path.join(patient_dir, base + "_gt" + ext) for ext in (".nii.gz", ".nii")]
            gt = [g for g in gt if os.path.isfile(g)]
            out[base] = (os.path.join(patient_dir, f), gt[0] if gt else None)
    return out


def _scan_patients(folder: str) -> Dict[str, tuple]:
    patients = sorted(d for d in os.listdir(folder) if _PATIENT.match(d) and os.path.isdir(os.path.join(folder, d)))
    if not patients:
        raise SourceLayoutError("acdc", "patientXXX folders with patientXXX_frameYY.nii.gz and _gt files",
                                "no patientXXX folder", folder)
    cases = {}
    for p in patients:
        frames = _frames(os.path.join(folder, p))
        if not frames:
            raise SourceLayoutError("acdc", "patientXXX_frameYY.nii.gz (+ _gt.nii.gz) in each patient folder",
                                    "no frame images", os.path.join(folder, p))
        cases.update(frames)
    return cases


def convert_acdc(source: str, dataset_id: int, name: str = "ACDC", raw_root: Optional[str] = None,
                 overwrite: bool = False, num_processes: int = 2, holdout_test: bool = False,
                 verify: bool = True) -> str:
    """Convert the ACDC NIfTI release (``training/``, ``testing/`` patient folders). Returns the dataset folder."""
    source = os.path.abspath(source)
    root = os.path.join(source, "database") if os.path.isdir(os.path.join(source, "database")) else source
    tr_dir, ts_dir = os.path.join(root, "training"), os.path.join(root, "testing")
    if os.path.isdir(tr_dir) or os.path.isdir(ts_dir):
        train = _scan_patients(tr_dir) if os.path.isdir(tr_dir) else {}
        test = _scan_patients(ts_dir) if os.path.isdir(ts_dir) else {}
    else:
        train, test = _scan_patients(root), {}
    no_gt_train = sorted(c for c, (_, g) in train.items() if g is None)
    if no_gt_train:
        raise SourceLayoutError("acdc", "a _gt file for every annotated training frame",
                                f"no ground truth for {no_gt_train[:3]}", tr_dir)
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
    info = DatasetInfo(channel_names={"0": "cineMRI"}, labels=dict(LABELS), file_ending=".nii.gz", name=name,
                       description=f"ACDC NIfTI release; {plan.describe()}", reference=REFERENCE, licence=LICENCE,
                       extra={"split": plan.describe()})
    return build_dataset("acdc", target, cases, write_volume_case, info, plan.fold0(), num_processes, overwrite, verify)


# ------------------------------------------------------------------ h5 layout
def _volume_names(entries: List[str]) -> List[str]:
    out = []
    for e in entries:
        e = os.path.basename(e)
        e = re.sub(r"\.h5$", "", e)
        e = re.sub(r"_slice_\d+$", "", e)
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


def convert_acdc_h5(source: str, dataset_id: int, name: str = "ACDC", raw_root: Optional[str] = None,
                    overwrite: bool = False, num_processes: int = 2, spacing: Sequence[float] = DEFAULT_SPACING,
                    allow_missing: bool = False, holdout_test: bool = False, verify: bool = True) -> str:
    """Convert ACDC in the SSL4MIS h5 layout (``*.list`` + ``data/*.h5`` or ``ACDC_training_volumes/``).

    Returns the dataset folder.
    """
    source = os.path.abspath(source)
    lists = {}
    for p in ("train", "val", "test"):
        found = [os.path.join(source, p + ext) for ext in (".list", ".txt")
                 if os.path.isfile(os.path.join(source, p + ext))]
        lists[p] = found[0] if found else ""
    if not any(lists.values()):
        raise SourceLayoutError("acdc_h5", "train.list / val.list / test.list (or .txt; volume names, one per line)",
                                f"none of them; the folder contains {sorted(os.listdir(source))[:8]}", source)
    expected = ("volumes <name>.h5 in data/ or ACDC_training_volumes/ "
                "(or slices in data/slices/ or ACDC_training_slices/)")
    vol_dir = slice_dir = None
    for d in ("ACDC_training_volumes", "data"):
        if os.path.isdir(os.path.join(source, d)):
            vol_dir = os.path.join(source, d)
            break
    for d in ("ACDC_training_slices", os.path.join("data", "slices")):
        if os.path.isdir(os.path.join(source, d)):
            slice_dir = os.path.join(source, d)
            break
    if vol_dir is None and slice_dir is None:
        first_existing_dir("acdc_h5", source, ["ACDC_training_volumes", "data", "ACDC_training_slices"], expected)
    volumes = {f[:-3]: os.path.join(vol_dir, f) for f in list_files("acdc_h5", vol_dir, [".h5"], expected, True)} \
        if vol_dir else {}
    slices = {}
    if slice_dir:
        files = list_files("acdc_h5", slice_dir, [".h5"], expected, True)
        slices = group_slices("acdc_h5", slice_dir, files, r"^(.+)_slice_(\d+)\.h5$")
    parts = {}
    for p, path in lists.items():
        names = _expand(_volume_names(read_list_file(path)), set(volumes) | set(slices)) if path else []
        missing = [n for n in names if n not in volumes and n not in slices]
        if missing and not allow_missing:
            raise SourceLayoutError("acdc_h5", f"a volume (or its slices) for every name in "
                                    f"{os.path.basename(path)}; {expected}",
                                    f"{len(missing)} names without data, e.g. {missing[:3]} (pass --allow-missing "
                                    "to skip them)", path)
        if missing:
            print(f"acdc_h5: skipping {len(missing)} cases of {os.path.basename(path)} without data")
        parts[p] = [n for n in names if n not in missing]
    plan = SplitPlan(parts["train"], parts["val"], parts["test"], holdout_test=holdout_test)
    target = prepare_target(dataset_id, name, raw_root, overwrite, [source])
    in_tr, in_ts = set(plan.training_cases()), set(plan.test)
    common = {"spacing": tuple(float(s) for s in spacing), "labels": list(LABELS.values()), "converter": "acdc_h5"}
    cases = []
    for c in sorted(in_tr | in_ts):
        src = dict(common, kind="h5", path=volumes[c], axes="zyx") if c in volumes else \
            dict(common, kind="slices", paths=slices[c])
        cases.append(Case(c, src, c in in_tr, c in in_ts))
    info = DatasetInfo(channel_names={"0": "cineMRI"}, labels=dict(LABELS), file_ending=".nii.gz", name=name,
                       description=f"ACDC in the SSL4MIS h5 layout; {plan.describe()}", reference=REFERENCE,
                       licence=LICENCE,
                       extra={"spacing_note": f"spacing {list(common['spacing'])} (x, y, z) mm assigned by the "
                                              "converter (not stored in the h5 files)", "split": plan.describe()})
    return build_dataset("acdc_h5", target, cases, write_volume_case, info, plan.fold0(), num_processes, overwrite,
                         verify)


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
