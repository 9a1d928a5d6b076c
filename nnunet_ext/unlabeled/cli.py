"""The ``preprocess-unlabeled`` verb (registered by ``nnunet_ext.cli``; light imports).

The ``pseudo-label`` verb, which predicts unlabelled images with a trained model, is CPS's: :mod:`nnunet_ext.cps.cli`.
"""
from __future__ import annotations

import argparse

PREPROCESS_DESCRIPTION = """\
Preprocess the unlabelled images of a dataset ($nnUNet_raw/DatasetXXX_Name/imagesUnlabeled/, named like
imagesTr: CASE_0000<file_ending>, one file per channel) with the dataset's own plans and nnU-Net's
preprocessor (same cropping, resampling and normalisation as the training cases), into
$nnUNet_preprocessed/DatasetXXX_Name/<data_identifier>_unlabeled/. Run it after nnU-Net's own planning
and preprocessing; the CPS trainers read the result. Resumable (re-run the same command); bad files are
named and skipped (listed in skipped.json). Split the work over processes or machines with --num-parts N
--part I (0-based, as nnUNetv2_predict's -num_parts / -part_id): each part does its share, at the same time
or not, and skipped.json lists every part's skipped cases."""

def register(subparsers) -> None:
    p = subparsers.add_parser("preprocess-unlabeled", help="preprocess imagesUnlabeled with the dataset's plans",
                              description=PREPROCESS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    p.add_argument("-c", dest="configurations", nargs="+", required=True, metavar="CONFIG",
                   help="configuration(s) of the plans, e.g. 3d_fullres 2d")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-np", dest="num_processes", type=int, default=None,
                   help="worker processes (default: $nnUNet_def_n_proc, else 4)")
    p.add_argument("--roi-masks", dest="roi_masks", default=None, metavar="DIR",
                   help="a configuration cropped to a region of interest only (coarse-to-fine 3d_fine): one mask per "
                        "case (DIR/CASE<file_ending>, e.g. the coarse model's predictions); each case is cropped to "
                        "its bounding box + the plans' margin")
    p.add_argument("--num-parts", dest="num_parts", type=int, default=1, metavar="N",
                   help="split the cases into N parts run as separate processes (like nnUNetv2_predict -num_parts); "
                        "default 1")
    p.add_argument("--part", type=int, default=0, metavar="I",
                   help="the part this process does, 0..N-1 (like nnUNetv2_predict -part_id); default 0")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_preprocess_unlabeled)


def cmd_preprocess_unlabeled(args) -> int:
    import os

    from nnunet_ext.unlabeled.preprocess import preprocess_unlabeled
    from nnunet_ext.unlabeled.roi import registered_roi_crops

    n = args.num_processes or int(os.environ.get("nnUNet_def_n_proc", 4))
    preprocess_unlabeled(args.dataset, args.configurations, plans=args.plans, num_processes=n,
                         progress=not args.quiet, roi_masks=args.roi_masks, roi_crops=registered_roi_crops(),
                         num_parts=args.num_parts, part=args.part)
    return 0
