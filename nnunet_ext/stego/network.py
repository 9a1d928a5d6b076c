"""``STEGONetwork``: the network nnU-Net builds, trains, validates and predicts with for STEGO.

    nnU-Net-normalised 2D patch -> frozen backbone (``backbone.py``) -> STEGO head (``head.py``) -> code (dim 70)
    -> cosine similarity to the cluster probe's centroids (``probe.py``) -> per-cluster scores

* **Any patch size.** A patch whose size is not a multiple of the backbone's stride (e.g. 14 for DINOv2) is
  resized bilinearly to the next multiple before the backbone; codes are upsampled back to the patch size
  (bilinear, as STEGO upsamples its codes to image resolution before clustering).
* **Training mode** (``forward(x, n_images)``) returns ``{"feats", "codes", "cluster_loss"}``: the backbone
  features after the head's third ``Dropout2d`` draw (what the correlation loss uses), the codes at feature
  resolution, and the cluster probe's loss on the detached codes of the first ``n_images`` patches only (the
  batch's images; the trainer appends their kNN partners after them, and STEGO's probe never sees the partners;
  default: all patches). It is computed in the forward pass so that DDP sees the probe's parameters used.
* **Evaluation mode** (validation, ``nnUNetv2_predict``) returns logits for nnU-Net: ``2 x`` cosine similarity of
  the (full-resolution) code to each centroid, the code being averaged with the code of the horizontally flipped
  patch first (STEGO's evaluation). Channel ``c`` shows cluster ``cluster_of_label[c]``: identity (cluster space)
  until the trainer sets the Hungarian mapping found on labelled validation cases; the mapping is a buffer, so
  it is saved with the model and predictions come out in label space.
* **The backbone is not part of the state dict** (frozen, never trained, often large): it is built from the local
  weights at load time (``$nnUNet_ext_backbone``); the state dict records its name and checksum, and loading a
  model with other backbone weights fails with a clear error.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from nnunet_ext.core.network import FrozenModelNetwork
from nnunet_ext.errors import UserError
from nnunet_ext.stego.backbone import BACKBONE_ENV, FrozenBackbone
from nnunet_ext.stego.head import STEGOHead
from nnunet_ext.stego.probe import ClusterProbe

#: nnU-Net logits = LOGIT_SCALE * cosine similarity to the centroids (softmax -> cluster probabilities for the CRF)
LOGIT_SCALE = 2.0


class BackboneChangedError(UserError):
    """The backbone weights differ from the ones the model was trained with."""


class STEGONetwork(FrozenModelNetwork):
    def __init__(self, backbone: FrozenBackbone, n_clusters: int, in_channels: int, dim: int = 70,
                 dropout: float = 0.1, backbone_name: str = "", backbone_checksum: str = "",
                 flip_average: bool = True):
        super().__init__()
        if in_channels not in (1, 3):
            raise UserError(f"STEGO's backbones take 1-channel (replicated) or RGB images; this dataset has "
                            f"{in_channels} channels")
        self.in_channels, self.n_clusters, self.flip_average = in_channels, n_clusters, flip_average
        self.head = STEGOHead(backbone.channels, dim, dropout)
        self.probe = ClusterProbe(dim, n_clusters)
        self.register_buffer("cluster_of_label", torch.arange(n_clusters))
        self.attach_frozen(backbone)
        self.backbone_name, self.backbone_checksum = backbone_name, backbone_checksum

    @property
    def backbone(self) -> FrozenBackbone:
        return self.frozen_model

    # ---- features and codes ----------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen backbone features (b, C, h, w) of nnU-Net-normalised patches of any size."""
        s = self.backbone.stride
        size = [int(math.ceil(n / s)) * s for n in x.shape[-2:]]
        if list(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.backbone.features(x)

    def codes(self, x: torch.Tensor, feats: torch.Tensor = None) -> torch.Tensor:
        """Head codes at feature resolution; in evaluation averaged with those of the flipped patch (``feats``:
        the backbone features of ``x`` if already computed)."""
        code = self.head(self.features(x) if feats is None else feats)[1]
        if not self.training and self.flip_average:
            code = (code + self.head(self.features(x.flip(-1)))[1].flip(-1)) / 2
        return code

    def cluster_scores(self, code: torch.Tensor, size) -> torch.Tensor:
        """Per-cluster logits (b, n_clusters, *size) of codes upsampled to ``size`` (cluster space)."""
        code = F.interpolate(code, size=tuple(size), mode="bilinear", align_corners=False)
        return LOGIT_SCALE * self.probe.logits(code)

    def forward(self, x: torch.Tensor, n_images: Optional[int] = None):
        if self.training:
            feats, code = self.head(self.features(x))
            probed = code if n_images is None else code[:n_images]
            return {"feats": feats, "codes": code, "cluster_loss": self.probe.loss(probed)}
        return self.cluster_scores(self.codes(x), x.shape[-2:])[:, self.cluster_of_label]

    def set_mapping(self, cluster_to_label: Dict[int, int]) -> None:
        """Write predictions in label space: ``cluster_to_label`` from Hungarian matching (a permutation)."""
        inv = {lab: cl for cl, lab in cluster_to_label.items()}
        if sorted(inv) != list(range(self.n_clusters)):
            raise ValueError(f"mapping {cluster_to_label} is not a permutation of {self.n_clusters} clusters")
        self.cluster_of_label.copy_(torch.tensor([inv[c] for c in range(self.n_clusters)]))

    # ---- the backbone's identity in the state dict -----------------------------------------------------------
    def get_extra_state(self) -> Dict[str, str]:
        return {"backbone": self.backbone_name, "backbone_checksum": self.backbone_checksum}

    def set_extra_state(self, state: Dict[str, str]) -> None:
        if state and state.get("backbone_checksum") not in (None, "", self.backbone_checksum):
            raise BackboneChangedError(
                f"the backbone weights in ${BACKBONE_ENV} are not the ones this model was trained with (backbone "
                f"{state.get('backbone')}, checksum {state['backbone_checksum'][:12]}..., now "
                f"{self.backbone_checksum[:12]}...): point {BACKBONE_ENV} to the original weights")
