"""``S2S2Term``: the copy's segmentation loss and the cosine consistency of the two passes.

The trainer runs the network once on ``cat(real patches, copy patches)`` (nnU-Net's networks use instance
norm, so this is the same as two separate passes; gradients reach both halves). With ``B`` = half the batch:

* ``seg_copy``: nnU-Net's Dice + CE (deep supervision) on the copy half, weight ``copy_weight`` (1.0; 0.1 in the
  SLAug setting); nnU-Net's ``train_losses`` is the real half's;
* ``consist_enc``: ``cosine_consistency`` of the deepest encoder feature (the bottleneck, ``encoder.{n-1}``) of
  the two halves, weight ``alpha_enc`` (1.0);
* ``consist_dec``: the same on ``decoder.final`` (the input of the segmentation head), weight ``alpha_dec`` (1.0).

A term with weight 0 is neither tapped nor computed.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from nnunet_ext.core.consistency import cosine_consistency
from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.core.network import unwrap_network


def half(x, which: int):
    """First (0) or second (1) half of a batch (tensor or deep-supervision list)."""
    if isinstance(x, (list, tuple)):
        return [half(t, which) for t in x]
    n = x.shape[0] // 2
    return x[:n] if which == 0 else x[n:]


class S2S2Term(LossTerm):
    def __init__(self, seg_loss: Callable, copy_weight: float = 1.0, alpha_enc: float = 1.0, alpha_dec: float = 1.0):
        super().__init__()
        self.seg_loss = seg_loss
        self.copy_weight, self.alpha_enc, self.alpha_dec = float(copy_weight), float(alpha_enc), float(alpha_dec)
        self._enc = None

    def required_features(self, network) -> List[str]:
        n = len(unwrap_network(network).encoder.stages)
        self._enc = f"encoder.{n - 1}"
        return ([self._enc] if self.alpha_enc else []) + (["decoder.final"] if self.alpha_dec else [])

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        out = {"seg_copy": WeightedTerm(self.seg_loss(half(state.output, 1), half(state.target, 1)), self.copy_weight)}
        for name, tap, w in (("consist_enc", self._enc, self.alpha_enc), ("consist_dec", "decoder.final", self.alpha_dec)):
            if w:
                f = state.features[tap]
                out[name] = WeightedTerm(cosine_consistency(half(f, 0), half(f, 1)), w)
        return out
