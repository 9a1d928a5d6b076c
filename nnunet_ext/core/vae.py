"""Frozen pretrained image autoencoders (diffusers), loaded from a local folder: never downloaded.

Shared by the methods that work in a VAE's latent space or use its encoder as a frozen backbone (GMS, S2S2's
latent generator, STEGO's TAESD backbone). The folder is named once, in the environment variable
``nnUNet_ext_vae`` (or passed explicitly); what it may hold:

* a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` saved with ``save_pretrained`` (``config.json`` +
  weights), e.g. the ``vae/`` folder of a Stable Diffusion checkpoint;
* a Stable Diffusion pipeline folder (its ``vae/`` sub-folder is used);
* TAESD's two files ``taesd_encoder.safetensors`` and ``taesd_decoder.safetensors`` (the tiny autoencoder that
  shares Stable Diffusion 1.x/2.x's latent space): loaded strictly into diffusers' ``AutoencoderTiny`` after
  renaming encoder key ``k`` to ``encoder.layers.k`` and decoder key ``i.rest`` to ``decoder.layers.{i-1}.rest``.

``FrozenVAE`` maps images in [-1, 1] to *scaled* latents (``AutoencoderKL``: the posterior mean times the
config's ``scaling_factor``, 0.18215 for Stable Diffusion; optionally a posterior sample; ``AutoencoderTiny``:
its latents, already in that space) and back. It is in eval mode with no trainable parameter; ``checksum``
identifies the weights so that a checkpoint can refuse a changed VAE.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from nnunet_ext.errors import UserError

VAE_ENV = "nnUNet_ext_vae"
TAESD_FILES = ("taesd_encoder.safetensors", "taesd_decoder.safetensors")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class VAENotFoundError(UserError):
    """No usable VAE weights where the setting points."""


def resolve_vae_folder(path: Optional[str] = None) -> Path:
    """The VAE folder: ``path``, else ``$nnUNet_ext_vae``; a clear error naming the setting when unusable."""
    where = f"the folder given ({path})" if path else f"${VAE_ENV}"
    path = path or os.environ.get(VAE_ENV)
    if not path:
        raise VAENotFoundError(f"no VAE configured: set {VAE_ENV} to a local folder with a diffusers AutoencoderKL / "
                               f"AutoencoderTiny (save_pretrained) or TAESD's {' and '.join(TAESD_FILES)} "
                               f"(nothing is downloaded)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise VAENotFoundError(f"{where} = {folder} is not a folder; set {VAE_ENV} to the folder with the VAE weights")
    return folder


def _vae_kind(folder: Path) -> tuple:
    """``(kind, folder)`` with kind in {"diffusers", "taesd"}; raises when the folder holds neither."""
    if all((folder / f).is_file() for f in TAESD_FILES):
        return "taesd", folder
    for cand in (folder, folder / "vae"):
        if (cand / "config.json").is_file():
            return "diffusers", cand
    raise VAENotFoundError(f"{folder} (from {VAE_ENV} or the given path) holds no VAE: expected a diffusers "
                           f"config.json with weights (save_pretrained), a 'vae/' sub-folder of a Stable Diffusion "
                           f"checkpoint, or TAESD's {' and '.join(TAESD_FILES)}; found "
                           f"{sorted(p.name for p in folder.iterdir())[:10]}")


def _load_taesd(folder: Path) -> nn.Module:
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    model = AutoencoderTiny(latent_channels=4)
    state = {}
    enc, dec = (load_file(str(folder / f)) for f in TAESD_FILES)
    for k, v in enc.items():
        state[f"encoder.layers.{k}"] = v
    for k, v in dec.items():
        i, rest = k.split(".", 1)
        state[f"decoder.layers.{int(i) - 1}.{rest}"] = v
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model


def _weight_or_config(p: Path) -> bool:
    return p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")


def vae_files(folder) -> list:
    """The files ``load_vae`` reads from a VAE folder: TAESD's two files, or the diffusers folder's ``config.json``
    and weights (a Stable Diffusion pipeline folder: those in its ``vae/``). Other files are not the VAE's."""
    kind, where = _vae_kind(Path(folder))
    if kind == "taesd":
        return [where / f for f in TAESD_FILES]
    return sorted(p for p in where.iterdir() if _weight_or_config(p))


def checksum(folder) -> str:
    """SHA-256 over the names and bytes of the files a VAE folder's model is loaded from (``vae_files``; a folder
    that holds no VAE: all its weight and config files). A Stable Diffusion pipeline folder is hashed by its
    ``vae/`` only, so other weights in it neither cost time nor count as a changed VAE."""
    folder = Path(folder)
    try:
        files = vae_files(folder)
    except VAENotFoundError:
        files = sorted(p for p in folder.rglob("*") if _weight_or_config(p))
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(folder)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class FrozenVAE(nn.Module):
    """A frozen diffusers autoencoder with ``encode`` (images in [-1, 1] -> scaled latents) and ``decode``."""

    def __init__(self, model: nn.Module, folder: Path, kind: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.folder, self.kind = str(folder), kind
        self.is_kl = type(model).__name__ == "AutoencoderKL"
        cfg = getattr(model, "config", {})
        self.scaling_factor = float(cfg.get("scaling_factor", 1.0) if self.is_kl else 1.0)
        self.latent_channels = int(cfg.get("latent_channels", 4))
        blocks = cfg.get("block_out_channels") or cfg.get("encoder_block_out_channels") or ()
        self.downsampling = 2 ** (len(blocks) - 1) if self.is_kl and blocks else 8

    def train(self, mode: bool = True):  # always eval: the VAE never changes
        return super().train(False)

    def encode(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Scaled latents of ``x`` (b, 3, H, W) in [-1, 1]; ``sample``: a posterior sample instead of the mean (KL)."""
        if self.is_kl:
            dist = self.model.encode(x).latent_dist
            z = dist.sample() if sample else dist.mean
            return z * self.scaling_factor
        return self.model.encode(x).latents

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in about [-1, 1] from scaled latents."""
        return self.model.decode(z / self.scaling_factor).sample


def load_vae(path: Optional[str] = None, device: Optional[torch.device] = None) -> FrozenVAE:
    """Load the VAE of ``path`` (default ``$nnUNet_ext_vae``), frozen; errors name the setting."""
    folder = resolve_vae_folder(path)
    kind, where = _vae_kind(folder)
    try:
        if kind == "taesd":
            model = _load_taesd(where)
        else:
            from diffusers import AutoencoderKL, AutoencoderTiny

            name = json.loads((where / "config.json").read_text()).get("_class_name", "AutoencoderKL")
            classes = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}
            if name not in classes:
                raise VAENotFoundError(f"{where / 'config.json'} is a {name}; supported: {', '.join(classes)}")
            model = classes[name].from_pretrained(str(where), local_files_only=True)
    except VAENotFoundError:
        raise
    except Exception as e:  # unreadable / incomplete weights: say where and which setting
        raise VAENotFoundError(f"cannot load the VAE in {where} (from {VAE_ENV} or the given path): "
                               f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    vae = FrozenVAE(model, folder, kind)
    return vae.to(device) if device is not None else vae
