"""The ``s2s2-generate`` and ``s2s2-tune`` verbs (registered by ``nnunet_ext.cli``; imports stay light until they
run)."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Generate the S2S2 semantic stack: K copies of every preprocessed training case of a configuration, stored
beside nnU-Net's preprocessed data ($nnUNet_preprocessed/DatasetXXX/<data_identifier>_s2s2_<generator>/).
Run it after nnUNetv2_plan_and_preprocess, then train with nnUNetv2_train D CONFIG F -tr nnUNetTrainerS2S2.
Resumable (re-run: finished cases are skipped); --part/--num-parts split the cases over processes or machines
(every case is in exactly one part). Writes preview.png (mask, real image, copies) beside the stack.

generators:
  gin        training-free: random shallow conv nets (global intensity non-linear maps) applied to the real
             image, re-drawn per copy, blended with it; labels unchanged (nnunet_ext/s2s2/gin.py)
  diffusion  the mask-conditioned diffusion model tuned by `nnunet-ext s2s2-tune` for fold -f: every slice
             sampled with DDIM from its own mask at its own size (mask padded to a multiple of the UNet's
             stride, sample cropped back), then standardised to the real slice's channel mean/std; slice z of
             copy k of case c depends only on (seed, c, k, z) (nnunet_ext.s2s2.diffusion)
  controlnet the paper's: a ControlNet on a local Stable Diffusion tuned by `nnunet-ext s2s2-tune --generator
             controlnet --init SD_FOLDER`; condition = label map in a colour palette, prompt = modality +
             names of the classes present; slices resized to the tuned size and back; DDIM 50 steps and
             guidance 9.0 by default (the paper's); grey data = the RGB mean"""

TUNE_DESCRIPTION = """\
Tune S2S2's mask-conditioned diffusion generator (diffusers UNet2DModel; input: noisy image + one-hot label
map; DDPM training, DDIM sampling) on 2D slices (3D data: slices) of fold -f's training cases as nnU-Net
preprocessed them (nnU-Net's splits_final.json, made like nnU-Net when absent). Run it after
nnUNetv2_plan_and_preprocess; then nnunet-ext s2s2-generate --generator diffusion -f F, then
nnUNetv2_train D CONFIG F -tr nnUNetTrainerS2S2.

Output: $nnUNet_results/DatasetXXX_Name/s2s2_generator__diffusion__<plans>__<config>/fold_<F>/ with unet/ and
scheduler/ (save_pretrained; EMA weights), s2s2_diffusion.json, checkpoint.pt (written atomically every
--save-every steps; --resume continues exactly from it up to --steps) and preview.png (masks, real crops,
generated crops). Mixed precision on CUDA. Several GPUs: torchrun --standalone --nproc_per_node N
$(which nnunet-ext) s2s2-tune ... (torch DDP, one process per GPU, --batch-size per process).

--generator controlnet --init SD_FOLDER: the paper's generator, a ControlNet (initialised from the UNet of a
local Stable Diffusion pipeline folder, which stays frozen; nothing is downloaded) conditioned on the label map
in a colour palette and a prompt (modality + names of the classes present); slices resized to --image-size
(SD 2.1-base: 512, the paper used 192 for small MRI/CT); grey or RGB data. Output folder
s2s2_generator__controlnet__<plans>__<config>/fold_<F>/ with controlnet/ instead of unet/."""


