"""The ``plan-c2f`` and ``predict-c2f`` verbs (registered by ``nnunet_ext.cli``), and the crop of the fine
configuration's unlabelled cases, handed to ``preprocess-unlabeled`` (:mod:`nnunet_ext.unlabeled.roi`)."""
from __future__ import annotations


def register(subparsers) -> None:
    from nnunet_ext.flare22.plan import DEFAULT_COARSE_SIZE, FINE_ROI_CROP
    from nnunet_ext.flare22.roi import DEFAULT_FG_THRESHOLD, DEFAULT_MARGIN_MM, DEFAULT_ROI_MODE, ROI_MODES
    from nnunet_ext.unlabeled.roi import register_roi_crop

    register_roi_crop(FINE_ROI_CROP)

    p = subparsers.add_parser(
        "plan-c2f", help="add the 3d_coarse and 3d_fine configurations (coarse-to-fine, FLARE22) to the plans",
        description="Plans 3d_coarse (whole volume at low resolution, small network) and 3d_fine (full resolution on "
                    "the labels' bounding box + margin) with nnU-Net's experiment planner, adds them to the dataset's "
                    "plans and preprocesses both (3d_fine cropped to the ROI). Plans nnU-Net's own configurations "
                    "first if the plans do not exist yet. Then train each with nnUNetv2_train (any trainer) and "
                    "predict with nnunet-ext predict-c2f.")
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-pl", dest="planner", default="ExperimentPlanner",
                   help="nnU-Net experiment planner class (e.g. nnUNetPlannerResEncM)")
    p.add_argument("-gpu_memory_target", type=float, default=None, help="GPU memory target in GB (planner default)")
    p.add_argument("--coarse-size", type=int, default=DEFAULT_COARSE_SIZE,
                   help="voxels per axis of the median volume in 3d_coarse")
    p.add_argument("--margin-mm", type=float, default=DEFAULT_MARGIN_MM, help="ROI margin around the labels in mm")
    p.add_argument("--roi-mode", choices=ROI_MODES, default=DEFAULT_ROI_MODE,
                   help="predict-c2f's ROI rule, recorded in the plans: softmax (argmax + uncertain foreground) or "
                        "argmax (largest components only, the rule before)")
    p.add_argument("--fg-threshold", type=float, default=DEFAULT_FG_THRESHOLD,
                   help="softmax ROI: coarse voxels with 1 - p(background) at least this join the ROI candidates")
    p.add_argument("--missing-class-margin-mm", type=_margin, default=None,
                   help="margin in mm for a case whose coarse prediction misses a class that every training case "
                        "has ('whole': the whole volume; default 3 x --margin-mm)")
    p.add_argument("-np", dest="num_processes", type=int, default=2, help="processes")
    p.add_argument("--no-preprocess", dest="preprocess", action="store_false", help="plan only")
    p.set_defaults(func=cmd_plan_c2f)

    p = subparsers.add_parser(
        "predict-c2f", help="coarse-to-fine inference: coarse model -> ROI -> fine model, one pass of I/O",
        description="Coarse model on the whole volume -> ROI (largest component per organ + where the coarse "
                    "foreground probability is high enough; a larger margin when an organ that every training case "
                    "has is missing) + margin -> fine model on the ROI -> pasted back; NIfTI (the dataset's file "
                    "type) with the input's exact geometry. Fast by default (no mirroring, step 0.75, fp16 on CUDA). "
                    "A case that fails is reported and skipped; per-case ROI, times and peak memory go to a CSV.")
    _predict_arguments(p)
    p.set_defaults(func=cmd_predict_c2f)


