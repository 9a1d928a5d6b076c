"""``nnUNetTrainerGMS``: GMS inside nnU-Net (docs/methods/gms.md).

``nnUNetv2_train D gms_2d F -tr nnUNetTrainerGMS`` after ``nnunet-ext plan-gms -d D``, with the frozen VAE's folder
in ``$nnUNet_ext_vae`` (also at prediction). The network is ``GMSNetwork`` (frozen VAE encoder -> latent mapping
model -> frozen VAE decoder -> logits); only the mapping model (about 1.5 M parameters) is trained and saved.

Loss (GMS): sum over the heads ``out``, ``level1``, ``level2`` of MSE(latent) + soft Dice(decoded mask), weights 1
and 1 (``losses``, ``term``); ``train_losses`` logs the Dice part, ``latent_mse`` the latent part.
Optimiser (GMS): AdamW, lr 2e-3, weight decay 0.01, one lr per epoch: linear warm-up over ``gms_warmup_epochs`` =
5 epochs (0, 0.25, 0.5, 0.75, 1.0 x 2e-3: the first epoch at lr 0, the peak in epoch 5), then cosine from 2e-3
(epoch 6) to 0 (``WarmupCosineLR``; ``gms_warmup_epochs = 0``: cosine from the first epoch). nnU-Net's deep
supervision is off (the heads all work at the latent resolution; the loss uses them directly).

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

from nnunet_ext.core.intensity import intensity_mode
from nnunet_ext.core.loss_terms import LossTerm
from nnunet_ext.core.trainer import nnUNetTrainerExt
from nnunet_ext.errors import UserError
from nnunet_ext.gms.losses import onehot_foreground
from nnunet_ext.gms.network import GMSNetwork
from nnunet_ext.gms.term import GMSDiceLoss, LatentMSETerm


class WarmupCosineLR(_LRScheduler):
    """GMS's schedule: linear warm-up over ``warmup`` epochs, then cosine to 0, one value per epoch.

    ``step(c)`` takes nnU-Net's 0-based epoch index (``nnUNetTrainer.on_train_epoch_start`` calls
    ``lr_scheduler.step(self.current_epoch)`` before the epoch's first iteration), like ``PolyLRScheduler``; with
    ``e = c + 1`` the 1-based epoch, ``W = warmup`` and ``E = max_steps`` (the number of epochs), the lr used during
    epoch ``e`` is::

        e <= W:  initial * (e - 1) / (W - 1)                            (0 in the first epoch, initial in epoch W)
        e >  W:  initial * (1 + cos(pi * min((e - 1 - W) / (E - W), 1))) / 2   (initial in epoch W + 1)

    For ``W = 5`` this is the GMS authors' per-epoch schedule: 0, 0.25, 0.5, 0.75, 1.0 x initial in epochs 1-5,
    ``initial * (1 + cos(pi * (e - 6) / (E - 5))) / 2`` after (so epochs 5 and 6 both train at the peak); the last
    epoch trains at ``initial * (1 + cos(pi * (E - W - 1) / (E - W))) / 2`` (about 2.5e-6 x initial for E = 1000,
    W = 5) and the cosine reaches exactly 0 one step later, at the end of training.

    ``W = 0``: no warm-up, the cosine starts at ``initial`` in the first epoch (``(1 + cos(pi * (e - 1) / E)) / 2``).
    ``W = 1``: a single warm-up epoch at lr 0 (only AdamW's moment estimates are updated; with lr 0 neither the
    gradient step nor the decoupled weight decay changes a weight), then the cosine from ``initial`` in epoch 2:
    the ramp ``(e - 1) / (W - 1)`` is undefined for one epoch, and keeping its first value (0) keeps the rule that
    the warm-up starts at 0 and the cosine at ``initial`` in epoch ``W + 1``.
    """

    def __init__(self, optimizer, initial_lr: float, max_steps: int, warmup: int = 5):
        if warmup < 0 or int(warmup) != warmup:
            raise UserError(f"gms_warmup_epochs must be a whole number >= 0, got {warmup!r}")
        self.initial_lr, self.max_steps, self.warmup = initial_lr, max_steps, int(warmup)
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, current_step: int) -> float:
        """The lr of 0-based epoch ``current_step`` (see the class docstring)."""
        w = self.warmup
        if current_step < w:
            return self.initial_lr * current_step / (w - 1) if w > 1 else 0.0
        t = (current_step - w) / max(1, self.max_steps - w)
        return self.initial_lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_at(current_step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


class nnUNetTrainerGMS(nnUNetTrainerExt):
    """GMS: segmentation in a frozen VAE's latent space ($nnUNet_ext_vae), latent mapping model of width 32."""

    gms_width: int = 32
    gms_posterior_p: float = 0.5
    #: W: lr 0, 1/(W-1), ..., 1 x initial_lr in epochs 1..W, then cosine from initial_lr to 0 (``WarmupCosineLR``;
    #: 0: cosine from the first epoch; 1: one epoch at lr 0, then the cosine)
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