def register(subparsers) -> None:
    p = subparsers.add_parser("s2s2-generate", help="generate the S2S2 semantic stack (K copies per training case)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    p.add_argument("-c", dest="configuration", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-k", type=int, default=16, help="copies per case (the paper: 16)")
    p.add_argument("--generator", default="gin", choices=["gin", "diffusion", "controlnet"], help="stack generator")
    p.add_argument("-f", dest="fold", default="0",
                   help="diffusion, controlnet: the fold whose tuned model is used (0-4 or all)")
    p.add_argument("--model", default=None, help="diffusion, controlnet: a tuned model folder instead of the fold's "
                                                 "in $nnUNet_results")
    p.add_argument("--ddim-steps", dest="ddim_steps", type=int, default=None,
                   help="DDIM sampling steps (default: diffusion 25, controlnet 50)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic given the initial noise)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: diffusion 1 = none, on the mask; controlnet 9.0, "
                        "on the prompt)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16, help="diffusion: slices per sampling batch")
    p.add_argument("-device", dest="device", default=None, choices=["cpu", "cuda", "mps"],
                   help="diffusion: device (default: cuda if available)")
    p.add_argument("--part", type=int, default=0, help="this process's part (0-based)")
    p.add_argument("--num-parts", dest="num_parts", type=int, default=1, help="number of parts")
    p.add_argument("--seed", type=int, default=0, help="generator seed (copy k of case c depends on seed, c, k)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    t = subparsers.add_parser("s2s2-tune", help="tune S2S2's mask-conditioned diffusion generator on a fold",
                              description=TUNE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    t.add_argument("-c", dest="configuration", required=True, help="configuration, e.g. 2d or 3d_fullres")
    t.add_argument("-f", dest="fold", default="0", help="fold (0-4 or all): tuned on its training cases")
    t.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier")
    t.add_argument("--generator", default="diffusion", choices=["diffusion", "controlnet"],
                   help="generator to tune (controlnet: needs --init STABLE_DIFFUSION_FOLDER)")
    t.add_argument("--steps", type=int, default=20000, help="total optimisation steps (also with --resume)")
    t.add_argument("--batch-size", dest="batch_size", type=int, default=16,
                   help="crops per step (per process under torchrun)")
    t.add_argument("--image-size", dest="image_size", type=int, default=64,
                   help="training crop size (pixels; a multiple of 2^(levels-1)); sampling is at each slice's size")
    t.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    t.add_argument("--warmup", type=int, default=500, help="linear learning-rate warm-up steps")
    t.add_argument("--channels", default="64,128,256", help="UNet channels per level, comma-separated")
    t.add_argument("--layers-per-block", dest="layers_per_block", type=int, default=2, help="ResNet blocks per level")
    t.add_argument("--no-attention", dest="mid_attention", action="store_false",
                   help="no self-attention in the UNet's mid block")
    t.add_argument("--cond-drop", dest="cond_drop", type=float, default=0.1,
                   help="fraction of samples trained without the mask (for classifier-free guidance)")
    t.add_argument("--ema-decay", dest="ema_decay", type=float, default=0.9999, help="EMA decay (with warm-up)")
    t.add_argument("--save-every", dest="save_every", type=int, default=1000, help="checkpoint every N steps")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling of crops and noise")
    t.add_argument("--init", default=None, help="diffusion: start from this diffusers UNet2DModel folder "
                                                "(save_pretrained, e.g. another dataset's tuned generator); "
                                                "controlnet: the local Stable Diffusion pipeline folder")
    t.add_argument("--prompt", default=None, help="controlnet: prompt template with {modality} and {classes} "
                                                  "(default: 'a medical {modality} image showing {classes}')")
    t.add_argument("--resume", action="store_true", help="continue from the folder's checkpoint.pt")
    t.add_argument("-o", dest="output", default=None, help="output folder (default: under $nnUNet_results, above)")
    t.add_argument("-device", dest="device", default=None, choices=["cpu", "cuda", "mps"],
                   help="device (default: cuda if available)")
    t.add_argument("--preview-ddim-steps", dest="preview_ddim_steps", type=int, default=25,
                   help="DDIM steps of the preview's samples")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_tune)


def cmd_generate(args) -> int:
    from nnunet_ext.s2s2.generate import S2S2Error, generate_stack

    if not 0 <= args.part < args.num_parts:
        raise S2S2Error(f"--part must be in 0..{args.num_parts - 1}, got {args.part}")
    options = None
    if args.generator in ("diffusion", "controlnet"):
        options = {"steps": args.ddim_steps, "eta": args.eta, "guidance": args.guidance,
                   "batch_size": args.batch_size, "device": args.device, "model": args.model}
    generate_stack(args.dataset, args.configuration, k=args.k, generator=args.generator, plans=args.plans,
                   part=args.part, num_parts=args.num_parts, seed=args.seed, progress=not args.quiet,
                   fold=args.fold, options=options)
    return 0


def cmd_tune(args) -> int:
    from nnunet_ext.s2s2.generate import S2S2Error
    from nnunet_ext.s2s2.tune import TuneSettings, tune

    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise S2S2Error(f"--channels must be comma-separated integers, got {args.channels!r}")
    if args.fold != "all" and not args.fold.isdigit():
        raise S2S2Error(f"-f must be a fold number or all, got {args.fold!r}")
    if args.output:
        from nnunet_ext.paths import require_output_folder
        require_output_folder(args.output, "output folder -o", S2S2Error)
    st = TuneSettings(steps=args.steps, batch_size=args.batch_size, image_size=args.image_size, lr=args.lr,
                      warmup=args.warmup, save_every=args.save_every, block_channels=channels,
                      layers_per_block=args.layers_per_block, mid_attention=args.mid_attention,
                      cond_drop=args.cond_drop, ema_decay=args.ema_decay, seed=args.seed,
                      preview_ddim_steps=args.preview_ddim_steps, init=args.init,
                      **({"prompt": args.prompt} if args.prompt else {}))
    tune(args.dataset, args.configuration, fold=args.fold, plans=args.plans, generator=args.generator, settings=st,
         resume=args.resume, device=args.device, output=args.output, progress=not args.quiet)
    return 0
