"""Synapse multi-organ CT (BTCV) as distributed for TransUNet.

Supported source layout::

    <source>/                        e.g. data/Synapse
        train_npz/<case>_slice<NNN>.npz   2D slices, arrays 'image' (H, W) and 'label' (H, W),
                                          e.g. case0005_slice000.npz (18 training cases)
        test_vol_h5/<case>.npy.h5         volumes, datasets 'image' and 'label' of shape (slices, H, W),
                                          e.g. case0001.npy.h5 (12 test cases)

``--source`` may also be a folder up to two levels above (``data/`` of a TransUNet checkout); folder
names may be spelt in any case. Training volumes are rebuilt by stacking each case's slices in
slice-index order (indices must be contiguous from 0, or from 1 in a copy that numbers them so). Labels
keep TransUNet's 8-organ map: 1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver, 6 pancreas,
7 spleen, 8 stomach (other values are an error). Intensities are kept as distributed (TransUNet clipped CT to
[-125, 275] HU and scaled to [0, 1]).

The files store no voxel spacing; every volume gets ``spacing`` (x, y, z), default
(0.76, 0.76, 3.0) mm: a typical BTCV voxel size (in-plane 0.54-0.98 mm, slice spacing 2.5-5 mm),
not the case's true spacing. Pass the real values if you have them. Origin is 0 and direction
identity.

Split: train_npz cases are fold-0 training cases, test_vol_h5 cases fold-0 validation cases in
``splits_final.json`` and also imagesTs/labelsTs (``holdout_test``: imagesTs only, no split).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import ConversionArgumentError, SourceLayoutError
from .layout import child_dir, find_nested, list_files, require_source
from .splits import SplitPlan
from .volumes import group_slices, write_volume_case

_NAME = "synapse"
DEFAULT_SPACING = (0.76, 0.76, 3.0)
LABELS = {"background": 0, "aorta": 1, "gallbladder": 2, "left kidney": 3, "right kidney": 4, "liver": 5,
          "pancreas": 6, "spleen": 7, "stomach": 8}


def convert_synapse(source: str, dataset_id: int, name: str = "Synapse", raw_root: Optional[str] = None,
                    overwrite: bool = False, num_processes: int = 2,
                    spacing: Sequence[float] = DEFAULT_SPACING, holdout_test: bool = False,
                    verify: bool = True, skip_bad: bool = False) -> str:
    """Convert TransUNet's Synapse folder (``train_npz/``, ``test_vol_h5/``) to ``DatasetXXX_Synapse``.

    ``spacing`` (x, y, z) in mm is assigned to every volume (the files store none).
    Returns the dataset folder.
    """
    given = require_source(_NAME, source)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ConversionArgumentError(f"spacing must be three positive numbers (x y z), got {spacing}")
    hits = find_nested(given, lambda d: bool(child_dir(d, "train_npz") or child_dir(d, "test_vol_h5")), max_depth=2)
    if len(hits) > 1:
        raise SourceLayoutError(_NAME, "one folder with train_npz/ and test_vol_h5/",
                                f"{len(hits)}: {[os.path.relpath(h, given) for h in hits][:5]}; pass the one to "
                                "convert as --source", given)
    source = hits[0] if hits else given
    tr_dir = child_dir(source, "train_npz") or os.path.join(source, "train_npz")
    ts_dir = child_dir(source, "test_vol_h5") or os.path.join(source, "test_vol_h5")
    slices = list_files(_NAME, tr_dir, [".npz"], "a folder 'train_npz' with <case>_slice<NNN>.npz files")
    volumes = list_files(_NAME, ts_dir, [".npy.h5", ".h5"], "a folder 'test_vol_h5' with <case>.npy.h5 files")
    train = group_slices(_NAME, tr_dir, slices, r"(?i)^(.+?)_slice_?(\d+)\.npz$")
    test = {}
    for f in volumes:
        cid = f[:-7] if f.lower().endswith(".npy.h5") else f[:-3]
        test[cid] = os.path.join(ts_dir, f)
    both = sorted(set(train) & set(test))
    if both:
        raise SourceLayoutError(_NAME, "disjoint training (train_npz) and test (test_vol_h5) cases",
                                f"cases in both: {both[:5]}", source)
    plan = SplitPlan(sorted(train), test=sorted(test), holdout_test=holdout_test)
    target = prepare_target(dataset_id, name, raw_root, overwrite, [given])
    common = {"spacing": tuple(float(s) for s in spacing), "labels": list(LABELS.values()), "converter": _NAME}
    in_tr = set(plan.training_cases())
    cases = [Case(c, dict(common, kind="slices", paths=p), True, False) for c, p in train.items()]
    cases += [Case(c, dict(common, kind="h5", path=p, axes="zyx"), c in in_tr, True) for c, p in sorted(test.items())]
    info = DatasetInfo(channel_names={"0": "CT"}, labels=dict(LABELS), file_ending=".nii.gz", name=name,
                       description=("Synapse multi-organ CT (BTCV) in TransUNet's distribution; training volumes "
                                    f"rebuilt from train_npz slices; {plan.describe()}"),
                       reference="Chen et al., TransUNet, arXiv:2102.04306; Landman et al., MICCAI 2015 BTCV challenge",
                       licence="see the Synapse BTCV terms of use (registration required)",
                       extra={"spacing_note": f"spacing {list(common['spacing'])} (x, y, z) mm assigned by the "
                                              "converter: the source files store no spacing",
                              "split": plan.describe()})
    summary = ([] if source == given else [f"dataset folder {source}"]) + \
        [f"{len(train)} training volumes rebuilt from {tr_dir}, {len(test)} test volumes from {ts_dir}"]
    return build_dataset(_NAME, target, cases, write_volume_case, info, plan.fold0(), num_processes, overwrite, verify,
                         skip_bad=skip_bad, summary=summary)


def _add_args(p):
    p.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("X", "Y", "Z"),
                   help="voxel spacing in mm assigned to every volume (not stored in the files); "
                        f"default {DEFAULT_SPACING}")
    p.add_argument("--holdout-test", action="store_true",
                   help="test_vol_h5 cases only in imagesTs (no splits_final.json)")


SYNAPSE = Converter("synapse", "Synapse multi-organ CT as distributed for TransUNet (train_npz/, test_vol_h5/)",
                    _add_args, lambda a: convert_synapse(a.source, a.id, a.name or "Synapse", spacing=a.spacing,
                                                         holdout_test=a.holdout_test, **common_kwargs(a)),
                    with_split=True)
