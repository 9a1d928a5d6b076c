"""STEGO's verbs (registered by ``nnunet_ext.cli``): ``stego-knn`` (``knn_table``), ``stego-evaluate`` (``evaluate``)
and ``stego-crf`` (``refine``, the CRF maths in ``crf``)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("stego-knn", help="nearest neighbours of every training image or slice for STEGO",
                              description="Describes every preprocessed image (every slice of 3D data) of a 2D "
                                          "configuration by its pooled, normalised backbone features and stores the "
                                          "top-30 neighbours beside the preprocessed data (resumable). The backbone "
                                          "is the trainer's (stego_backbone), weights from $nnUNet_ext_backbone.")
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    p.add_argument("-c", dest="configuration", default="2d", help="a 2D configuration (default 2d)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainerSTEGO",
                   help="the STEGO trainer whose backbone is used (default nnUNetTrainerSTEGO)")
    p.add_argument("-device", dest="device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="slices per backbone pass")
    p.add_argument("--same-case", action="store_true",
                   help="let slices of the same volume be neighbours (default: other volumes first)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_stego_knn)

    p = subparsers.add_parser("stego-evaluate", help="STEGO's metrics of a prediction folder (Hungarian matching)",
                              description="One confusion matrix over all cases, clusters matched to labels by the "
                                          "Hungarian algorithm, unsupervised pixel accuracy, mIoU, per-class Dice.")
    p.add_argument("-gt", dest="gt", required=True, help="folder of reference label maps")
    p.add_argument("-pred", dest="pred", required=True, help="folder of predictions (label or cluster space)")
    p.add_argument("-d", dest="dataset", default=None,
                   help="dataset id or name (its dataset.json gives labels, reader and file ending)")
    p.add_argument("-o", dest="out", default=None, help="write the result to this json file")
    p.set_defaults(func=cmd_stego_evaluate)

    _register_crf(subparsers)


def cmd_stego_knn(args) -> int:
    from nnunet_ext.stego.knn_table import compute_knn_table
    compute_knn_table(args.dataset, args.configuration, args.plans, args.trainer, batch_size=args.batch_size,
                      same_case=args.same_case, device=args.device, progress=not args.no_progress)
    return 0


def cmd_stego_evaluate(args) -> int:
    from nnunet_ext.paths import require_input_folder, require_output_file
    from nnunet_ext.stego.evaluate import evaluate_clusters, format_result

    require_input_folder(args.gt, "-gt")
    require_input_folder(args.pred, "-pred")
    if args.out is not None:  # before reading any case
        require_output_file(args.out, "-o")
    dj = None
    if args.dataset is not None:
        from nnunet_ext.evaluation.evaluate import find_dataset_json
        dj = str(find_dataset_json(args.dataset))
    res = evaluate_clusters(args.gt, args.pred, dataset_json=dj, out_file=args.out)
    print(format_result(res))
    return 0


def _register_crf(subparsers) -> None:
    p = subparsers.add_parser(
        "stego-crf", help="refine an nnU-Net prediction folder with STEGO's dense CRF (needs --save_probabilities)",
        description="Dense CRF refinement (STEGO / Kraehenbuehl & Koltun: 10 mean-field iterations, Gaussian kernel "
                    "w=3 std=1 px, bilateral kernel w=4 std=67 px / 3 colour units, Potts) of the probabilities that "
                    "nnUNetv2_predict --save_probabilities wrote, guided by the images; writes refined "
                    "segmentations with nnU-Net's writer and the same geometry. 3D volumes: one CRF per slice along "
                    "the first axis of nnU-Net's image array.")
    p.add_argument("-i", dest="images", metavar="IMAGES_DIR", required=True,
                   help="folder of the input images (<case>_0000<ending>, ...)")
    p.add_argument("-p", dest="pred", metavar="PRED_DIR", required=True,
                   help="prediction folder of nnUNetv2_predict ... --save_probabilities (<case>.npz, <case>.pkl)")
    p.add_argument("-o", dest="out", metavar="OUT_DIR", required=True,
                   help="output folder for the refined segmentations")
    p.add_argument("-d", dest="dataset", default=None,
                   help="dataset id or name: read dataset.json from $nnUNet_raw (default: PRED_DIR/dataset.json)")
    p.add_argument("--iterations", type=int, default=10, help="mean-field iterations (default: 10)")
    p.add_argument("--max-pixels", dest="max_pixels", type=int, default=None,
                   help="bilateral kernel exact up to this many pixels per image, on a pooled grid above "
                        "(default: 8192, nnunet_ext.stego.crf.DEFAULT_MAX_PIXELS)")
    p.add_argument("--guide", choices=("auto", "raw", "percentile"), default="auto",
                   help="image -> 0..255 guide: raw values, per-image 0.5/99.5 percentile rescale, or auto (raw for "
                        "8-bit natural images read by NaturalImage2DIO, percentile otherwise; default)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--save_probabilities", action="store_true",
                   help="also write the refined probabilities (<case>.npz) and properties (<case>.pkl)")
    p.set_defaults(func=cmd_stego_crf)


def cmd_stego_crf(args) -> int:
    from nnunet_ext.paths import require_input_folder, require_output_folder
    from nnunet_ext.stego.refine import refine_prediction_folder

    require_input_folder(args.images, "-i")
    require_input_folder(args.pred, "-p")
    require_output_folder(args.out, "-o")  # before reading any case
    done, skipped = refine_prediction_folder(args.images, args.pred, args.out, dataset=args.dataset,
                                             iterations=args.iterations, max_pixels=args.max_pixels,
                                             guide=args.guide, device=args.device,
                                             save_probabilities=args.save_probabilities)
    print(f"refined {done} case(s), skipped {skipped} already in {args.out}")
    return 0
