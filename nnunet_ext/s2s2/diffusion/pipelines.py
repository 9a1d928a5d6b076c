"""The two S2S2 diffusion pipelines, each a network + its scheduler + the data spec, with the training loss the
tune loop minimises and the sampling the stack generator runs: ``MaskDiffusion`` (a ``UNet2DModel`` conditioned
on the one-hot mask, pixel space) and ``ControlNetDiffusion`` (the paper's: a ControlNet on a frozen local Stable
Diffusion); ``load_tuned`` picks the one a folder holds."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from nnunet_ext.s2s2.diffusion.io import load_sd, read_spec, save_parts
from nnunet_ext.s2s2.diffusion.models import autocast, describe, one_hot, palette_image, size_multiple, unet_size
from nnunet_ext.s2s2.diffusion.schedulers import sampling_scheduler
from nnunet_ext.s2s2.diffusion.spec import DiffusionSpec

DEFAULT_PROMPT = "a medical {modality} image showing {classes}"


def modality_of(channel_names: dict) -> str:
    """A modality word for the prompt from dataset.json's ``channel_names`` (R, G, B -> "colour")."""
    names = [str(v) for v in channel_names.values()]
    if sorted(n.lower() for n in names) == ["b", "g", "r"]:
        return "colour"
    return ", ".join(dict.fromkeys(n.replace("_", " ") for n in names))


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
        return sampling_scheduler(self.scheduler, steps)

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
        save_parts(folder, {"unet": self.unet, "scheduler": self.scheduler}, self.spec, info, "unet")

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

        parts = load_sd(sd_folder)
        n = int(np.log2(2 ** (len(parts["vae"].config.block_out_channels) - 1)))
        emb = (16, 32, 96, 256) if n == 3 else tuple(16 * 2 ** i for i in range(n + 1))
        cn = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=emb, conditioning_channels=3)
        spec.sd_folder = str(Path(sd_folder).resolve())
        return cls(controlnet=cn, spec=spec, **parts)

    def save(self, folder, info: Optional[dict] = None) -> None:
        """``controlnet/``, ``scheduler/`` and ``s2s2_diffusion.json`` (naming the Stable Diffusion folder)."""
        save_parts(folder, {"controlnet": self.controlnet, "scheduler": self.scheduler}, self.spec, info,
                    "controlnet")

    @classmethod
    def load(cls, folder, device=None) -> "ControlNetDiffusion":
        from diffusers import ControlNetModel

        folder = Path(folder)
        spec = read_spec(folder)
        parts = load_sd(spec.sd_folder)
        cn = ControlNetModel.from_pretrained(str(folder / "controlnet"), low_cpu_mem_usage=False).eval()
        model = cls(controlnet=cn, spec=spec, **parts)
        return model.to(device) if device is not None else model


def load_tuned(folder, device=None):
    """The tuned model in ``folder`` (``MaskDiffusion`` or ``ControlNetDiffusion``, by its spec's ``kind``)."""
    kind = read_spec(folder).kind
    return (ControlNetDiffusion if kind == "controlnet" else MaskDiffusion).load(folder, device)