def _margin(value: str) -> float:
    import argparse

    from nnunet_ext.flare22.roi import parse_margin
    try:
        return parse_margin(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_plan_c2f(args) -> int:
    from nnunet_ext.errors import UserError
    from nnunet_ext.flare22.plan import plan_c2f
    from nnunet_ext.flare22.roi import ROIRule

    try:
        rule = ROIRule(mode=args.roi_mode, margin_mm=args.margin_mm, fg_threshold=args.fg_threshold,
                       missing_margin_mm=args.missing_class_margin_mm)
    except ValueError as e:
        raise UserError(f"plan-c2f: {e}") from e
    plan_c2f(args.dataset, plans=args.plans, planner=args.planner, gpu_memory_target=args.gpu_memory_target,
             coarse_size=args.coarse_size, margin_mm=args.margin_mm, num_processes=args.num_processes,
             preprocess=args.preprocess, roi_rule=rule)
    return 0


def cmd_predict_c2f(args) -> int:
    from nnunet_ext.paths import require_input_folder, require_output_file, require_output_folder

    # the paths and settings first: loading both models takes a while
    require_input_folder(args.input, "input folder -i")
    require_output_folder(args.output, "output folder -o")
    if args.csv:
        require_output_file(args.csv, "--csv")
    from nnunet_ext.errors import UserError
    from nnunet_ext.flare22.roi import ROIRule

    given = dict(mode=args.roi_mode, margin_mm=args.margin_mm, fg_threshold=args.fg_threshold,
                 min_component_ml=args.min_component_ml, missing_margin_mm=args.missing_margin_mm)
    try:
        ROIRule(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        raise UserError(f"predict-c2f: {e}") from e
    from nnunet_ext.flare22.predict import run_predict_c2f
    return run_predict_c2f(args)


def _predict_arguments(p) -> None:
    from nnunet_ext.flare22.plan import COARSE, FINE
    from nnunet_ext.flare22.roi import ROI_MODES
    p.add_argument("-i", dest="input", required=True, help="folder of images named like imagesTs (CASE_0000.nii.gz)")
    p.add_argument("-o", dest="output", required=True, help="output folder (CASE.nii.gz, same geometry as the input)")
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name (of the trained models)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainer", help="trainer of both models")
    p.add_argument("-tr_coarse", dest="trainer_coarse", help="trainer of the coarse model (default: -tr)")
    p.add_argument("-tr_fine", dest="trainer_fine", help="trainer of the fine model (default: -tr)")
    p.add_argument("-c_coarse", dest="coarse_config", default=COARSE, help="configuration of the coarse model")
    p.add_argument("-c_fine", dest="fine_config", default=FINE, help="configuration of the fine model")
    p.add_argument("-f", dest="folds", nargs="+", help="folds of both models (default: every trained fold)")
    p.add_argument("-f_coarse", dest="folds_coarse", nargs="+", help="folds of the coarse model (default: -f)")
    p.add_argument("-f_fine", dest="folds_fine", nargs="+", help="folds of the fine model (default: -f)")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("-device", default=None, help="cuda, cpu or mps (default: cuda when available)")
    p.add_argument("-step_size", dest="step_size", type=float, default=0.75,
                   help="sliding-window step as a fraction of the patch (nnU-Net's default: 0.5)")
    p.add_argument("--tta", action="store_true", help="test-time mirroring (off by default: 8x slower in 3D)")
    p.add_argument("--margin-mm", type=float, default=None,
                   help="ROI margin in mm (default: the fine configuration's, set by plan-c2f; 20)")
    p.add_argument("--min-roi-voxels", type=int, default=10,
                   help="fewer coarse foreground voxels than this: the fine model gets the whole volume")
    p.add_argument("--roi-mode", choices=ROI_MODES, default=None,
                   help="softmax: argmax + where the coarse foreground probability is high enough; argmax: the "
                        "largest component per class alone, the rule before (default: the plans'; softmax)")
    p.add_argument("--fg-threshold", type=float, default=None,
                   help="softmax ROI: coarse voxels with 1 - p(background) at least this are candidates "
                        "(default: the plans'; 0.2)")
    p.add_argument("--min-component-ml", type=float, default=None,
                   help="softmax ROI: a candidate component with at least this expected foreground volume (mL) is "
                        "kept wherever it is (default 1)")
    p.add_argument("--missing-class-margin-mm", dest="missing_margin_mm", type=_margin, default=None,
                   help="margin for a case whose coarse prediction misses a class that every training case has "
                        "('whole': the whole volume; default: the plans'; 3 x the margin)")
    p.add_argument("--always-present", type=int, nargs="+", default=None, metavar="LABEL",
                   help="the classes that every case has (default: recorded by plan-c2f in the fine plans)")
    p.add_argument("--csv", help="per-case CSV (default: OUT/predict_c2f_cases.csv)")
    p.add_argument("--continue", dest="resume", action="store_true", help="skip cases whose output exists")
