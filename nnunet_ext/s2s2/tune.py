"""``nnunet-ext s2s2-tune``: tune S2S2's mask-conditioned diffusion generator (``nnunet_ext.s2s2.diffusion``) on the
2D slices of one fold's training cases, as nnU-Net preprocessed them.

* Cases: the fold's training cases of nnU-Net's split (``splits_final.json`` in the preprocessed dataset folder;
  made as nnU-Net makes it, seeded 5-fold, when absent; a fold beyond the file: nnU-Net's seeded 80:20 split;
  ``-f all``: every case).
* Samples: ``image_size`` x ``image_size`` crops of 2D slices (3D data: axial slices, the first spatial axis as
  nnU-Net stores it), a third of them centred on a random foreground voxel (nnU-Net's ``class_locations``, like
  its ``oversample_foreground_percent``), the rest anywhere; a crop that leaves a small slice is padded (image 0
  in standardised units, label -1 = no label). Channels standardised with the mean and std of (up to) 64 random
  training slices.
* Optimisation: AdamW, constant learning rate after a linear warm-up, gradient clipping at 1, an EMA of the
  weights (diffusers' ``EMAModel`` with warm-up: the EMA weights are what is saved and sampled); bf16 (or fp16 with
  a grad scaler) autocast on CUDA, float32 on CPU.
* Output (``tuned_folder``): ``$nnUNet_results/DatasetXXX_Name/s2s2_generator__diffusion__<plans>__<config>/
  fold_<F>/`` with ``unet/`` + ``scheduler/`` (``save_pretrained``) + ``s2s2_diffusion.json`` (the model),
  ``checkpoint.pt`` (everything needed to resume: weights, EMA, optimiser, learning-rate schedule, grad scaler,
  step, the random states of the sampler, the noise generator and torch, the losses; written atomically every
  ``save_every`` steps and at the end) and ``preview.png`` (masks, real crops, generated crops).
* ``--resume`` continues from ``checkpoint.pt`` up to ``--steps`` (total steps); the data, noise and weights then
  follow exactly the uninterrupted run (bitwise on CPU). The training settings are the checkpoint's.
* ``--generator controlnet --init SD_FOLDER`` (the paper's generator, ``ControlNetDiffusion``): the same loop
  trains only a ControlNet on the frozen local Stable Diffusion; whole slices resized to ``image_size`` instead
  of crops; ``controlnet/`` instead of ``unet/`` in the output (``s2s2_generator__controlnet__...``).

* Pixel space, not a VAE's latent space: TAESD's round trip of Hippocampus slices at their own size is 18.9 dB
  PSNR, the ceiling of a latent generator there (``benchmarks/bench_s2s2_latent.py``).
* Several GPUs (or CPU processes): start it with torchrun, one process per device, e.g.
  ``torchrun --standalone --nproc_per_node 4 $(which nnunet-ext) s2s2-tune -d D -c 2d -f 0``. The processes train
  one model with torch's ``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU; gradients averaged); each draws
  its own crops and noise (seeds offset by its rank), so ``--batch-size`` is per process. Rank 0 prints, writes
  the checkpoint (with every rank's random states: ``--resume`` with the same number of processes continues
  exactly) and the model.
"""
from __future__ import annotations

import functools
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from nnunet_ext.atomic_io import replace_atomic, save_figure_atomic
from nnunet_ext.s2s2.diffusion import (DEFAULT_PROMPT, SPEC_FILE, ControlNetDiffusion, DiffusionModelError,
                                       DiffusionSpec, MaskDiffusion, build_unet, load_init_unet, modality_of,
                                       train_scheduler, tuned_folder)

CHECKPOINT = "checkpoint.pt"
RANK_SEED_STRIDE = 1000  # process r of a torchrun launch draws crops / noise from seed + 1000 r
GENERATORS = ("diffusion", "controlnet")


