"""``nnunet-ext robustness``: the verb's arguments. Imported when ``nnunet-ext`` starts: keep imports light."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Evaluate trained nnU-Net models on clean and corrupted copies of a test set.

The corruptions act on the raw images (what a scanner or camera would deliver), before nnU-Net's
preprocessing; each has 5 severities (0 = clean). Prediction goes through nnU-Net's own inference
(nnUNetPredictor, each model loaded once); every prediction folder is scored with nnunet-ext's
evaluation (Dice, NSD, HD95). Default test set: the fold's validation cases (splits_final.json,
images from $nnUNet_raw/DatasetXXX/imagesTr, labels from labelsTr). Interrupted runs resume.

Output (-o, default $nnUNet_results/DatasetXXX/robustness_<CONFIG>_fold<F>/): robustness.csv,
robustness.md, robustness.png, predictions/<trainer>/<corruption>_s<k>/, evaluation/.
"""


def _epilog() -> str:
    from nnunet_ext.robustness.corruptions import CORRUPTIONS, DESCRIPTIONS, GENERIC, MRI_ONLY, RGB_ONLY

    lines = ["corruptions (severities 1..5):"]
    for name, values in CORRUPTIONS.items():
        lines.append(f"  {name:15s} {DESCRIPTIONS[name]}")
        lines.append(f"  {'':15s}   {', '.join(str(v) for v in values)}")
    lines += ["", f"  every image: {', '.join(GENERIC)}",
              f"  3D single-channel (MRI) only: {', '.join(MRI_ONLY)}",
              f"  2D RGB only: {', '.join(RGB_ONLY)}",
              "", "example:",
              "  nnunet-ext robustness -d 4 -c 3d_fullres -tr nnUNetTrainer,nnUNetTrainerFD -f 0 -device cuda"]
    return "\n".join(lines)


def _csv(s: str):
    return [v.strip() for v in s.split(",") if v.strip()]


def _severities(s: str):
    try:
        return [int(v) for v in _csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"severities must be integers 0..5 separated by commas, got {s!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name (DatasetXXX_Name)")
    p.add_argument("-c", dest="configuration", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", dest="trainers", type=_csv, default=["nnUNetTrainer"],
                   help="trainer(s), comma-separated (default: nnUNetTrainer)")
    p.add_argument("-f", dest="fold", required=True, help="fold of the trained model(s) (a number or 'all')")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-i", dest="images", default=None,
                   help="test image folder (CASE_0000.ext, ...); default: the fold's validation cases")
    p.add_argument("-gt", dest="labels", default=None, help="label folder for -i (CASE.ext)")
    p.add_argument("-o", dest="out", default=None,
                   help="output folder (default: $nnUNet_results/DatasetXXX/robustness_<CONFIG>_fold<F>)")
    p.add_argument("--corruptions", type=_csv, default=None,
                   help="comma-separated corruption names (default: all that apply to the data)")
    p.add_argument("--severities", type=_severities, default=[0, 1, 2, 3, 4, 5],
                   help="comma-separated severities 0..5 (default: 0,1,2,3,4,5)")
    p.add_argument("-device", dest="device", choices=["cpu", "cuda", "mps"], default=None,
                   help="cpu, cuda or mps (default: cuda if available, else cpu)")
    p.add_argument("--step-size", dest="step_size", type=float, default=0.5,
                   help="sliding-window step as a fraction of the patch size (nnU-Net's default 0.5)")
    p.add_argument("--disable-tta", dest="disable_tta", action="store_true",
                   help="no mirroring test-time augmentation (faster)")
    p.add_argument("--tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1.0)")
    p.add_argument("-np", dest="num_processes", type=int, default=None,
                   help="processes for the evaluation of each folder (default: 1 below 16 test cases, "
                        "else the evaluation's default)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def cmd_robustness(args) -> int:
    from nnunet_ext.robustness.run import Settings, run_robustness

    # RobustnessError / EvaluationError are UserErrors: nnunet_ext.cli.main prints them as one line (exit 2)
    s = Settings(dataset=args.dataset, configuration=args.configuration, trainers=args.trainers, fold=args.fold,
                 plans=args.plans, images=args.images, labels=args.labels, out=args.out,
                 corruptions=args.corruptions, severities=args.severities, device=args.device,
                 step_size=args.step_size, disable_tta=args.disable_tta, tolerance=args.tolerance,
                 num_processes=args.num_processes, progress=args.progress)
    res = run_robustness(s)
    print(res["md"].read_text())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("robustness", help="evaluate trained models on clean and corrupted test images",
                              description=DESCRIPTION, epilog=_epilog(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=cmd_robustness)
