"""Feature distillation as a pluggable ``LossTerm`` over tapped U-Net features."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from nnunet_ext.core.feature_taps import stage_block_names
from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.fd.losses import Workspace, feature_distillation

TEACHER = "decoder.final"


class FeatureDistillationTerm(LossTerm):
    """SelfReg-UNet's loss on the first and last block of every encoder and decoder stage.

    Logged terms ``intra_fd`` and ``inter_fd`` (unweighted); both enter the total with ``lambda_``
    (paper: total = seg + lambda * (intra + inter), lambda = 0.015). Teacher for inter_fd: the last
    decoder feature before the segmentation head, detached.
    """

    def __init__(self, lambda_: float = 0.015, use_intra: bool = True, use_inter: bool = True,
                 seed: Optional[int] = None):
        super().__init__()
        if not (use_intra or use_inter):
            raise ValueError("FeatureDistillationTerm needs at least one of use_intra / use_inter")
        self.lambda_, self.use_intra, self.use_inter = float(lambda_), use_intra, use_inter
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._names: List[str] = []
        self.workspace = Workspace()

    def required_features(self, network: nn.Module) -> List[str]:
        self._names = stage_block_names(network)
        return self._names + [TEACHER]

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        feats = [state.features[n] for n in self._names]
        teacher = state.features[TEACHER]
        # recycled gradient buffers pay off on CPU only (CUDA's caching allocator does this already)
        workspace = self.workspace if teacher.device.type == "cpu" else None
        intra, inter = feature_distillation(feats, teacher, self.use_intra, self.use_inter, self.generator, workspace)
        out = {}
        if self.use_intra:
            out["intra_fd"] = WeightedTerm(intra, self.lambda_)
        if self.use_inter:
            out["inter_fd"] = WeightedTerm(inter, self.lambda_)
        return out