@dataclass
class TuneSettings:
    steps: int = 20000
    batch_size: int = 16
    image_size: int = 64
    lr: float = 1e-4
    warmup: int = 500
    save_every: int = 1000
    block_channels: Tuple[int, ...] = (64, 128, 256)
    layers_per_block: int = 2
    mid_attention: bool = True
    cond_drop: float = 0.1
    ema_decay: float = 0.9999
    fg_fraction: float = 0.33
    seed: int = 0
    preview_ddim_steps: int = 25
    init: Optional[str] = None
    prompt: str = DEFAULT_PROMPT  # controlnet only
    #: not training settings (may change on --resume)
    runtime: Tuple[str, ...] = field(default=("steps", "save_every", "preview_ddim_steps"), repr=False)

    def training(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.runtime and k != "runtime"}


# ------------------------------------------------------------------------------------------------ cases
def training_cases(prep, fold) -> List[str]:
    """The training cases of ``fold`` (int or "all") as ``nnUNetTrainer.do_split`` chooses them (and, like it,
    writes nnU-Net's default 5-fold ``splits_final.json`` when there is none)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    keys = sorted(prep.cases)
    if fold == "all":
        return keys
    splits_file = prep.folder / "splits_final.json"
    if not splits_file.is_file():
        splits = generate_crossval_split(keys, seed=12345, n_splits=5)
        replace_atomic(splits_file, lambda tmp: save_json(splits, tmp))
    splits = load_json(str(splits_file))
    if fold < len(splits):
        return list(splits[fold]["train"])
    rnd = np.random.RandomState(seed=12345 + fold)  # nnU-Net's fallback: a seeded random 80:20 split
    arr = np.sort(keys)
    idx_tr = rnd.choice(len(arr), int(len(arr) * 0.8), replace=False)
    return list(arr[idx_tr])


def label_values(prep) -> List[int]:
    """The label values the model is conditioned on: ``LabelManager.all_labels`` (+ the ignore label)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    lm = prep.plans_manager.get_label_manager(load_json(str(prep.folder / "dataset.json")))
    return [int(v) for v in lm.all_labels] + ([int(lm.ignore_label)] if lm.has_ignore_label else [])


