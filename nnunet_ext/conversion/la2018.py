"""Left Atrium (LA, 2018 Atrial Segmentation Challenge) in the h5 layout of semi-supervised
segmentation code (UA-MT and its successors).

Supported source layouts (``--source`` may be any of the folders named below)::

    UA-MT, as its code reads it             lists beside the cases
    data/                                   la2018_h5/
        2018LA_Seg_Training Set/                <ID>/mri_norm2.h5
            <ID>/mri_norm2.h5                   train.list
        train.list                              test.list
        test.list

``<ID>/mri_norm2.h5`` holds datasets 'image' (float32, normalised MRI) and 'label' (uint8, 0/1),
arrays in (x, y, z) order, 0.625 mm isotropic voxels. The case folder (the folder whose sub-folders
hold ``mri_norm2.h5``) is found at ``--source`` or up to two levels below it (a nested release
folder). ``train.list`` / ``test.list`` (or ``.txt``; one ID per line, 80 / 20 cases in the
published split; entries may also be ``<ID>/mri_norm2.h5``, ``<ID>.h5`` or paths) are read from the
case folder, else from the folder above it (UA-MT), else from ``--source``; the summary says which
ones were used.

Without ``train.list`` every case folder that is not in ``test.list`` is a training case; without
both lists all cases are training cases and no split is written. Cases named in a list but absent
from the folder are an error unless ``allow_missing`` (then they are skipped with a message; useful
for partial copies). With ``all_train`` the lists are ignored and every case goes to imagesTr.

The files store no geometry: spacing defaults to 0.625 mm isotropic (option), origin 0, identity
direction. Labels: 0 background, 1 left atrium.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import ConversionArgumentError, SourceLayoutError
from .layout import describe_folder, child_file, find_nested, require_source, visible_dirs
from .splits import SplitPlan, read_list_file
from .volumes import write_volume_case

_NAME = "la2018"
DEFAULT_SPACING = (0.625, 0.625, 0.625)
H5_NAME = "mri_norm2.h5"
LIST_SUFFIXES = (".list", ".txt")


def _holds_cases(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, d, H5_NAME)) for d in visible_dirs(folder))


def find_case_folder(source: str) -> str:
    """The folder whose sub-folders hold ``mri_norm2.h5``: ``source`` or a folder up to two levels below."""
    expected = f"case folders <ID>/{H5_NAME} in --source or in a folder below it (+ optional train.list / test.list)"
    hits = find_nested(source, _holds_cases, max_depth=2)
    if not hits:
        raise SourceLayoutError(_NAME, expected, f"no folder with <ID>/{H5_NAME}; the folder contains "
                                f"{describe_folder(source)}", source)
    if len(hits) > 1:
        raise SourceLayoutError(_NAME, expected, f"{len(hits)} folders with case folders: "
                                f"{[os.path.relpath(h, source) for h in hits][:5]}; pass the one to convert as "
                                "--source", source)
    return hits[0]


def find_lists(case_dir: str, source: str) -> Tuple[str, Dict[str, str]]:
    """(folder, {"train": path, "test": path}) of the first folder among the case folder, the folder
    above it and ``source`` that holds ``train.list`` or ``test.list`` (or ``.txt``); ("", {}) if none."""
    for folder in dict.fromkeys([case_dir, os.path.dirname(case_dir), source]):
        found = {}
        for part in ("train", "test"):
            path = child_file(folder, *(part + ext for ext in LIST_SUFFIXES))
            if path:
                found[part] = path
        if found:
            return folder, found
    return "", {}


def list_id(entry: str) -> str:
    """The case ID of a list entry: ``<ID>``, ``<ID>/mri_norm2.h5``, ``<ID>.h5`` or a path ending in one."""
    e = entry.strip().replace("\\", "/").rstrip("/")
    base = os.path.basename(e)
    if base.lower() == H5_NAME:
        return os.path.basename(os.path.dirname(e))
    if base.lower().endswith(".h5"):
        return base[:-3]
    return base


def _resolve_list(names: List[str], available: set, list_path: str, allow_missing: bool) -> List[str]:
    ids = list(dict.fromkeys(list_id(n) for n in names))
    missing = [i for i in ids if i not in available]
    if missing and not allow_missing:
        raise SourceLayoutError(_NAME, f"a folder <ID>/{H5_NAME} for every ID in {os.path.basename(list_path)}",
                                f"{len(missing)} listed IDs without folder, e.g. {missing[:3]} (pass "
                                "--allow-missing / allow_missing=True to skip them)", list_path)
    if missing:
        print(f"{_NAME}: skipping {len(missing)} cases listed in {os.path.basename(list_path)} but absent")
    return [i for i in ids if i in available]


def convert_la2018(source: str, dataset_id: int, name: str = "LA2018", raw_root: Optional[str] = None,
                   overwrite: bool = False, num_processes: int = 2, spacing: Sequence[float] = DEFAULT_SPACING,
                   axes: str = "xyz", allow_missing: bool = False, all_train: bool = False,
                   holdout_test: bool = False, verify: bool = True, skip_bad: bool = False) -> str:
    """Convert the LA 2018 h5 folder (``<ID>/mri_norm2.h5`` + ``train.list``/``test.list``).

    ``source``: the case folder or a folder above it (see the module docstring). ``spacing`` (x, y, z)
    mm, ``axes``: array order in the h5 files ('xyz' as distributed, or 'zyx'). ``skip_bad``: skip
    cases whose file cannot be read. Returns the dataset folder.
    """
    source = require_source(_NAME, source)
    if axes not in ("xyz", "zyx"):
        raise ConversionArgumentError(f"axes must be 'xyz' or 'zyx', got {axes!r}")
    case_dir = find_case_folder(source)
    expected = f"case folders <ID>/{H5_NAME} (+ optional train.list / test.list)"
    dirs = visible_dirs(case_dir)
    without = [d for d in dirs if not os.path.isfile(os.path.join(case_dir, d, H5_NAME))]
    if without:
        raise SourceLayoutError(_NAME, expected, f"no {H5_NAME} in {len(without)} folders, e.g. {without[:3]}",
                                os.path.join(case_dir, without[0]))
    available = set(dirs)
    summary = [] if case_dir == source else [f"case folders in {case_dir}"]
    list_dir, lists = find_lists(case_dir, source)
    split_lists = []
    if all_train:
        plan = SplitPlan(dirs)
        summary.append(f"all {len(dirs)} cases in imagesTr (--all-train"
                       + (f"; lists in {list_dir} ignored)" if lists else ")"))
    else:
        ts_list, tr_list = lists.get("test"), lists.get("train")
        test = _resolve_list(read_list_file(ts_list), available, ts_list, allow_missing) if ts_list else []
        if tr_list:
            train = _resolve_list(read_list_file(tr_list), available, tr_list, allow_missing)
        else:
            train = [d for d in dirs if d not in set(test)]
        plan = SplitPlan(train, test=test, holdout_test=holdout_test)
        split_lists = [p for p in (tr_list, ts_list) if p]
        if lists:
            used = " and ".join(f"{p} ({len(ids)} case{'' if len(ids) == 1 else 's'})"
                                for p, ids in ((tr_list, train), (ts_list, test)) if p)
            summary.append(f"split from {used}" + ("" if tr_list else f"; train: the other {len(train)} cases"))
        else:
            places = list(dict.fromkeys([case_dir, os.path.dirname(case_dir), source]))
            summary.append(f"no train.list / test.list in {' or '.join(places)}: all {len(train)} cases are "
                           "training cases, no split")
        unlisted = sorted(available - set(train) - set(test))
        if unlisted:
            print(f"{_NAME}: {len(unlisted)} case folders are in neither list and are not converted: {unlisted[:3]}")
    target = prepare_target(dataset_id, name, raw_root, overwrite, [source])
    in_tr, in_ts = set(plan.training_cases()), set(plan.test)
    if not in_tr:
        print(f"{_NAME}: no training cases (only test cases present); imagesTr stays empty. "
              "Use --all-train to put every case into imagesTr.")
    common = {"kind": "h5", "axes": axes, "spacing": tuple(float(s) for s in spacing), "labels": [0, 1],
              "converter": _NAME}
    cases = [Case(c, dict(common, path=os.path.join(case_dir, c, H5_NAME)), c in in_tr, c in in_ts)
             for c in sorted(in_tr | in_ts)]
    extra = {"spacing_note": f"spacing {list(common['spacing'])} mm assigned by the converter "
                             "(not stored in the h5 files)", "split": plan.describe()}
    if split_lists:
        extra["split_lists"] = split_lists
    info = DatasetInfo(channel_names={"0": "MRI"}, labels={"background": 0, "left atrium": 1}, file_ending=".nii.gz",
                       name=name, description=f"LA 2018 (UA-MT h5 layout); {plan.describe()}",
                       reference=("Xiong et al., 2018 Atrial Segmentation Challenge, MedIA 2021; "
                                  "Yu et al., UA-MT, MICCAI 2019"),
                       licence="see the 2018 Atrial Segmentation Challenge data terms", extra=extra)
    return build_dataset(_NAME, target, cases, write_volume_case, info, plan.fold0(), num_processes, overwrite, verify,
                         skip_bad=skip_bad, summary=summary)


def _add_args(p):
    p.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("X", "Y", "Z"),
                   help=f"voxel spacing in mm (not stored in the files); default {DEFAULT_SPACING}")
    p.add_argument("--axes", choices=["xyz", "zyx"], default="xyz",
                   help="array axis order in the h5 files (default xyz)")
    p.add_argument("--allow-missing", action="store_true", help="skip listed cases whose folder is absent")
    p.add_argument("--all-train", action="store_true", help="ignore train.list/test.list: every case into imagesTr")
    p.add_argument("--holdout-test", action="store_true",
                   help="test.list cases only in imagesTs (no splits_final.json)")


LA2018 = Converter("la2018", "LA 2018 left atrium MRI in the UA-MT h5 layout (<ID>/mri_norm2.h5, *.list)", _add_args,
                   lambda a: convert_la2018(a.source, a.id, a.name or "LA2018", spacing=a.spacing, axes=a.axes,
                                            allow_missing=a.allow_missing, all_train=a.all_train,
                                            holdout_test=a.holdout_test, **common_kwargs(a)),
                   with_split=True)
