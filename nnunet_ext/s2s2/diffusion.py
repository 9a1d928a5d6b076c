"""The mask-conditioned diffusion generator of S2S2 (docs/methods/s2s2.md), built with diffusers.

Model: a diffusers ``UNet2DModel`` whose input is the noisy image (the C channels as nnU-Net normalised them, then
standardised with the training slices' per-channel mean and std) concatenated with the one-hot label map (one
channel per label value: ``LabelManager.all_labels`` plus the ignore label; any other value, such as nnU-Net's -1
outside the nonzero mask or the padding, is all zeros); it predicts the noise (epsilon). Trained with
``DDPMScheduler`` (1000 steps, ``squaredcos_cap_v2``), sampled with ``DDIMScheduler`` (same betas, ``trailing``
timesteps, eta 0 and 25 steps by default). The condition is dropped (all zeros) for a fraction ``cond_drop`` of the
training samples, so classifier-free guidance (``guidance`` > 1) can be used when sampling (default 1: none).

Sizes: the network is fully convolutional (plain ResNet blocks; self-attention only in the mid block, at the
lowest resolution, optional), tuned on ``image_size`` x ``image_size`` crops of 2D slices. A copy is sampled at
the slice's own size: the mask is padded (no label) up to a multiple of ``2 ** (levels - 1)``, the sample is
cropped back. No resizing: every copy has the exact pixel grid of the preprocessed slice. 3D data: slice by slice
(the paper's generators are 2D), the slices of a volume sampled independently.

Copies: each generated slice is standardised to the real slice's per-channel mean and std (as GIN), so the stack
keeps nnU-Net's normalisation. Slice ``z`` of copy ``k`` of case ``c`` depends only on ``(seed, c, k, z)``
(a generator of its own draws the initial noise and, with eta > 0, DDIM's noise): shards, batch sizes and resumed
runs give the same stack (up to floating-point differences between devices).

Folder of a tuned model (``MaskDiffusion.save`` / ``load``): ``unet/`` (``save_pretrained``: the EMA weights),
``scheduler/`` (the DDPM training scheduler, ``save_pretrained``), ``s2s2_diffusion.json`` (labels, channels,
statistics, training settings; written last). It is under ``$nnUNet_results`` (``tuned_folder``).
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from nnunet_ext.atomic_io import replace_folder_atomic, write_json_atomic
from nnunet_ext.errors import UserError
from nnunet_ext.paths import DATASET_NAME_RE, dataset_id, nnunet_folder

SPEC_FILE = "s2s2_diffusion.json"
GENERATOR_PREFIX = "s2s2_generator"


class DiffusionModelError(UserError):
    """A missing or unusable tuned generator."""


# ------------------------------------------------------------------------------------------------ where
def tuned_folder(dataset_name: str, generator: str, plans: str, configuration: str, fold) -> Path:
    """``$nnUNet_results/DatasetXXX_Name/s2s2_generator__<generator>__<plans>__<configuration>/fold_<fold>/``
    (named like nnU-Net's trainer folders)."""
    return (nnunet_folder("nnUNet_results", DiffusionModelError) / dataset_name
            / f"{GENERATOR_PREFIX}__{generator}__{plans}__{configuration}" / f"fold_{fold}")


def tune_command(dataset_name: str, configuration: str, plans: str, fold, generator: str = "diffusion") -> str:
    ds = dataset_id(dataset_name) if DATASET_NAME_RE.fullmatch(dataset_name) else dataset_name
    plans = f" -p {plans}" if plans != "nnUNetPlans" else ""
    gen = f" --generator {generator}" if generator != "diffusion" else ""
    return f"nnunet-ext s2s2-tune -d {ds} -c {configuration} -f {fold}{plans}{gen}"


# ------------------------------------------------------------------------------------------------ model
@dataclass
class DiffusionSpec:
    """What the model knows about the data (saved as ``s2s2_diffusion.json`` with the training settings)."""
    labels: List[int]
    channels: int
    mean: List[float]
    std: List[float]
    image_size: int = 64
    cond_drop: float = 0.1
    info: dict = field(default_factory=dict)  # training settings and provenance (dataset, fold, steps, ...)
    kind: str = "unet"  # "unet" (MaskDiffusion) or "controlnet" (ControlNetDiffusion)
    fit: str = "pad"  # slice -> model size: "pad" (to a multiple of the stride) or "resize" (to image_size)
    sd_folder: Optional[str] = None  # controlnet: the Stable Diffusion pipeline folder it was tuned on
    prompt: Optional[str] = None  # controlnet: template with {modality} and {classes}
    modality: Optional[str] = None
    class_names: Optional[dict] = None  # controlnet: label value (str) -> name

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def one_hot(seg: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """``(B, H, W)`` integer label map -> ``(B, L, H, W)`` float one-hot; a value not in ``labels`` (-1: outside
    nnU-Net's nonzero mask, padding) is all zeros."""
    lab = torch.as_tensor(list(labels), device=seg.device, dtype=seg.dtype).view(1, -1, 1, 1)
    return (seg.unsqueeze(1) == lab).float()


def build_unet(channels: int, num_labels: int, image_size: int, block_channels: Sequence[int] = (64, 128, 256),
               layers_per_block: int = 2, mid_attention: bool = True):
    """A ``UNet2DModel``: input C + L channels (noisy image + one-hot labels), output C (the noise)."""
    from diffusers import UNet2DModel

    block_channels = tuple(int(c) for c in block_channels)
    groups = max(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in block_channels))
    n = len(block_channels)
    return UNet2DModel(sample_size=image_size, in_channels=channels + num_labels, out_channels=channels,
                       block_out_channels=block_channels, layers_per_block=layers_per_block,
                       down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                       norm_num_groups=groups, add_attention=mid_attention,
                       attention_head_dim=min(8, block_channels[-1]))


def train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                         prediction_type="epsilon")


