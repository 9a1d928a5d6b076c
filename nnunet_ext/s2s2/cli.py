"""The ``s2s2-generate`` verb (registered by ``nnunet_ext.cli``; imports stay light until it runs)."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Generate the S2S2 semantic stack: K copies of every preprocessed training case of a configuration, stored
beside nnU-Net's preprocessed data ($nnUNet_preprocessed/DatasetXXX/<data_identifier>_s2s2_<generator>/).
Run it after nnUNetv2_plan_and_preprocess, then train with nnUNetv2_train D CONFIG F -tr nnUNetTrainerS2S2.
Resumable (re-run: finished cases are skipped); --part/--num-parts split the cases over processes or machines
(every case is in exactly one part). Writes preview.png (mask, real image, copies) beside the stack.

generators:
  gin   training-free: random shallow conv nets (global intensity non-linear maps) applied to the real image,
        re-drawn per copy, blended with it; labels unchanged (nnunet_ext/s2s2/gin.py)"""


def register(subparsers) -> None:
    p = subparsers.add_parser("s2s2-generate", help="generate the S2S2 semantic stack (K copies per training case)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    p.add_argument("-c", dest="configuration", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-k", type=int, default=16, help="copies per case (the paper: 16)")
    p.add_argument("--generator", default="gin", choices=["gin"], help="stack generator")
    p.add_argument("--part", type=int, default=0, help="this process's part (0-based)")
    p.add_argument("--num-parts", dest="num_parts", type=int, default=1, help="number of parts")
    p.add_argument("--seed", type=int, default=0, help="generator seed (copy k of case c depends on seed, c, k)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from nnunet_ext.s2s2.generate import S2S2Error, generate_stack

    if not 0 <= args.part < args.num_parts:
        raise S2S2Error(f"--part must be in 0..{args.num_parts - 1}, got {args.part}")
    generate_stack(args.dataset, args.configuration, k=args.k, generator=args.generator, plans=args.plans,
                   part=args.part, num_parts=args.num_parts, seed=args.seed, progress=not args.quiet)
    return 0
