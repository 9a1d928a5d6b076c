"""The ``nnunet-ext evaluate`` verb (registered by ``nnunet_ext.cli``; imports stay light until it runs)."""
from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Evaluate predictions against reference segmentations, per case and per class: Dice, normalised surface
Dice (NSD) at a tolerance in mm, HD95 in mm, and the reference/predicted volumes and their difference
(mm^3; mm^2 for 2D images). Files are read with nnU-Net's readers (NIfTI, NRRD, MHA, PNG, BMP, TIF, ...);
cases are matched by file name; spacing comes from the reference files and each prediction must have
the reference's shape and geometry. Background (0) is not evaluated.

Definitions:
  Dice  2|R&P| / (|R|+|P|) in voxels (as nnU-Net).
  NSD   normalised surface Dice (Nikolov et al. 2021): the share of both surfaces' area lying within the
        tolerance of the other surface (MONAI compute_surface_dice, use_subvoxels=True: surface elements
        weighted by area, as DeepMind's surface-distance).
  HD95  max of the two directed 95th percentiles of the distances between the surface voxels of R and P
        (MONAI compute_hausdorff_distance, percentile=95).
  vol_diff = vol_pred - vol_ref.
Empty masks:
  both empty       Dice, NSD, HD95 = NaN, left out of all means (nnU-Net's convention).
  exactly one      Dice 0, NSD 0 (counted in the means); HD95 NaN (undefined): left out of the HD95
                   mean and counted in the 'one empty' column of the summary.
Means: per class over cases; 'overall' = mean of the class means.
"""

EPILOG = """\
examples:
  nnunet-ext evaluate -gt $nnUNet_raw/Dataset004_Hippocampus/labelsTs -pred preds -d 4 -o eval
  nnunet-ext evaluate -gt gt -pred preds --labels '{"liver": 1, "tumour": 2}' --tolerance 1=2.0,2=1.0
outputs (-o OUT): per_case.csv, summary.csv, summary.md, summary.json (the table is also printed).
errors (missing or mismatched files, bad labels): one line on stderr, exit code 2.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-gt", "--gt", dest="gt", required=True, metavar="GT_DIR",
                   help="folder with the reference segmentations (e.g. labelsTs)")
    p.add_argument("-pred", "--pred", dest="pred", required=True, metavar="PRED_DIR",
                   help="folder with the predictions, same file names as the references")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-d", "--dataset", dest="dataset", metavar="D",
                   help="nnU-Net dataset id or name: class names, file ending and reader from its dataset.json "
                        "($nnUNet_raw/DatasetXXX_*/ or $nnUNet_preprocessed/DatasetXXX_*/)")
    g.add_argument("--labels", metavar="JSON",
                   help="the classes: a dataset.json path, or inline JSON like dataset.json's \"labels\", e.g. "
                        "'{\"liver\": 1, \"tumour\": 2}'; region-based labels (lists of labels, e.g. "
                        "'{\"whole tumour\": [1, 2, 3]}') are evaluated as the union of their labels; "
                        "an \"ignore\" entry marks nnU-Net's ignore label (its reference voxels are left out). "
                        "Default: the foreground labels present in the reference files")
    p.add_argument("-o", "--output", dest="output", metavar="OUT",
                   help="folder for per_case.csv, summary.csv, summary.md, summary.json (created)")
    p.add_argument("--tolerance", default="1", metavar="MM",
                   help="NSD tolerance in mm: one value (default 1), per class '1=2.0,2=1.5' (a bare number in the "
                        "list is the default for unlisted classes: '1.0,2=1.5'; class names work as keys), inline "
                        "JSON '{\"1\": 2.0, \"default\": 1}' or a .json file")
    p.add_argument("-np", "--num-processes", dest="num_processes", type=int, default=None, metavar="N",
                   help="worker processes (default: min(CPU count, 8))")
    p.add_argument("--file-ending", dest="file_ending", default=None, metavar="EXT",
                   help="file ending of the segmentations, e.g. .nii.gz (default: dataset.json's, else the one "
                        "found in GT_DIR)")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate only the cases that have a prediction (default: error listing the references "
                        "without prediction)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def cmd_evaluate(args) -> int:
    import warnings

    from nnunet_ext.evaluation.evaluate import evaluate_folders, find_dataset_json, parse_tolerance

    # an EvaluationError is a UserError: nnunet_ext.cli.main prints it as one line (exit 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset_json = find_dataset_json(args.dataset) if args.dataset is not None else None
            result = evaluate_folders(args.gt, args.pred, labels=args.labels, tolerance=parse_tolerance(args.tolerance),
                                      num_processes=args.num_processes, out_dir=args.output,
                                      file_ending=args.file_ending, dataset_json=dataset_json,
                                      progress=not args.quiet, allow_missing=args.allow_missing)
        finally:
            _print_warnings(caught)
    print(result["markdown"], end="")
    if args.output:
        print(f"wrote {args.output}/per_case.csv, summary.csv, summary.md, summary.json")
    return 0


def _print_warnings(caught) -> None:
    seen = set()
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            continue
        text = str(w.message).strip()
        if text not in seen:
            seen.add(text)
            print(f"nnunet-ext evaluate: warning: {text}", file=sys.stderr)


def register(subparsers) -> None:
    """Add the ``evaluate`` verb to ``nnunet-ext``."""
    p = subparsers.add_parser("evaluate", help="Dice, NSD, HD95 and volume differences of predictions vs references",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_evaluate)
