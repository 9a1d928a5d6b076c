"""The ``plan-gms`` verb (registered by ``nnunet_ext.cli``)."""
from __future__ import annotations


def register(subparsers) -> None:
    from nnunet_ext.gms.plan import GMS_BATCH_SIZE, GMS_CONFIG

    p = subparsers.add_parser("plan-gms", help="add the gms_2d configuration (for nnUNetTrainerGMS) to the plans",
                              description="Adds the gms_2d configuration to the dataset's nnU-Net plans: nnU-Net's 2d "
                                          "configuration with the patch size rounded up to a multiple of 8 and GMS's "
                                          "batch size (8), sharing its preprocessed data. Then: nnUNetv2_train D "
                                          "gms_2d F -tr nnUNetTrainerGMS with $nnUNet_ext_vae set to a local VAE "
                                          "folder.")
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=GMS_BATCH_SIZE,
                   help="batch size of gms_2d (GMS's: 8; 0 keeps nnU-Net's 2d plan)")
    p.add_argument("--name", default=GMS_CONFIG, help="name of the configuration (e.g. gms_2d_x4 beside gms_2d)")
    p.add_argument("--upsample", type=float, default=1,
                   help="F > 1: spacing / F and patch x F, preprocessed anew (small images: a finer latent grid)")
    p.add_argument("-np", dest="num_processes", type=int, default=2, help="processes if preprocessing is needed")
    p.set_defaults(func=cmd_plan_gms)


def cmd_plan_gms(args) -> int:
    from nnunet_ext.gms.plan import plan_gms
    plan_gms(args.dataset, plans=args.plans, name=args.name, num_processes=args.num_processes,
             batch_size=args.batch_size, upsample=args.upsample)
    return 0
