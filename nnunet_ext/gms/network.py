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
  (``out``, ``level1``, ``level2``; ``level3`` is neither computed nor decoded: the loss does not use it), and
  ``"mask_latent"`` when ``forward(x, onehot_fg)`` gets the class masks too. With a KL VAE the image latent is a
  posterior sample instead of the mean with probability ``posterior_p`` (0.5; the sample is scaled like the mean,
  noise included).
* **Speed** (the frozen VAE dominates a training step). Given the masks, the images and the b * K masks go
  through the encoder in **one** call (without autograd); the three heads go through the decoder in **one** call
  (its weights need no gradient, only its input); eval mode computes only the ``out`` head; the mapping model's
  attention is PyTorch's fused ``scaled_dot_product_attention``. The maths is unchanged (``tests/test_gms.py``
  compares loss, gradients and logits with the plain formulation in float64). Not done: caching image latents
  (nnU-Net augments every sample every iteration, so an encoder input practically never comes back), and
  channels-last / per-part ``torch.compile`` (not measured on a GPU; nnU-Net's own ``torch.compile`` of the whole
  network applies on CUDA as for any trainer).
* **The VAE is not part of the module's parameters or state dict**: it stays frozen, out of the optimiser and out
  of every checkpoint. The state dict carries the VAE's folder and checksum (``get_extra_state``); loading it
  with a different VAE fails with a clear error.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

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
        # a head that the loss never uses never gets a gradient: frozen, so that DDP (-num_gpus) does not wait for
        # its gradient (and AdamW leaves it as initialised, as the authors' optimiser does with a gradient of None)
        for level, head in zip(LatentMappingModel.LEVELS, self.mapping.heads):
            if level not in USED_LEVELS:
                head.requires_grad_(False)
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

    @staticmethod
    def masks_to_grey(onehot_fg: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Binary masks (b, K, H, W) -> grey images (b * K, 3, H, W) in [-1, 1] (0 -> -1, 1 -> 1)."""
        b, k, h, w = onehot_fg.shape
        return (onehot_fg.reshape(b * k, 1, h, w).to(dtype) * 2 - 1).expand(-1, 3, -1, -1)

    @torch.no_grad()
    def encode_images_and_masks(self, x: torch.Tensor, onehot_fg: torch.Tensor, sample: bool = False):
        """``(image latents (b, c, h, w), mask latents (b, c * K, h, w))`` from **one** encoder call on the b images
        and the b * K class masks. With a KL VAE the masks get the posterior mean and the images, when ``sample``,
        the sample ``(mean + std * eps) * scaling_factor`` (eps drawn as ``FrozenVAE.encode(sample=True)`` draws it)."""
        b = x.shape[0]
        both = torch.cat((self.to_vae_range(x), self.masks_to_grey(onehot_fg, x.dtype)), 0)
        if self.vae.is_kl:
            dist = self.vae.model.encode(both).latent_dist
            z_img = dist.mean[:b]
            if sample:  # torch.randn of the shape (not randn_like of the strided view): diffusers' draw
                z_img = z_img + dist.std[:b] * torch.randn(z_img.shape, device=z_img.device, dtype=z_img.dtype)
            z_img, z_mask = z_img * self.vae.scaling_factor, dist.mean[b:] * self.vae.scaling_factor
        else:
            z = self.vae.encode(both)
            z_img, z_mask = z[:b], z[b:]
        return z_img, z_mask.reshape(b, -1, *z_mask.shape[2:])  # (b * K, c, h, w) -> (b, K * c, h, w)

    def decode_masks(self, z: torch.Tensor) -> torch.Tensor:
        """Class probabilities (b, K, H, W) from mask latents; gradients flow through the frozen decoder."""
        b, kc, h, w = z.shape
        lc = kc // self.num_fg
        img = self.vae.decode(z.reshape(b * self.num_fg, lc, h, w))
        img = img.float() if img.element_size() < 4 else img  # half precision (autocast) -> float32
        p = ((img.mean(1) + 1) / 2).clamp(0, 1)
        return p.reshape(b, self.num_fg, *p.shape[1:])

    @staticmethod
    def probs_to_logits(p: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        s = torch.cat((torch.full_like(p[:, :1], 0.5), p), 1).clamp(eps, 1 - eps)
        return torch.log(s) - torch.log1p(-s)

    def forward(self, x: torch.Tensor, onehot_fg: Optional[torch.Tensor] = None):
        """Eval mode: logits of the ``out`` head (the only head computed). Training mode: the three heads the loss
        uses, decoded in one decoder call; with ``onehot_fg`` (b, K, H, W) the images and masks are encoded in one
        encoder call and the output also holds the mask latents (``mask_latent``, the latent-MSE target)."""
        if not self.training:
            heads = self.mapping(self.encode_images(x), levels=("out",))
            return self.probs_to_logits(self.decode_masks(heads["out"]))
        sample = self.vae.is_kl and bool(torch.rand(()) < self.posterior_p)
        if onehot_fg is None:
            z_img, z_mask = self.encode_images(x, sample=sample), None
        else:
            z_img, z_mask = self.encode_images_and_masks(x, onehot_fg, sample=sample)
        heads = self.mapping(z_img, levels=USED_LEVELS)
        latents = [heads[lv] for lv in USED_LEVELS]
        probs = self.decode_masks(torch.cat(latents, 0)).split(x.shape[0], 0)  # the heads in one decoder call
        out = {"latents": dict(zip(USED_LEVELS, latents)), "probs": dict(zip(USED_LEVELS, probs))}
        if z_mask is not None:
            out["mask_latent"] = z_mask
        return out

    # ---- the VAE's identity in the state dict ------------------------------------------------------------
    def get_extra_state(self) -> Dict[str, str]:
        return {"vae_folder": str(self.vae.folder), "vae_checksum": self._vae_checksum}

    def set_extra_state(self, state: Dict[str, str]) -> None:
        if state and state.get("vae_checksum") not in (None, self._vae_checksum):
            raise VAEChangedError(f"the VAE in {self.vae.folder} (${VAE_ENV}) is not the one this model was trained "
                                  f"with ({state.get('vae_folder')}, checksum {state.get('vae_checksum', '')[:12]}..., "
                                  f"now {self._vae_checksum[:12]}...): point {VAE_ENV} to the original weights")
