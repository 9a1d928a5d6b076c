"""Left Atrium (LA, 2018 Atrial Segmentation Challenge) in the h5 layout of semi-supervised
segmentation code (UA-MT and its successors).

Supported source layout::

    <source>/
        <ID>/mri_norm2.h5     datasets 'image' (float32, normalised MRI) and 'label' (uint8, 0/1),
                              arrays in (x, y, z) order, 0.625 mm isotropic voxels
        train.list            optional: one <ID> per line (80 cases in the published split)
        test.list             optional: one <ID> per line (20 cases in the published split)

Without ``train.list`` every case folder that is not in ``test.list`` is a training case; without
both lists all cases are training cases and no split is written. Cases named in a list but absent
from the folder are an error unless ``allow_missing`` (then they are skipped with a message; useful
for partial copies). With ``all_train`` the lists are ignored and every case goes to imagesTr.

The files store no geometry: spacing defaults to 0.625 mm isotropic (option), origin 0, identity
direction. Labels: 0 background, 1 left atrium.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import SourceLayoutError
from .layout import require_dir
from .splits import SplitPlan, read_list_file
from .volumes import write_volume_case

_NAME = "la2018"
DEFAULT_SPACING = (0.625, 0.625, 0.625)
H5_NAME = "mri_norm2.h5"


def _resolve_list(names: List[str], available: set, list_path: str, allow_missing: bool) -> List[str]:
    ids = [os.path.basename(os.path.dirname(n)) if n.endswith(".h5") else os.path.basename(n.rstrip("/"))
           for n in names]
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
                   holdout_test: bool = False, verify: bool = True) -> str:
    """Convert the LA 2018 h5 folder (``<ID>/mri_norm2.h5`` + ``train.list``/``test.list``).

    ``spacing`` (x, y, z) mm, ``axes``: array order in the h5 files ('xyz' as distributed, or 'zyx').
    Returns the dataset folder.
    """
    source = os.path.abspath(source)
    expected = f"case folders <ID>/{H5_NAME} (+ optional train.list / test.list)"
    require_dir(_NAME, source, expected)
    if axes not in ("xyz", "zyx"):
        raise ValueError(f"axes must be 'xyz' or 'zyx', got {axes!r}")
    dirs = sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d)) and not d.startswith("."))
    without = [d for d in dirs if not os.path.isfile(os.path.join(source, d, H5_NAME))]
    if without:
        raise SourceLayoutError(_NAME, expected, f"no {H5_NAME} in {len(without)} folders, e.g. {without[:3]}",
                                os.path.join(source, without[0]))
    if not dirs:
        raise SourceLayoutError(_NAME, expected, "no case folders", source)
    available = set(dirs)
    tr_list, ts_list = os.path.join(source, "train.list"), os.path.join(source, "test.list")
    if all_train:
        plan = SplitPlan(dirs)
    else:
        test = (_resolve_list(read_list_file(ts_list), available, ts_list, allow_missing)
                if os.path.isfile(ts_list) else [])
        if os.path.isfile(tr_list):
            train = _resolve_list(read_list_file(tr_list), available, tr_list, allow_missing)
        else:
            train = [d for d in dirs if d not in set(test)]
        plan = SplitPlan(train, test=test, holdout_test=holdout_test)
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
    cases = [Case(c, dict(common, path=os.path.join(source, c, H5_NAME)), c in in_tr, c in in_ts)
             for c in sorted(in_tr | in_ts)]
    info = DatasetInfo(channel_names={"0": "MRI"}, labels={"background": 0, "left atrium": 1}, file_ending=".nii.gz",
                       name=name, description=f"LA 2018 (UA-MT h5 layout); {plan.describe()}",
                       reference=("Xiong et al., 2018 Atrial Segmentation Challenge, MedIA 2021; "
                                  "Yu et al., UA-MT, MICCAI 2019"),
                       licence="see the 2018 Atrial Segmentation Challenge data terms",
                       extra={"spacing_note": f"spacing {list(common['spacing'])} mm assigned by the converter "
                                              "(not stored in the h5 files)", "split": plan.describe()})
    return build_dataset(_NAME, target, cases, write_volume_case, info, plan.fold0(), num_processes, overwrite, verify)


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
