"""GMS's losses as ``nnUNetTrainerGMS`` uses them (the maths: ``nnunet_ext.gms.losses``; docs/methods/gms.md).

* ``GMSDiceLoss``: the trainer's ``self.loss`` (nnU-Net's segmentation loss, logged as ``train_losses``): the soft
  Dice of the decoded masks summed over the three heads the loss uses (``heads_soft_dice``); on evaluation logits
  (validation) the soft Dice of the final head's probabilities.
* ``LatentMSETerm``: the loss term ``latent_mse``, MSE(predicted mask latent, VAE latent of the true mask) summed
  over the same three heads, weight 1. The mask latents come with the network's training output
  (``output["mask_latent"]``: the trainer passes the masks to ``GMSNetwork.forward``).
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.gms.losses import heads_soft_dice, latent_mse, onehot_foreground, soft_dice_loss
from nnunet_ext.gms.network import USED_LEVELS


class GMSDiceLoss(nn.Module):
    """The trainer's ``self.loss``: soft Dice of the decoded masks, summed over the loss's three heads in training
    (GMS); on evaluation logits (validation) the Dice of the final head's probabilities."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, output, target: torch.Tensor) -> torch.Tensor:
        onehot = onehot_foreground(target, self.num_classes)
        if isinstance(output, dict):
            return heads_soft_dice(output["probs"], onehot, USED_LEVELS)
        return soft_dice_loss(torch.sigmoid(output[:, 1:].float()), onehot)


class LatentMSETerm(LossTerm):
    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        value = latent_mse(state.output["latents"], state.output["mask_latent"], USED_LEVELS)
        return {"latent_mse": WeightedTerm(value, self.weight)}