def size_multiple(unet) -> int:
    return 2 ** (len(unet.config.block_out_channels) - 1)


def weights_checksum(unet_folder) -> str:
    """sha256 (16 hex digits) of the weight files in a ``save_pretrained`` folder."""
    h = hashlib.sha256()
    for f in sorted(Path(unet_folder).iterdir()):
        if f.suffix in (".safetensors", ".bin"):
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def autocast(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return torch.autocast(device.type, enabled=False)


class MaskDiffusion:
    """A ``UNet2DModel`` + its DDPM training scheduler + the data spec: training loss and DDIM sampling."""

    def __init__(self, unet, scheduler, spec: DiffusionSpec):
        self.unet, self.scheduler, self.spec = unet, scheduler, spec
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1).clamp_min(1e-6)

    @property
    def trainable(self) -> torch.nn.Module:
        return self.unet

    def replaced(self, trainable) -> "MaskDiffusion":
        """The same model with other weights (the EMA copy)."""
        return MaskDiffusion(trainable, self.scheduler, self.spec)

    def describe(self) -> str:
        return describe(self.unet)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def size_multiple(self) -> int:
        return size_multiple(self.unet)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def unstandardise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def condition(self, seg: torch.Tensor) -> torch.Tensor:
        return one_hot(seg, self.spec.labels)

    def _autocast(self):
        return autocast(self.device)

    def training_loss(self, x0: torch.Tensor, seg: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """DDPM loss (MSE of the predicted noise) of a batch of standardised images ``x0`` (B, C, H, W) and
        label maps ``seg`` (B, H, W). Noise, timesteps and condition dropout come from ``gen`` (a CPU generator:
        the same draws on every device, and its state is part of a checkpoint)."""
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=gen).to(x0.device)
        keep = (torch.rand(b, generator=gen) >= self.spec.cond_drop).float().view(b, 1, 1, 1).to(x0.device)
        cond = self.condition(seg) * keep
        noisy = self.scheduler.add_noise(x0, noise, t)
        with self._autocast():
            pred = self.unet(torch.cat((noisy, cond), 1), t).sample
        return torch.nn.functional.mse_loss(pred.float(), noise)

    def sampling_scheduler(self, steps: int):
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.scheduler.config, clip_sample=False, timestep_spacing="trailing")
        sched.set_timesteps(steps)
        return sched

    @torch.no_grad()
    def sample(self, seg: torch.Tensor, generators: Sequence[torch.Generator], steps: int = 25, eta: float = 0.0,
               guidance: float = 1.0) -> torch.Tensor:
        """DDIM samples (standardised units, float32, on the model's device) for label maps ``seg`` (B, H, W),
        H and W multiples of ``size_multiple``. Image i's noise comes from ``generators[i]`` only (CPU)."""
        dev = self.device
        b, h, w = seg.shape
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"sample size {h}x{w} is not a multiple of {self.size_multiple}")
        c = self.spec.channels
        sched = self.sampling_scheduler(steps)
        x = torch.stack([torch.randn((c, h, w), generator=g) for g in generators]).to(dev) * sched.init_noise_sigma
        cond = self.condition(seg.to(dev))
        if guidance != 1.0:
            cond = torch.cat((cond, torch.zeros_like(cond)))
        for t in sched.timesteps:
            inp = torch.cat((x, x)) if guidance != 1.0 else x
            with self._autocast():
                eps = self.unet(torch.cat((inp, cond), 1), t.to(dev)).sample.float()
            if guidance != 1.0:
                e_c, e_u = eps.chunk(2)
                eps = e_u + guidance * (e_c - e_u)
            var_noise = torch.stack([torch.randn((c, h, w), generator=g) for g in generators]).to(dev) \
                if eta > 0 else None
            x = sched.step(eps, t, x, eta=eta, variance_noise=var_noise).prev_sample
        return x

    # ---------------------------------------------------------------------------------------- persistence
    def save(self, folder, info: Optional[dict] = None) -> None:
        """``unet/``, ``scheduler/``, then ``s2s2_diffusion.json``, each replaced atomically (the json last: a
        folder with the json is complete)."""
        _save_parts(folder, {"unet": self.unet, "scheduler": self.scheduler}, self.spec, info, "unet")

    @classmethod
    def load(cls, folder, device=None) -> "MaskDiffusion":
        from diffusers import DDPMScheduler, UNet2DModel

        folder = Path(folder)
        spec = read_spec(folder)
        unet = UNet2DModel.from_pretrained(str(folder / "unet"), low_cpu_mem_usage=False).eval()
        sched = DDPMScheduler.from_pretrained(str(folder / "scheduler"))
        if device is not None:
            unet.to(device)
        return cls(unet, sched, spec)


