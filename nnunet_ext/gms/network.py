"""``GMSNetwork``: the network nnU-Net builds, trains, validates and predicts with for GMS.

    nnU-Net-normalised image -> [-1, 1], 3 channels -> frozen VAE encoder -> latent mapping model
    -> frozen VAE decoder -> per-class probabilities -> logits

* **Intensities.** Data normalised to [0, 1] by nnU-Net (``RGBTo0_1Normalization``, ``RescaleTo01Normalization``)
  is mapped by ``2x - 1``; z-scored data (nnU-Net's default, CT) by ``clamp(x / 3, -1, 1)`` (three standard
  deviations to the VAE's range). One channel is replicated to three; three (RGB) are used as they are.
* **Multi-class** (GMS itself is binary): one mask latent per foreground class. The mapping model outputs
  ``latent_channels * K`` channels for K foreground classes; group k is decoded on its own (the K groups go
  through the decoder as one batch) into the probability ``p_k`` of class k (decoder output averaged over its
  3 channels, ``(x + 1) / 2`` clamped to [0, 1], as GMS). Training target of group k = the VAE latent of class
  k's binary mask drawn as a grey image (0 -> -1, 1 -> 1, 3 channels).
* **Logits for nnU-Net.** ``logit(0.5)`` for the background and ``logit(p_k)`` for class k: nnU-Net's argmax
  picks the most probable class among those above 0.5 and background where none is (GMS's 0.5 threshold for one
  class), and its softmax / sliding-window averaging work on them unchanged.
* **Training mode** returns ``{"latents": {level: z}, "probs": {level: p}}`` for the three heads the loss uses
  (``out``, ``level1``, ``level2``; ``level3`` is not decoded: the loss does not use it). With a KL VAE the
  image latent is a posterior sample instead of the mean with probability ``posterior_p`` (0.5; the sample is
  scaled like the mean).
* **The VAE is not part of the module's parameters or state dict**: it stays frozen, out of the optimiser and out
  of every checkpoint. The state dict carries the VAE's folder and checksum (``get_extra_state``); loading it
  with a different VAE fails with a clear error.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.core.network import FrozenModelNetwork
from nnunet_ext.core.vae import VAE_ENV, FrozenVAE, checksum
from nnunet_ext.errors import UserError
from nnunet_ext.gms.mapping import LatentMappingModel

USED_LEVELS = ("out", "level1", "level2")
class VAEChangedError(UserError):
    """The VAE differs from the one the model was trained with."""


class GMSNetwork(FrozenModelNetwork):
    def __init__(self, vae: FrozenVAE, num_classes: int, in_channels: int, intensity: str = "zscore",
                 width: int = 32, posterior_p: float = 0.5):
        super().__init__()
        if in_channels not in (1, 3):
            raise UserError(f"GMS needs 1-channel or RGB images (the VAE takes 3 channels); this dataset has "
                            f"{in_channels} channels")
        self.num_fg = num_classes - 1
        self.in_channels, self.intensity, self.posterior_p = in_channels, intensity, posterior_p
        lc = vae.latent_channels
        self.mapping = LatentMappingModel(lc, lc * self.num_fg, width)
        self.attach_frozen(vae)
        self._vae_checksum = checksum(vae.folder)

    @property
    def vae(self) -> FrozenVAE:
        return self.frozen_model

    # ---- the frozen VAE ----------------------------------------------------------------------------
    def to_vae_range(self, x: torch.Tensor) -> torch.Tensor:
        x = 2 * x - 1 if self.intensity == "unit" else torch.clamp(x / 3, -1, 1)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        return self.vae.encode(self.to_vae_range(x), sample=sample)

    @torch.no_grad()
    def encode_masks(self, onehot_fg: torch.Tensor) -> torch.Tensor:
        """Mask latents (b, latent_channels * K, h, w) of binary masks (b, K, H, W)."""
        b, k, h, w = onehot_fg.shape
        grey = (onehot_fg.reshape(b * k, 1, h, w).float() * 2 - 1).expand(-1, 3, -1, -1)
        z = self.vae.encode(grey)
        return z.reshape(b, k * z.shape[1], *z.shape[2:])

    def decode_masks(self, z: torch.Tensor) -> torch.Tensor:
        """Class probabilities (b, K, H, W) from mask latents; gradients flow through the frozen decoder."""
        b, kc, h, w = z.shape
        lc = kc // self.num_fg
        img = self.vae.decode(z.reshape(b * self.num_fg, lc, h, w))
        p = ((img.float().mean(1) + 1) / 2).clamp(0, 1)
        return p.reshape(b, self.num_fg, *p.shape[1:])

    @staticmethod
    def probs_to_logits(p: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        s = torch.cat((torch.full_like(p[:, :1], 0.5), p), 1).clamp(eps, 1 - eps)
        return torch.log(s) - torch.log1p(-s)

    def forward(self, x: torch.Tensor):
        sample = self.training and self.vae.is_kl and bool(torch.rand(()) < self.posterior_p)
        heads = self.mapping(self.encode_images(x, sample=sample))
        if self.training:
            return {"latents": {lv: heads[lv] for lv in USED_LEVELS},
                    "probs": {lv: self.decode_masks(heads[lv]) for lv in USED_LEVELS}}
        return self.probs_to_logits(self.decode_masks(heads["out"]))

    # ---- the VAE's identity in the state dict ------------------------------------------------------------
    def get_extra_state(self) -> Dict[str, str]:
        return {"vae_folder": str(self.vae.folder), "vae_checksum": self._vae_checksum}

    def set_extra_state(self, state: Dict[str, str]) -> None:
        if state and state.get("vae_checksum") not in (None, self._vae_checksum):
            raise VAEChangedError(f"the VAE in {self.vae.folder} (${VAE_ENV}) is not the one this model was trained "
                                  f"with ({state.get('vae_folder')}, checksum {state.get('vae_checksum', '')[:12]}..., "
                                  f"now {self._vae_checksum[:12]}...): point {VAE_ENV} to the original weights")


def soft_dice_loss(p: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice per sample and class (no threshold, MONAI style), averaged."""
    dims = tuple(range(2, p.ndim))
    inter = (p * target).sum(dims)
    return (1 - (2 * inter + eps) / (p.sum(dims) + target.sum(dims) + eps)).mean()


def onehot_foreground(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(b, 1, H, W) labels -> (b, K, H, W) binary masks of the foreground classes 1..K."""
    return F.one_hot(target[:, 0].long().clamp_min(0), num_classes).movedim(-1, 1)[:, 1:].float()


class GMSDiceLoss(nn.Module):
    """The trainer's ``self.loss``: soft Dice of the decoded masks, summed over the loss's three heads in training
    (GMS); on evaluation logits (validation) the Dice of the final head's probabilities."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, output, target: torch.Tensor) -> torch.Tensor:
        onehot = onehot_foreground(target, self.num_classes)
        if isinstance(output, dict):
            return sum(soft_dice_loss(output["probs"][lv], onehot) for lv in USED_LEVELS)
        return soft_dice_loss(torch.sigmoid(output[:, 1:].float()), onehot)
