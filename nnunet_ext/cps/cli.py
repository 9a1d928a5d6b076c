"""The ``pseudo-label`` verb (registered by ``nnunet_ext.cli``; light imports).

The pseudo-label route belongs to the semi-supervised method (CPS): it reads the unlabelled images through
:mod:`nnunet_ext.unlabeled`, which knows nothing of it.
"""
from __future__ import annotations

import argparse

PSEUDO_DESCRIPTION = """\
The pseudo-label route (what the FLARE22 winner did with nnU-Net): predict the unlabelled images with a trained
model (nnU-Net's predictor, its probabilities kept in memory only), score each pseudo-label's uncertainty,
keep the most certain ones, and write a new raw dataset = the labelled cases + the kept pseudo-labelled cases
(imagesTr/labelsTr; imagesTs/labelsTs and imagesUnlabeled carried over) that stock nnU-Net trains on. Repeat
with a model trained on the new dataset to iterate.

Uncertainty of a pseudo-label (documented in nnunet_ext/cps/uncertainty.py): the mean normalised entropy
(0..1) of the predicted class probabilities over the voxels predicted as foreground or next to it (the
whole image when nothing is predicted); an empty prediction is never kept.

Iterating with the stability filter (the FLARE22 winner's): --previous names the previous round's pseudo-labels
(the dataset pseudo-label wrote then, or a folder of CASE<file_ending> label files); each case's stability (the
Dice between this round's and the previous round's pseudo-label, mean over the foreground classes in either) is
recorded in pseudo_labels.json, and with --min-stability S a case is kept only if it is at least S (and it passes
the uncertainty filter). See docs/methods/cps.md, "Iterative pseudo-labels".

Thousands of cases: prediction streams like nnUNetv2_predict (-npp processes preprocess the next cases, -nps
processes export and score, the network is never kept waiting; a few cases in memory whatever their number), with a
progress bar, and resumes where it stopped (each case is cached in the model folder as soon as it is done). Split
the work over processes or machines with --num-parts N --part I (0-based, as nnUNetv2_predict's -num_parts /
-part_id), the same command otherwise: each part predicts its share, the last part to finish writes the dataset
once (or run the command with --merge instead of --part); parts started with other settings are refused."""


def register(subparsers) -> None:
    p = subparsers.add_parser("pseudo-label", help="predict imagesUnlabeled, filter, write a pseudo-labelled dataset",
                              description=PSEUDO_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name (with imagesUnlabeled)")
    p.add_argument("-c", dest="configuration", required=True, help="configuration of the model")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainer", help="trainer of the model")
    p.add_argument("-f", dest="folds", nargs="+", default=["0"], help="fold(s) of the model (several: ensemble)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier of the model")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("--target-id", dest="target_id", type=int, required=True,
                   help="id of the new raw dataset (DatasetYYY_<name>PL)")
    p.add_argument("--target-name", dest="target_name", default=None,
                   help="name of the new dataset (default: the source's name + 'PL')")
    p.add_argument("--keep", default="0.95",
                   help="how many pseudo-labels to keep: a fraction (0-1] of the predicted cases, or a count (> 1); "
                        "the most certain are kept (default 0.95; the FLARE22 winner kept 1924 of 2000)")
    p.add_argument("--max-uncertainty", dest="max_uncertainty", type=float, default=None,
                   help="also drop every pseudo-label whose uncertainty is above this value (0..1)")
    p.add_argument("--previous", default=None, metavar="DIR_OR_DATASET",
                   help="the previous round's pseudo-labels: the dataset (id, name or folder) pseudo-label wrote "
                        "then, or a folder of CASE<file_ending> label files; records each case's stability")
    p.add_argument("--min-stability", dest="min_stability", type=float, default=None, metavar="S",
                   help="keep a case only if its stability (Dice with the previous round, 0..1) is at least S, "
                        "e.g. 0.9; needs --previous")
    p.add_argument("--disable-tta", dest="disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument("-device", dest="device", choices=["cuda", "cpu", "mps"], default=None,
                   help="default: cuda if available")
    p.add_argument("--overwrite", action="store_true", help="replace an existing target dataset folder")
    p.add_argument("--num-parts", dest="num_parts", type=int, default=1, metavar="N",
                   help="split the unlabelled cases into N parts run as separate processes (one per GPU or machine; "
                        "like nnUNetv2_predict -num_parts); default 1")
    p.add_argument("--part", type=int, default=None, metavar="I",
                   help="the part this process predicts, 0..N-1 (like nnUNetv2_predict -part_id); the last part to "
                        "finish writes the dataset")
    p.add_argument("--merge", action="store_true",
                   help="predict nothing: write the dataset of the N finished parts (with --num-parts N, the parts' "
                        "other options); names the cases of unfinished parts")
    p.add_argument("-npp", dest="npp", type=int, default=None,
                   help="processes reading and preprocessing the next cases (0: in this process); default 3 as "
                        "nnUNetv2_predict, at most $nnUNet_def_n_proc")
    p.add_argument("-nps", dest="nps", type=int, default=None,
                   help="processes turning predictions into pseudo-labels in the image's geometry, writing and scoring "
                        "them (0: in this process); default 3 as nnUNetv2_predict, at most $nnUNet_def_n_proc")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pseudo_label)


def cmd_pseudo_label(args) -> int:
    from nnunet_ext.cps.pseudo_label import PseudoLabelSettings, default_processes, run_pseudo_label

    s = PseudoLabelSettings(dataset=args.dataset, configuration=args.configuration, trainer=args.trainer,
                            folds=args.folds, plans=args.plans, checkpoint=args.checkpoint,
                            target_id=args.target_id, target_name=args.target_name, keep=float(args.keep),
                            max_uncertainty=args.max_uncertainty, use_mirroring=not args.disable_tta,
                            device=args.device, overwrite=args.overwrite, progress=not args.quiet,
                            previous=args.previous, min_stability=args.min_stability, num_parts=args.num_parts,
                            part=args.part, merge=args.merge, num_processes_preprocessing=default_processes(args.npp),
                            num_processes_export=default_processes(args.nps))
    run_pseudo_label(s)
    return 0
