"""``nnUNetTrainerGMS``: GMS inside nnU-Net (METHODS.md section 2).

``nnUNetv2_train D gms_2d F -tr nnUNetTrainerGMS`` after ``nnunet-ext plan-gms -d D``, with the frozen VAE's folder
in ``$nnUNet_ext_vae`` (also at prediction). The network is ``GMSNetwork`` (frozen VAE encoder -> latent mapping
model -> frozen VAE decoder -> logits); only the mapping model (about 1.5 M parameters) is trained and saved.

Loss (GMS): sum over the heads ``out``, ``level1``, ``level2`` of MSE(latent) + soft Dice(decoded mask), weights 1
and 1; ``train_losses`` logs the Dice part, ``latent_mse`` the latent part. Optimiser (GMS): AdamW, lr 2e-3,
weight decay 0.01, linear warm-up from 0 over 5 epochs, then cosine to 0. nnU-Net's deep supervision is off
(the heads all work at the latent resolution; the loss uses them directly).

Speed: the train step gives the network the class masks too (``training_forward``), so that images and masks go
through the VAE encoder in one call and the three heads through the decoder in one call (``GMSNetwork``); on
CUDA the mask latents are therefore computed under the train step's autocast, like the image latents.
Image latents are **not** cached: nnU-Net augments every sample each iteration (spatial and intensity
transforms, random crop positions), so the same encoder input practically never comes back.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch.optim.lr_scheduler import _LRScheduler

from nnunet_ext.core.loss_terms import LossTerm
from nnunet_ext.core.trainer import nnUNetTrainerExt
from nnunet_ext.errors import UserError
from nnunet_ext.core.intensity import intensity_mode
from nnunet_ext.gms.network import GMSDiceLoss, GMSNetwork, onehot_foreground
from nnunet_ext.gms.term import LatentMSETerm


class WarmupCosineLR(_LRScheduler):
    """lr = initial * e / warmup for e < warmup, then initial * (1 + cos(pi * (e - warmup) / (max - warmup))) / 2;
    ``step(epoch)`` like nnU-Net's ``PolyLRScheduler``."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, warmup: int = 5):
        self.initial_lr, self.max_steps, self.warmup = initial_lr, max_steps, warmup
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        if current_step < self.warmup:
            lr = self.initial_lr * current_step / self.warmup
        else:
            t = (current_step - self.warmup) / max(1, self.max_steps - self.warmup)
            lr = self.initial_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


class nnUNetTrainerGMS(nnUNetTrainerExt):
    """GMS: segmentation in a frozen VAE's latent space ($nnUNet_ext_vae), latent mapping model of width 32."""

    gms_width: int = 32
    gms_posterior_p: float = 0.5
    gms_warmup_epochs: int = 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = 2e-3
        self.weight_decay = 0.01

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True) -> GMSNetwork:
        from nnunet_ext.core.vae import load_vae

        if len(configuration_manager.patch_size) != 2:
            raise UserError("GMS is a 2D method: train the gms_2d configuration (nnunet-ext plan-gms -d D)")
        return GMSNetwork(load_vae(), num_output_channels, num_input_channels,
                          intensity_mode(configuration_manager.normalization_schemes), width=cls.gms_width,
                          posterior_p=cls.gms_posterior_p)

    def initialize(self):
        lm = self.label_manager
        if not self.was_initialized and (lm.has_regions or lm.has_ignore_label):
            raise UserError(f"{type(self).__name__} supports class labels without regions or an ignore label")
        super().initialize()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, WarmupCosineLR(optimizer, self.initial_lr, self.num_epochs, self.gms_warmup_epochs)

    def _build_loss(self):
        return GMSDiceLoss(self.label_manager.num_segmentation_heads)

    def build_loss_terms(self) -> List[LossTerm]:
        return super().build_loss_terms() + [LatentMSETerm()]

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # the GMS heads are fixed parts of the mapping model; the loss picks the ones it uses

    def training_forward(self, data, target):
        """The network gets the class masks too: one encoder call for images and masks; the output carries the
        mask latents (``mask_latent``) for ``LatentMSETerm``."""
        return self.network(data, onehot_foreground(target, self.label_manager.num_segmentation_heads))
