"""``LatentMSETerm``: GMS's latent loss, MSE(predicted mask latent, VAE latent of the true mask), summed over the
three heads the loss uses (weight 1, METHODS.md section 2). The mask latents come with the network's training
output (``output["mask_latent"]``: the trainer passes the masks to ``GMSNetwork.forward``)."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.gms.network import USED_LEVELS


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.element_size() < 4 else t  # half precision (autocast) -> float32; float64 stays


class LatentMSETerm(LossTerm):
    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        z = _at_least_float32(state.output["mask_latent"])
        value = sum(F.mse_loss(_at_least_float32(state.output["latents"][lv]), z) for lv in USED_LEVELS)
        return {"latent_mse": WeightedTerm(value, self.weight)}
