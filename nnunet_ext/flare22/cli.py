"""The ``plan-c2f`` and ``predict-c2f`` verbs (registered by ``nnunet_ext.cli``), and the crop of the fine
configuration's unlabelled cases, handed to ``preprocess-unlabeled`` (:mod:`nnunet_ext.unlabeled.roi`)."""
from __future__ import annotations


def register(subparsers) -> None:
    from nnunet_ext.flare22.plan import DEFAULT_COARSE_SIZE, FINE_ROI_CROP
    from nnunet_ext.flare22.roi import DEFAULT_MARGIN_MM
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
    p.add_argument("-np", dest="num_processes", type=int, default=2, help="processes")
    p.add_argument("--no-preprocess", dest="preprocess", action="store_false", help="plan only")
    p.set_defaults(func=cmd_plan_c2f)

    p = subparsers.add_parser(
        "predict-c2f", help="coarse-to-fine inference: coarse model -> ROI -> fine model, one pass of I/O",
        description="Coarse model on the whole volume -> largest component per organ -> ROI + margin -> fine model on "
                    "the ROI -> pasted back; NIfTI (the dataset's file type) with the input's exact geometry. Fast by "
                    "default (no mirroring, step 0.75, fp16 on CUDA). A case that fails is reported and skipped; "
                    "per-case times and peak memory go to a CSV.")
    _predict_arguments(p)
    p.set_defaults(func=cmd_predict_c2f)


def cmd_plan_c2f(args) -> int:
    from nnunet_ext.flare22.plan import plan_c2f
    plan_c2f(args.dataset, plans=args.plans, planner=args.planner, gpu_memory_target=args.gpu_memory_target,
             coarse_size=args.coarse_size, margin_mm=args.margin_mm, num_processes=args.num_processes,
             preprocess=args.preprocess)
    return 0


def cmd_predict_c2f(args) -> int:
    from nnunet_ext.paths import require_input_folder, require_output_file, require_output_folder

    # the paths first: loading both models takes a while
    require_input_folder(args.input, "input folder -i")
    require_output_folder(args.output, "output folder -o")
    if args.csv:
        require_output_file(args.csv, "--csv")
    from nnunet_ext.flare22.predict import run_predict_c2f
    return run_predict_c2f(args)


def _predict_arguments(p) -> None:
    from nnunet_ext.flare22.plan import COARSE, FINE
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
    p.add_argument("--csv", help="per-case CSV (default: OUT/predict_c2f_cases.csv)")
    p.add_argument("--continue", dest="resume", action="store_true", help="skip cases whose output exists")