def read_spec(folder) -> DiffusionSpec:
    folder = Path(folder)
    if not (folder / SPEC_FILE).is_file():
        raise DiffusionModelError(f"no tuned S2S2 generator in {folder} ({SPEC_FILE} missing)")
    return DiffusionSpec(**json.loads((folder / SPEC_FILE).read_text()))


def load_tuned(folder, device=None):
    """The tuned model in ``folder`` (``MaskDiffusion`` or ``ControlNetDiffusion``, by its spec's ``kind``)."""
    kind = read_spec(folder).kind
    return (ControlNetDiffusion if kind == "controlnet" else MaskDiffusion).load(folder, device)


def _save_parts(folder, parts: dict, spec: DiffusionSpec, info: Optional[dict], weights: str) -> None:
    """``save_pretrained`` of each part into ``folder/<name>/`` (each swapped in atomically), then the spec json
    (with ``info`` and the checksum of ``weights``'s files) atomically, last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in parts.items():
        replace_folder_atomic(folder / name, lambda tmp, obj=obj: obj.save_pretrained(tmp))
    d = asdict(spec)
    d["info"] = {**d.get("info", {}), **(info or {}), "weights_sha256": weights_checksum(folder / weights)}
    write_json_atomic(folder / SPEC_FILE, d)


def load_init_unet(path, channels: int, num_labels: int):
    """``--init PATH``: a ``UNet2DModel`` saved with ``save_pretrained`` (``PATH`` itself, or ``PATH/unet``, e.g. a
    tuned S2S2 generator of another dataset); it must take C + L input channels and give C."""
    from diffusers import UNet2DModel

    path = Path(path)
    for cand in (path, path / "unet"):
        cfg = cand / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "UNet2DModel":
            unet = UNet2DModel.from_pretrained(str(cand), low_cpu_mem_usage=False)
            want = (channels + num_labels, channels)
            got = (unet.config.in_channels, unet.config.out_channels)
            if got != want:
                raise DiffusionModelError(f"--init {path}: the UNet2DModel takes {got[0]} and gives {got[1]} channels; "
                                          f"this dataset needs {want[0]} (image {channels} + labels {num_labels}) "
                                          f"and {want[1]}")
            return unet
    if (path / "model_index.json").is_file():
        raise DiffusionModelError(f"--init {path} is a diffusers pipeline folder (Stable Diffusion?): tune a "
                                  f"ControlNet on it with --generator controlnet --init {path}")
    raise DiffusionModelError(f"--init {path}: no diffusers UNet2DModel there (config.json with _class_name "
                              f"UNet2DModel, in the folder or its unet/ sub-folder)")


# ------------------------------------------------------------------------------------------------ ControlNet
#: label colours of the ControlNet condition (RGB in [0, 1]): no label (-1) black, background dark grey, then
#: matplotlib's tab10 / tab20 colours, by the label's index in ``spec.labels``
PALETTE = [(0.25, 0.25, 0.25), (0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
           (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
           (0.68, 0.78, 0.91), (1.0, 0.73, 0.47), (0.6, 0.87, 0.54), (1.0, 0.6, 0.59), (0.77, 0.69, 0.84),
           (0.77, 0.61, 0.58), (0.97, 0.71, 0.82), (0.86, 0.86, 0.55), (0.62, 0.85, 0.9), (1.0, 1.0, 1.0)]
DEFAULT_PROMPT = "a medical {modality} image showing {classes}"


def palette_image(seg: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """``(B, H, W)`` label map -> ``(B, 3, H, W)`` colour image in [0, 1] (``PALETTE``; -1 and unknown: black;
    labels beyond the palette's 20 colours reuse it cyclically)."""
    out = torch.zeros((seg.shape[0], 3, *seg.shape[1:]), device=seg.device)
    for i, v in enumerate(labels):
        col = torch.tensor(PALETTE[i % len(PALETTE)], device=seg.device).view(1, 3, 1, 1)
        out = torch.where((seg == v).unsqueeze(1), col, out)
    return out


def modality_of(channel_names: dict) -> str:
    """A modality word for the prompt from dataset.json's ``channel_names`` (R, G, B -> "colour")."""
    names = [str(v) for v in channel_names.values()]
    if sorted(n.lower() for n in names) == ["b", "g", "r"]:
        return "colour"
    return ", ".join(dict.fromkeys(n.replace("_", " ") for n in names))


class ControlNetDiffusion:
    """S2S2's generator as in the paper: a ``ControlNetModel`` (initialised from the Stable Diffusion UNet, the
    only trained part) on a local, frozen Stable Diffusion pipeline folder (vae, text_encoder, tokenizer, unet,
    scheduler; nothing is downloaded). Condition: the label map in a colour palette (``palette_image``); prompt:
    ``spec.prompt`` with the modality and the names of the classes present in the slice. Images: grey data is
    repeated to RGB and the RGB mean is taken back (as the paper); 3-channel data is RGB; the standardised values
    are divided by 3 and clipped to [-1, 1] for the VAE. Sampling: ``StableDiffusionControlNetPipeline`` with
    DDIM. Slices are resized to ``image_size`` and back (``fit = "resize"``; SD does poorly far from its size)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, spec: DiffusionSpec):
        self.vae, self.text_encoder, self.tokenizer, self.unet = vae, text_encoder, tokenizer, unet
        self.controlnet, self.scheduler, self.spec = controlnet, scheduler, spec
        for m in (vae, text_encoder, unet):
            m.requires_grad_(False)
            m.eval()
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1).clamp_min(1e-6)
        self._emb = {}
        self._pipe = None

    # the interface the tune loop and the stack generator use (as MaskDiffusion)
    @property
    def trainable(self) -> torch.nn.Module:
        return self.controlnet

    def replaced(self, trainable) -> "ControlNetDiffusion":
        return ControlNetDiffusion(self.vae, self.text_encoder, self.tokenizer, self.unet, trainable, self.scheduler,
                                   self.spec)

    def describe(self) -> str:
        return (f"ControlNetModel {unet_size(self.controlnet) / 1e6:.2f} M parameters on the frozen Stable Diffusion "
                f"in {self.spec.sd_folder} (UNet {unet_size(self.unet) / 1e6:.2f} M)")

    @property
    def device(self) -> torch.device:
        return next(self.controlnet.parameters()).device

    def to(self, device) -> "ControlNetDiffusion":
        for m in (self.vae, self.text_encoder, self.unet, self.controlnet):
            m.to(device)
        self._emb = {}
        return self

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean.to(x.device)) / (3 * self.std.to(x.device))).clamp(-1, 1)

    def unstandardise(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3 * self.std.to(x.device) + self.mean.to(x.device)

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    def _from_rgb(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1, keepdim=True) if self.spec.channels == 1 else x

    def prompts(self, seg: torch.Tensor) -> List[str]:
        """Per label map: the template with the modality and the names of the (non-background) classes present."""
        names = self.spec.class_names or {}
        out = []
        for s in seg:
            present = [names.get(str(v), f"label {v}") for v in torch.unique(s).tolist() if v > 0]
            out.append((self.spec.prompt or DEFAULT_PROMPT).format(modality=self.spec.modality or "medical",
                                                                   classes=", ".join(present) or "background only"))
        return out

    @torch.no_grad()
    def _embed(self, prompts: Sequence[str]) -> torch.Tensor:
        for p in set(prompts) - set(self._emb):
            ids = self.tokenizer([p], padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            self._emb[p] = self.text_encoder(ids)[0][0]
        return torch.stack([self._emb[p] for p in prompts])

    def _autocast(self):
        return autocast(self.device)

    def training_loss(self, x0: torch.Tensor, seg: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = x0.shape[0]
        prompts = self.prompts(seg)
        drop = (torch.rand(b, generator=gen) < self.spec.cond_drop).tolist()
        emb = self._embed(["" if d else p for p, d in zip(prompts, drop)])
        with torch.no_grad(), self._autocast():
            dist = self.vae.encode(self._rgb(x0)).latent_dist
        eps = torch.randn(dist.mean.shape, generator=gen).to(x0.device)
        latents = (dist.mean + dist.std * eps).float() * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(x0.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=gen).to(x0.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        with self._autocast():
            down, mid = self.controlnet(noisy, t, encoder_hidden_states=emb,
                                        controlnet_cond=palette_image(seg, self.spec.labels), return_dict=False)
            pred = self.unet(noisy, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample
        target = noise if self.scheduler.config.prediction_type == "epsilon" else \
            self.scheduler.get_velocity(latents, noise, t)
        return torch.nn.functional.mse_loss(pred.float(), target)

    def pipeline(self):
        from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

        if self._pipe is None:
            self._pipe = StableDiffusionControlNetPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                controlnet=self.controlnet, scheduler=DDIMScheduler.from_config(self.scheduler.config),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    @torch.no_grad()
    def sample(self, seg: torch.Tensor, generators: Sequence[torch.Generator], steps: int = 50, eta: float = 0.0,
               guidance: float = 9.0) -> torch.Tensor:
        """DDIM samples (standardised units, C channels) for label maps ``seg`` (B, H, W), H and W multiples of
        ``size_multiple``; image i's latents and DDIM noise come from ``generators[i]`` only."""
        b, h, w = seg.shape
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"sample size {h}x{w} is not a multiple of {self.size_multiple}")
        seg = seg.to(self.device)
        with self._autocast():
            rgb = self.pipeline()(prompt=self.prompts(seg), image=palette_image(seg, self.spec.labels), height=h,
                                  width=w, num_inference_steps=steps, guidance_scale=guidance, eta=eta,
                                  generator=list(generators), output_type="pt").images
        return self._from_rgb(rgb.float() * 2 - 1)

    @classmethod
    def create(cls, sd_folder, spec: DiffusionSpec) -> "ControlNetDiffusion":
        """A new ControlNet (``ControlNetModel.from_unet``) on the Stable Diffusion pipeline in ``sd_folder``."""
        from diffusers import ControlNetModel

        parts = _load_sd(sd_folder)
        n = int(np.log2(2 ** (len(parts["vae"].config.block_out_channels) - 1)))
        emb = (16, 32, 96, 256) if n == 3 else tuple(16 * 2 ** i for i in range(n + 1))
        cn = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=emb, conditioning_channels=3)
        spec.sd_folder = str(Path(sd_folder).resolve())
        return cls(controlnet=cn, spec=spec, **parts)

    def save(self, folder, info: Optional[dict] = None) -> None:
        """``controlnet/``, ``scheduler/`` and ``s2s2_diffusion.json`` (naming the Stable Diffusion folder)."""
        _save_parts(folder, {"controlnet": self.controlnet, "scheduler": self.scheduler}, self.spec, info,
                    "controlnet")

    @classmethod
    def load(cls, folder, device=None) -> "ControlNetDiffusion":
        from diffusers import ControlNetModel

        folder = Path(folder)
        spec = read_spec(folder)
        parts = _load_sd(spec.sd_folder)
        cn = ControlNetModel.from_pretrained(str(folder / "controlnet"), low_cpu_mem_usage=False).eval()
        model = cls(controlnet=cn, spec=spec, **parts)
        return model.to(device) if device is not None else model


