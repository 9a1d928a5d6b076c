"""Frozen self-supervised backbones for STEGO, built locally (never downloaded).

Registry (``build_backbone(name, weights)``; the weights file or folder is named once, in
``$nnUNet_ext_backbone`` or explicitly):

=====================  ===================================================  ==========================
name                   model                                                 weights
=====================  ===================================================  ==========================
``dino_vits8``         timm ``vit_small_patch8_224`` (DINO ViT-S/8)          a local state dict file
``dino_vitb8``         timm ``vit_base_patch8_224`` (DINO ViT-B/8)           a local state dict file
``dinov2_vits14``      timm ``vit_small_patch14_dinov2`` (DINOv2 ViT-S/14)   a local state dict file
``taesd``              the TAESD encoder (stride 8, 4 channels)              TAESD's safetensors folder
``timm:<model name>``  any timm model with ``forward_features``              a local state dict file
=====================  ===================================================  ==========================

A state dict file is ``.safetensors`` or a torch file (``.pth``/``.pt``/``.bin``; a ``{"model": ...}`` or
``{"state_dict": ...}`` wrapper is unwrapped). ViTs are built with ``dynamic_img_size=True`` so any patch size that
is a multiple of the patch stride works; ``features`` returns the last block's patch tokens as a map (b, C, H/s,
W/s) (class and register tokens dropped).

Inputs: nnU-Net-normalised images are mapped to what the backbone expects: one channel replicated to three; z-scored
data to [0, 1] by ``clamp((x / 3 + 1) / 2, 0, 1)`` (data nnU-Net already scaled to [0, 1] as it is); then ImageNet
mean / std for the ViTs, ``2x - 1`` for TAESD.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from nnunet_ext.errors import UserError

BACKBONE_ENV = "nnUNet_ext_backbone"
TIMM_NAMES = {"dino_vits8": "vit_small_patch8_224", "dino_vitb8": "vit_base_patch8_224",
              "dinov2_vits14": "vit_small_patch14_dinov2"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BackboneError(UserError):
    """A backbone that cannot be built or loaded from the local weights."""


def _weights_path(weights: Optional[str]) -> Path:
    w = weights or os.environ.get(BACKBONE_ENV)
    if not w:
        raise BackboneError(f"no backbone weights configured: set {BACKBONE_ENV} to a local weights file (or TAESD's "
                            f"folder); nothing is downloaded")
    p = Path(w).expanduser()
    if not p.exists():
        raise BackboneError(f"{p} (from {BACKBONE_ENV} or the given path) does not exist")
    return p


def _load_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return obj


class FrozenBackbone(nn.Module):
    """A frozen feature extractor: ``features(x)`` -> (b, C, H / stride, W / stride)."""

    def __init__(self, model: nn.Module, kind: str, stride: int, channels: int, unit_range: bool = False):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.kind, self.stride, self.channels, self.unit_range = kind, stride, channels, unit_range
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.unit_range else torch.clamp((x / 3 + 1) / 2, 0, 1)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return 2 * x - 1 if self.kind == "taesd" else (x - self.mean) / self.std

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise BackboneError(f"image size {tuple(x.shape[-2:])} is not a multiple of the backbone stride "
                                f"{self.stride}")
        x = self.prepare(x)
        if self.kind == "taesd":
            return self.model(x)
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        b, n, c = tokens.shape
        h, w = x.shape[-2] // self.stride, x.shape[-1] // self.stride
        return tokens.transpose(1, 2).reshape(b, c, h, w)


def weights_checksum(weights: Optional[str] = None) -> str:
    """SHA-256 of a weights file (or of a weights folder's files, as for VAEs); names the weights a model used."""
    import hashlib

    path = _weights_path(weights)
    if path.is_dir():
        from nnunet_ext.core.vae import checksum
        return checksum(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def backbone_tag(name: str) -> str:
    """A folder-safe name of a registry entry (``timm:vit_small_patch8_224`` -> ``timm_vit_small_patch8_224``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def build_backbone(name: str, weights: Optional[str] = None, unit_range: bool = False, **timm_kwargs) -> FrozenBackbone:
    """The frozen backbone ``name`` (see the registry) with local ``weights`` (default ``$nnUNet_ext_backbone``)."""
    path = _weights_path(weights)
    if name == "taesd":
        from nnunet_ext.core.vae import VAENotFoundError, load_vae
        try:
            vae = load_vae(str(path))
        except VAENotFoundError as e:
            raise BackboneError(f"backbone taesd: {e}") from None
        return FrozenBackbone(vae.model.encoder, "taesd", 8, vae.latent_channels, unit_range)
    model_name = TIMM_NAMES.get(name) or (name[len("timm:"):] if name.startswith("timm:") else None)
    if model_name is None:
        raise BackboneError(f"unknown backbone {name!r}: use one of {', '.join([*TIMM_NAMES, 'taesd'])} or "
                            f"timm:<model name>")
    import timm

    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=0, dynamic_img_size=True, **timm_kwargs)
    except Exception as e:
        raise BackboneError(f"timm cannot build {model_name!r}: {e}") from None
    try:
        missing = model.load_state_dict(_load_state_dict(path), strict=False).missing_keys
    except Exception as e:
        raise BackboneError(f"cannot load {path} (from {BACKBONE_ENV} or the given path) into {model_name}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if missing:
        raise BackboneError(f"{path} does not hold the weights of {model_name} ({len(missing)} missing, e.g. "
                            f"{missing[0]}); set {BACKBONE_ENV} to the matching file")
    stride = model.patch_embed.patch_size[0]
    return FrozenBackbone(model, "vit", stride, model.num_features, unit_range)
