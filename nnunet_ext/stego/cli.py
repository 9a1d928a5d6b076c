"""The ``stego-knn`` and ``stego-evaluate`` verbs (registered by ``nnunet_ext.cli``)."""
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


def cmd_stego_knn(args) -> int:
    from nnunet_ext.stego.knn_table import compute_knn_table
    compute_knn_table(args.dataset, args.configuration, args.plans, args.trainer, batch_size=args.batch_size,
                      same_case=args.same_case, device=args.device, progress=not args.no_progress)
    return 0


def cmd_stego_evaluate(args) -> int:
    from nnunet_ext.stego.evaluate import evaluate_clusters, format_result

    dj = None
    if args.dataset is not None:
        from nnunet_ext.evaluation.evaluate import find_dataset_json
        dj = str(find_dataset_json(args.dataset))
    res = evaluate_clusters(args.gt, args.pred, dataset_json=dj, out_file=args.out)
    print(format_result(res))
    return 0