def _load_sd(sd_folder) -> dict:
    """vae, text_encoder, tokenizer, unet, scheduler (as DDPM) of a local Stable Diffusion pipeline folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = Path(sd_folder) if sd_folder else None
    need = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    if folder is None or not (folder / "model_index.json").is_file() or \
            not all((folder / n).is_dir() for n in need):
        raise DiffusionModelError(f"{sd_folder}: not a local Stable Diffusion pipeline folder (model_index.json and "
                                  f"{', '.join(n + '/' for n in need)}; nothing is downloaded)")
    try:
        from transformers import AutoTokenizer, CLIPTextModel
    except ImportError as e:
        raise DiffusionModelError(f"the ControlNet generator needs transformers (pip install transformers): {e}")
    return {"vae": AutoencoderKL.from_pretrained(str(folder / "vae"), low_cpu_mem_usage=False),
            "text_encoder": CLIPTextModel.from_pretrained(str(folder / "text_encoder")),
            "tokenizer": AutoTokenizer.from_pretrained(str(folder / "tokenizer")),
            "unet": UNet2DConditionModel.from_pretrained(str(folder / "unet"), low_cpu_mem_usage=False),
            "scheduler": DDPMScheduler.from_pretrained(str(folder / "scheduler"))}


# ------------------------------------------------------------------------------------------------ stack generator
def _pad_to(t: torch.Tensor, multiple: int, value) -> torch.Tensor:
    h, w = t.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return torch.nn.functional.pad(t, (0, pw, 0, ph), value=value) if ph or pw else t


class DiffusionGenerator:
    """S2S2 stack generator from a tuned model (``nnunet-ext s2s2-generate --generator diffusion`` or
    ``controlnet``): ``MaskDiffusion`` or ``ControlNetDiffusion``, by the folder's spec.

    ``copies(data, case, ks, seg)`` samples copies ``ks`` of a case, every slice conditioned on its own mask,
    ``batch_size`` slices at a time; ``copy(data, case, k, seg)`` one copy (the generator interface of
    ``nnunet_ext.s2s2.generate``: ``needs_seg`` asks for the case's segmentation). ``steps`` (DDIM) and
    ``guidance``: None = 25 and 1 (diffusion), 50 and 9.0 (controlnet, the paper's)."""

    needs_seg = True

    def __init__(self, folder, seed: int = 0, steps: Optional[int] = None, eta: float = 0.0,
                 guidance: Optional[float] = None, batch_size: int = 16, device=None):
        self.folder = Path(folder)
        self.device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_tuned(self.folder, self.device)
        cn = self.model.spec.kind == "controlnet"
        self.name = "controlnet" if cn else "diffusion"
        steps = steps if steps is not None else (50 if cn else 25)
        guidance = guidance if guidance is not None else (9.0 if cn else 1.0)
        if steps < 1 or batch_size < 1:
            raise DiffusionModelError("--ddim-steps and --batch-size must be at least 1")
        self.seed, self.steps, self.eta, self.guidance, self.batch_size = seed, steps, eta, guidance, batch_size

    def settings(self) -> dict:
        info = self.model.spec.info
        return {"model_sha256": info.get("weights_sha256"), "trained_steps": info.get("step"),
                "fold": info.get("fold"), "ddim_steps": self.steps, "eta": self.eta, "guidance": self.guidance,
                "seed": self.seed}

    def _generator(self, case: str, k: int, z: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(int(np.random.SeedSequence([self.seed, zlib.crc32(case.encode()), k, z]).generate_state(1)[0]))
        return g

    def copy(self, data: np.ndarray, case: str, k: int, seg: np.ndarray = None) -> np.ndarray:
        return self.copies(data, case, [k], seg)[0]

    def _model_segs(self, seg: np.ndarray) -> torch.Tensor:
        """The masks (z, H, W) at the model's size: padded (-1) to a multiple of its stride, or resized (nearest)
        to ``image_size`` x ``image_size``."""
        segs = torch.from_numpy(np.asarray(seg, dtype=np.int64)[0])
        if self.model.spec.fit == "resize":
            s = self.model.spec.image_size
            return torch.nn.functional.interpolate(segs[:, None].float(), size=(s, s), mode="nearest")[:, 0].long()
        return _pad_to(segs, self.model.size_multiple, -1)

    def copies(self, data: np.ndarray, case: str, ks: Sequence[int], seg: np.ndarray = None) -> np.ndarray:
        """Copies ``ks`` of a preprocessed case ``data`` (C, z, y, x) with segmentation ``seg`` (1, z, y, x)
        -> float32 (len(ks), C, z, y, x)."""
        if seg is None:
            raise ValueError("the diffusion generator needs the case's segmentation")
        data = np.asarray(data, dtype=np.float32)
        c, nz, h, w = data.shape
        if c != self.model.spec.channels:
            raise DiffusionModelError(f"{case}: {c} channel(s), the tuned model {self.folder} has "
                                      f"{self.model.spec.channels}")
        segs = self._model_segs(seg)
        real = torch.from_numpy(data).permute(1, 0, 2, 3)  # (z, C, y, x)
        r_mean, r_std = real.mean((2, 3), keepdim=True), real.std((2, 3), keepdim=True)
        out = np.empty((len(ks), c, nz, h, w), dtype=np.float32)
        items = [(i, k, z) for i, k in enumerate(ks) for z in range(nz)]
        for s in range(0, len(items), self.batch_size):
            chunk = items[s:s + self.batch_size]
            zs = [z for _, _, z in chunk]
            x = self.model.sample(segs[zs], [self._generator(case, k, z) for _, k, z in chunk], self.steps,
                                  self.eta, self.guidance).float().cpu()
            if self.model.spec.fit == "resize":
                x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = x[..., :h, :w]
            x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True).clamp_min(1e-6)
            x = x * r_std[zs] + r_mean[zs]
            for (i, _, z), xi in zip(chunk, x):
                out[i, :, z] = xi.numpy()
        return out


def unet_size(unet) -> int:
    return sum(p.numel() for p in unet.parameters())


def describe(unet) -> str:
    cfg = unet.config
    return (f"UNet2DModel {unet_size(unet) / 1e6:.2f} M parameters, channels {list(cfg.block_out_channels)}, "
            f"{cfg.layers_per_block} layer(s) per block, mid attention {'on' if cfg.add_attention else 'off'}")


__all__ = ["DiffusionSpec", "MaskDiffusion", "ControlNetDiffusion", "DiffusionGenerator", "DiffusionModelError",
           "build_unet", "train_scheduler", "one_hot", "palette_image", "tuned_folder", "tune_command",
           "load_init_unet", "load_tuned"]