# ------------------------------------------------------------------------------------------------ samples
class SliceSampler:
    """Random ``size`` x ``size`` crops of 2D slices of preprocessed cases (lazily decompressed from blosc2);
    all randomness from ``self.rng`` (its state is saved in a checkpoint)."""

    def __init__(self, data_dir, cases: List[str], size: int, fg_fraction: float = 0.33, seed: int = 0,
                 fit: str = "pad"):
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

        self.ds = nnUNetDatasetBlosc2(str(data_dir), identifiers=list(cases))
        self.cases, self.size, self.fg_fraction, self.fit = list(cases), int(size), float(fg_fraction), fit
        self.rng = np.random.default_rng(seed)
        self._open = {}

    def _case(self, case):
        if case not in self._open:
            data, seg, _, props = self.ds.load_case(case)
            locs = props.get("class_locations") or {}
            self._open[case] = (data, seg, {k: v for k, v in locs.items() if len(v)})
        return self._open[case]

    def _start(self, n: int, centre: Optional[int] = None) -> int:
        s = self.size
        lo, hi = min(0, n - s), max(0, n - s)
        if centre is None:
            return int(self.rng.integers(lo, hi + 1))
        return int(np.clip(centre - s // 2, lo, hi))

    def crop(self, case: str, z: int, y0: int, x0: int) -> Tuple[np.ndarray, np.ndarray]:
        """Crop at (y0, x0) of slice z (may reach outside: padded with NaN (image) and -1 (label))."""
        data, seg, _ = self._case(case)
        s = self.size
        _, _, h, w = data.shape
        img = np.full((data.shape[0], s, s), np.nan, dtype=np.float32)
        lab = np.full((s, s), -1, dtype=np.int64)
        ya, yb, xa, xb = max(y0, 0), min(y0 + s, h), max(x0, 0), min(x0 + s, w)
        img[:, ya - y0:yb - y0, xa - x0:xb - x0] = data[:, z, ya:yb, xa:xb]
        lab[ya - y0:yb - y0, xa - x0:xb - x0] = seg[0, z, ya:yb, xa:xb]
        return img, lab

    def resized(self, case: str, z: int) -> Tuple[np.ndarray, np.ndarray]:
        """Slice z resized to ``size`` x ``size`` (image bilinear, labels nearest)."""
        data, seg, _ = self._case(case)
        s = (self.size, self.size)
        img = torch.from_numpy(np.asarray(data[:, z], dtype=np.float32))[None]
        lab = torch.from_numpy(np.asarray(seg[0, z], dtype=np.float32))[None, None]
        return (torch.nn.functional.interpolate(img, size=s, mode="bilinear", align_corners=False)[0].numpy(),
                torch.nn.functional.interpolate(lab, size=s, mode="nearest")[0, 0].numpy().astype(np.int64))

    def sample(self) -> Tuple[np.ndarray, np.ndarray]:
        """A crop (``fit`` "pad") or a whole resized slice (``fit`` "resize")."""
        case = self.cases[int(self.rng.integers(len(self.cases)))]
        data, _, locs = self._case(case)
        _, nz, h, w = data.shape
        if locs and self.rng.random() < self.fg_fraction:
            keys = sorted(locs, key=str)
            v = locs[keys[int(self.rng.integers(len(keys)))]]
            v = v[int(self.rng.integers(len(v)))]
            z = int(v[1])
            if self.fit == "resize":
                return self.resized(case, z)
            y0, x0 = self._start(h, int(v[2])), self._start(w, int(v[3]))
        else:
            z = int(self.rng.integers(nz))
            if self.fit == "resize":
                return self.resized(case, z)
            y0, x0 = self._start(h), self._start(w)
        return self.crop(case, z, y0, x0)

    def batch(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        imgs, labs = zip(*(self.sample() for _ in range(n)))
        return np.stack(imgs), np.stack(labs)

    def statistics(self, n: int = 64, seed: int = 0) -> Tuple[List[float], List[float]]:
        """Per-channel mean and std over up to ``n`` random whole slices (their own generator)."""
        rng = np.random.default_rng(seed)
        sums, sq, cnt = 0.0, 0.0, 0
        for i in range(n):
            data, _, _ = self._case(self.cases[i % len(self.cases)] if i < len(self.cases)
                                    else self.cases[int(rng.integers(len(self.cases)))])
            sl = np.asarray(data[:, int(rng.integers(data.shape[1]))], dtype=np.float64).reshape(data.shape[0], -1)
            sums, sq, cnt = sums + sl.sum(1), sq + (sl ** 2).sum(1), cnt + sl.shape[1]
        mean = sums / cnt
        std = np.sqrt(np.maximum(sq / cnt - mean ** 2, 0))
        return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]


def _standardised(model: MaskDiffusion, imgs: np.ndarray, device) -> torch.Tensor:
    x = model.standardise(torch.from_numpy(imgs))
    return torch.nan_to_num(x, nan=0.0).to(device)


# ------------------------------------------------------------------------------------------------ checkpoint
def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _rank_state(sampler, noise_gen) -> dict:
    """This process's random states: the crop sampler, the noise generator, python / numpy / torch."""
    return {"sampler_rng": sampler.rng.bit_generator.state, "noise_rng": noise_gen.get_state(), "rng": _rng_state()}


def _set_rank_state(st: dict, sampler, noise_gen) -> None:
    sampler.rng.bit_generator.state = st["sampler_rng"]
    noise_gen.set_state(st["noise_rng"])
    _set_rng_state(st["rng"])


def _process_group(dev: torch.device) -> Tuple[int, int, torch.device, bool]:
    """``(rank, world size, device, created)``: under torchrun (``WORLD_SIZE`` > 1) joins torch's default process
    group (NCCL on CUDA, gloo otherwise; ``created``: this call made it) and takes GPU ``LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, dev, False
    created = not dist.is_initialized()
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if created:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev, created


def _ema_copy(module, ema):
    import copy
    out = copy.deepcopy(module)
    ema.copy_to(out.parameters())
    return out.eval()


# ------------------------------------------------------------------------------------------------ preview
def write_preview(path: Path, model, sampler: SliceSampler, n: int = 4, copies: int = 2,
                  steps: int = 25, seed: int = 12345) -> Path:
    """``preview.png``: per row a training crop's mask, the real crop and ``copies`` generated from its mask."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    rng_state = sampler.rng.bit_generator.state
    sampler.rng = np.random.default_rng(seed)
    try:
        crops = [sampler.sample() for _ in range(n)]
    finally:
        sampler.rng = np.random.default_rng()
        sampler.rng.bit_generator.state = rng_state
    m = model.size_multiple
    gens = []
    for r in range(n):
        for k in range(copies):
            g = torch.Generator()
            g.manual_seed(seed + 1000 * r + k)
            gens.append(g)
    segs = torch.from_numpy(np.stack([lab for _, lab in crops for _ in range(copies)]))
    pad = (-segs.shape[-1]) % m
    if pad:
        segs = torch.nn.functional.pad(segs, (0, pad, 0, pad), value=-1)
    gen = model.sample(segs, gens, steps).cpu()[..., :sampler.size, :sampler.size]
    gen = model.unstandardise(gen).numpy()

    def show(ax, img):  # C == 3: RGB, else channel 0; each panel scaled to its own 1-99 percentiles
        img = np.nan_to_num(img[:3] if img.shape[0] == 3 else img[:1], nan=float(np.nanmin(img)))
        lo, hi = np.percentile(img, (1, 99))
        img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
        ax.imshow(img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0], cmap="gray", vmin=0, vmax=1)

    ncol = 2 + copies
    fig, axes = plt.subplots(n, ncol, figsize=(2 * ncol, 2 * n), dpi=80, squeeze=False)
    for r, (img, lab) in enumerate(crops):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c == 0:
                ax.imshow(lab, cmap="viridis", vmin=-1, vmax=max(model.spec.labels))
            elif c == 1:
                show(ax, img)
            else:
                show(ax, gen[r * copies + c - 2])
            if r == 0:
                ax.set_title(["mask", "real"][c] if c < 2 else f"generated {c - 1}", fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ tune
def _device(name: Optional[str]) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DiffusionModelError("-device cuda: no CUDA device available (use -device cpu)")
    return torch.device(name)


def _read_checkpoint(ckpt_file: Path, out: Path, settings: Optional[TuneSettings], st: TuneSettings, say):
    """``--resume``: the checkpoint and its training settings (the runtime ones, such as ``--steps``, from this
    run; a changed training setting is kept as the checkpoint has it, and said)."""
    from nnunet_ext.s2s2.generate import S2S2Error

    if not ckpt_file.is_file():
        raise S2S2Error(f"--resume: nothing to resume in {out} (no {CHECKPOINT}); run without --resume")
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    old = ckpt["settings"]
    old["block_channels"] = tuple(old["block_channels"])
    resumed = TuneSettings(**{**old, "steps": st.steps, "save_every": st.save_every,
                              "preview_ddim_steps": st.preview_ddim_steps})
    if settings is not None:
        changed = [k for k, v in settings.training().items() if k != "init" and resumed.training()[k] != v]
        if changed:
            say(f"s2s2-tune --resume: keeping the checkpoint's {', '.join(changed)} "
                f"({', '.join(f'{k}={resumed.training()[k]}' for k in changed)})")
    return ckpt, resumed


def _check_run(out: Path, ckpt_file: Path, resume: bool, st: TuneSettings, controlnet: bool) -> None:
    """One clear line for a folder that already holds a model (without ``--resume``) and for bad settings."""
    from nnunet_ext.s2s2.generate import S2S2Error

    if not resume and (ckpt_file.is_file() or (out / SPEC_FILE).is_file()):
        raise S2S2Error(f"{out} already holds a tuned generator: continue it with --resume (and a larger --steps), "
                        f"or remove the folder to start again")
    if st.steps < 1 or st.batch_size < 1 or st.save_every < 1:
        raise S2S2Error("--steps, --batch-size and --save-every must be at least 1")
    if controlnet and not st.init:
        raise S2S2Error("--generator controlnet needs --init: a local Stable Diffusion pipeline folder "
                        "(model_index.json, vae/, text_encoder/, tokenizer/, unet/, scheduler/)")


def _new_spec(prep, configuration: str, sampler: SliceSampler, st: TuneSettings, controlnet: bool) -> DiffusionSpec:
    """The spec of a new model: the labels, the channels and their statistics over the training slices; for the
    ControlNet also the prompt, the modality and the class names (from dataset.json)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_ext.s2s2.generate import S2S2Error

    mean, std = sampler.statistics(seed=st.seed)
    c = int(sampler._case(sampler.cases[0])[0].shape[0])
    spec = DiffusionSpec(labels=label_values(prep), channels=c, mean=mean, std=std, image_size=st.image_size,
                         cond_drop=st.cond_drop)
    if controlnet:
        if c not in (1, 3):
            raise S2S2Error(f"--generator controlnet takes grey (1-channel) or RGB (3-channel) data; "
                            f"{prep.name} {configuration} has {c} channels (use --generator diffusion)")
        ds_json = load_json(str(prep.folder / "dataset.json"))
        spec.kind, spec.fit, spec.prompt = "controlnet", "resize", st.prompt
        spec.modality = modality_of(ds_json.get("channel_names", ds_json.get("modality", {})))
        spec.class_names = {str(v): k.replace("_", " ") for k, v in ds_json["labels"].items()
                            if isinstance(v, int) and k != "background"}
    return spec


def _build_model(spec: DiffusionSpec, st: TuneSettings, ckpt: Optional[dict], controlnet: bool, dev: torch.device):
    """The model to train (seeded by ``st.seed``): a ControlNet on the Stable Diffusion folder, or a
    ``UNet2DModel`` (from ``--init``, the checkpoint's architecture, or built from the settings)."""
    from nnunet_ext.s2s2.generate import S2S2Error

    torch.manual_seed(st.seed)
    if controlnet:
        model = ControlNetDiffusion.create(spec.sd_folder if ckpt is not None else st.init, spec).to(dev)
    else:
        if st.init and ckpt is None:
            unet = load_init_unet(st.init, spec.channels, spec.num_labels)
        elif ckpt is not None and ckpt.get("unet_config"):  # the architecture trained (--init: the init model's)
            from diffusers import UNet2DModel

            unet = UNet2DModel.from_config(ckpt["unet_config"])
        else:
            unet = build_unet(spec.channels, spec.num_labels, st.image_size, st.block_channels, st.layers_per_block,
                              st.mid_attention)
        model = MaskDiffusion(unet.to(dev), train_scheduler(), spec)
    if st.image_size % model.size_multiple:
        raise S2S2Error(f"--image-size {st.image_size} must be a multiple of {model.size_multiple} (the model's "
                        f"stride)")
    return model


@dataclass
class _Optimisation:
    """What one step changes besides the weights: optimiser, learning-rate schedule, EMA, grad scaler, the noise
    generator, the step and the losses."""
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    lr_sched: object
    ema: object
    scaler: torch.amp.GradScaler
    noise_gen: torch.Generator
    step: int = 0
    losses: List[float] = field(default_factory=list)

    @classmethod
    def create(cls, model, st: TuneSettings, dev: torch.device, rank: int) -> "_Optimisation":
        """AdamW (weight decay 1e-2), constant learning rate after a linear warm-up, EMA with warm-up (power 2/3),
        a grad scaler only for fp16 autocast; the noise generator seeded by ``seed + 1`` (+ the rank's offset)."""
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        net = model.trainable
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=st.lr, weight_decay=1e-2)
        lr_sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=st.warmup)
        ema = EMAModel(net.parameters(), decay=st.ema_decay, use_ema_warmup=True, power=2 / 3)
        scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and not torch.cuda.is_bf16_supported())
        noise_gen = torch.Generator()
        noise_gen.manual_seed(st.seed + 1 + RANK_SEED_STRIDE * rank)
        return cls(net, opt, lr_sched, ema, scaler, noise_gen)

    def restore(self, ckpt: dict, sampler: SliceSampler, rank: int, world: int, say) -> None:
        """Weights, optimiser, schedule, EMA, scaler, this rank's random states, step and losses of ``ckpt``."""
        self.net.load_state_dict(ckpt["trainable"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.lr_sched.load_state_dict(ckpt["lr_scheduler"])
        self.ema.load_state_dict(ckpt["ema"])
        self.scaler.load_state_dict(ckpt["scaler"])
        states = ckpt.get("ranks") or [{k: ckpt[k] for k in ("sampler_rng", "noise_rng", "rng")}]
        if len(states) != world:
            say(f"s2s2-tune --resume: the checkpoint was written by {len(states)} process(es), this run has {world}: "
                f"processes beyond {len(states)} start fresh random streams (not an exact continuation)")
        if rank < len(states):
            _set_rank_state(states[rank], sampler, self.noise_gen)
        self.step, self.losses = int(ckpt["step"]), list(ckpt["losses"])

    def train_step(self, trainer, model, sampler: SliceSampler, batch_size: int, dev: torch.device) -> None:
        """One batch: DDPM loss, backward (scaled), gradient clipping at 1, optimiser, schedule and EMA steps."""
        imgs, labs = sampler.batch(batch_size)
        x0 = _standardised(model, imgs, dev)
        loss = trainer.training_loss(x0, torch.from_numpy(labs).to(dev), self.noise_gen)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.lr_sched.step()
        self.ema.step(self.net.parameters())
        self.step += 1
        self.losses.append(float(loss.detach()))

    def checkpoint(self, ckpt_file: Path, st: TuneSettings, spec: DiffusionSpec, sampler: SliceSampler,
                   controlnet: bool, world: int, main: bool) -> None:
        """Every process takes part (their random states are gathered); rank 0 writes ``checkpoint.pt``."""
        mine = _rank_state(sampler, self.noise_gen)
        ranks = [mine]
        if world > 1:
            ranks = [None] * world
            dist.all_gather_object(ranks, mine)
        if main:
            state = {"step": self.step, "settings": st.training(), "spec": asdict(spec),
                     "trainable": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                     "lr_scheduler": self.lr_sched.state_dict(), "ema": self.ema.state_dict(),
                     "scaler": self.scaler.state_dict(), **mine, "losses": self.losses,
                     "unet_config": None if controlnet else dict(self.net.config),
                     "world_size": world, **({"ranks": ranks} if world > 1 else {})}
            replace_atomic(ckpt_file, lambda tmp: torch.save(state, tmp))


def _distributed(model, net: torch.nn.Module, dev: torch.device):
    """The model whose trainable part is wrapped in ``DistributedDataParallel`` (gradients averaged)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.replaced(DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None))


def _train_loop(run: _Optimisation, trainer, model, sampler: SliceSampler, st: TuneSettings, dev: torch.device,
                save, ckpt_file: Path, show: bool, say) -> None:
    """Steps up to ``st.steps`` with a progress bar (``show``); ``save()`` (writes ``ckpt_file``) every
    ``save_every`` steps but the last."""
    from tqdm import tqdm

    with tqdm(total=st.steps, initial=run.step, desc="s2s2-tune", unit="step", disable=not show,
              file=sys.stderr) as bar:
        while run.step < st.steps:
            run.train_step(trainer, model, sampler, st.batch_size, dev)
            bar.update()
            bar.set_postfix_str(f"loss {np.mean(run.losses[-50:]):.4f}")
            if run.step % st.save_every == 0 and run.step < st.steps:
                save()
                say(f"s2s2-tune: step {run.step}, loss (last {min(st.save_every, 500)}) "
                    f"{np.mean(run.losses[-min(st.save_every, 500):]):.4f}, checkpoint {ckpt_file}")


def tune(dataset, configuration: str, fold="0", plans: str = "nnUNetPlans", generator: str = "diffusion",
         settings: Optional[TuneSettings] = None, resume: bool = False, device: Optional[str] = None,
         output: Optional[str] = None, progress: bool = True, preview: int = 4) -> Path:
    """Tune (or ``resume``) the generator; returns its folder."""
    from nnunet_ext.paths import PreprocessedConfiguration
    from nnunet_ext.s2s2.generate import S2S2Error

    if generator not in GENERATORS:
        raise S2S2Error(f"unknown generator {generator!r} for s2s2-tune; available: {', '.join(GENERATORS)} "
                        f"(gin needs no tuning)")
    st = settings or TuneSettings()
    fold = "all" if str(fold) == "all" else int(fold)
    prep = PreprocessedConfiguration(dataset, configuration, plans, S2S2Error)
    out = Path(output) if output else tuned_folder(prep.name, generator, plans, configuration, fold)
    ckpt_file = out / CHECKPOINT
    rank, world, dev, own_group = _process_group(_device(device))
    main = rank == 0
    say = print if main else (lambda *a, **k: None)
    ckpt = None
    if resume:
        ckpt, st = _read_checkpoint(ckpt_file, out, settings, st, say)
    controlnet = generator == "controlnet"
    _check_run(out, ckpt_file, resume, st, controlnet)

    cases = training_cases(prep, fold)
    sampler = SliceSampler(prep.data_dir, cases, st.image_size, st.fg_fraction, st.seed + RANK_SEED_STRIDE * rank,
                           fit="resize" if controlnet else "pad")
    spec = DiffusionSpec(**ckpt["spec"]) if ckpt is not None else \
        _new_spec(prep, configuration, sampler, st, controlnet)
    spec.info = {"dataset": prep.name, "configuration": configuration, "plans": plans, "fold": fold,
                 "generator": generator, "training_cases": len(cases), "settings": st.training()}
    model = _build_model(spec, st, ckpt, controlnet, dev)
    run = _Optimisation.create(model, st, dev, rank)
    if ckpt is not None:
        run.restore(ckpt, sampler, rank, world, say)
    run.ema.to(dev)
    trainer = _distributed(model, run.net, dev) if world > 1 else model
    if main:
        out.mkdir(parents=True, exist_ok=True)
    say(f"s2s2-tune {prep.name} {configuration} fold {fold}: {len(cases)} training case(s), {model.describe()}, "
        f"{spec.channels} channel(s) + {spec.num_labels} label(s), {'slices resized to' if controlnet else 'crops'} "
        f"{st.image_size}^2, batch {st.batch_size}, device {dev.type}"
        f"{' (mixed precision)' if dev.type == 'cuda' else ''}"
        f"{f', {world} processes (DDP, batch {st.batch_size} each)' if world > 1 else ''}; "
        f"step {run.step} -> {st.steps} -> {out}")

    t0, start = time.time(), run.step
    save = functools.partial(run.checkpoint, ckpt_file, st, spec, sampler, controlnet, world, main)
    _train_loop(run, trainer, model, sampler, st, dev, save, ckpt_file, progress and main, say)
    dt = time.time() - t0
    save()
    if main:
        _save_final(out, model, run, sampler, world, preview, st.preview_ddim_steps)
    if world > 1:
        dist.barrier()  # the other processes return once rank 0 has written the model
        if own_group:
            dist.destroy_process_group()
    if run.step > start:
        say(f"s2s2-tune: {run.step - start} step(s) in {dt:.1f} s ({(run.step - start) / max(dt, 1e-9):.2f} steps/s, "
            f"{(run.step - start) * st.batch_size * world / max(dt, 1e-9):.1f} crops/s"
            f"{f' over {world} processes' if world > 1 else ''})")
    say(f"s2s2-tune: step {run.step}, loss {np.mean(run.losses[-100:]) if run.losses else float('nan'):.4f}; "
        f"model {out}")
    return out


def _save_final(out: Path, model, run: _Optimisation, sampler: SliceSampler, world: int, preview: int,
                preview_steps: int) -> None:
    """The EMA weights as the tuned model (with its step, final loss and process count), then ``preview.png``."""
    final = model.replaced(_ema_copy(run.net, run.ema))
    final.save(out, info={"step": run.step, "final_loss": float(np.mean(run.losses[-100:])) if run.losses else None,
                          "processes": world})
    if preview:
        write_preview(out / "preview.png", final, sampler, n=preview, steps=preview_steps)


__all__ = ["tune", "TuneSettings", "training_cases", "SliceSampler", "write_preview"]
