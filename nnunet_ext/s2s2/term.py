"""``S2S2Term``: the copy's segmentation loss and the cosine consistency of the two passes.

The trainer runs the network once on ``cat(real patches, copy patches)`` (nnU-Net's networks use instance
norm, so this is the same as two separate passes; gradients reach both halves). With ``B`` = half the batch:

* ``seg_copy``: nnU-Net's Dice + CE (deep supervision) on the copy half, weight ``copy_weight`` (1.0; 0.1 in the
  SLAug setting); nnU-Net's ``train_losses`` is the real half's (weight 1 in the total);
* ``consist_enc``: ``losses.cosine_consistency`` of the deepest encoder feature (the bottleneck,
  ``encoder.{n-1}``) of the two halves, weight ``alpha_enc`` (1.0). With ``enc_stages = k > 1`` the k deepest
  encoder stage outputs get the same term, each with weight ``alpha_enc``: ``consist_enc_2`` is the stage just
  above the bottleneck (``encoder.{n-2}``), ``consist_enc_3`` the one above that, ... (FCBFormer's setting: 0.4 on
  two encoder-side features, 0.8 in all);
* ``consist_dec``: the same on ``decoder.final`` (the input of the segmentation head), weight ``alpha_dec`` (1.0).

Total added to nnU-Net's loss of the real half: ``copy_weight * seg_copy + alpha_enc * sum(consist_enc*)
+ alpha_dec * consist_dec``. A term with weight 0 is neither tapped nor computed.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.core.network import unwrap_network
from nnunet_ext.errors import UserError
from nnunet_ext.s2s2.losses import cosine_consistency


def half(x, which: int):
    """First (0) or second (1) half of a batch (tensor or deep-supervision list)."""
    if isinstance(x, (list, tuple)):
        return [half(t, which) for t in x]
    n = x.shape[0] // 2
    return x[:n] if which == 0 else x[n:]


def enc_term_name(j: int) -> str:
    """Logged name of the encoder consistency on the ``j``-th deepest encoder stage (1: the bottleneck)."""
    return "consist_enc" if j == 1 else f"consist_enc_{j}"


class S2S2Term(LossTerm):
    def __init__(self, seg_loss: Callable, copy_weight: float = 1.0, alpha_enc: float = 1.0, alpha_dec: float = 1.0,
                 enc_stages: int = 1):
        super().__init__()
        if int(enc_stages) != enc_stages or enc_stages < 1:
            raise UserError(f"S2S2: s2s2_enc_stages must be a whole number >= 1, got {enc_stages!r}")
        self.seg_loss = seg_loss
        self.copy_weight, self.alpha_enc, self.alpha_dec = float(copy_weight), float(alpha_enc), float(alpha_dec)
        self.enc_stages = int(enc_stages)
        self._enc: List[str] = []

    def required_features(self, network) -> List[str]:
        n = len(unwrap_network(network).encoder.stages)
        if self.enc_stages > n:
            raise UserError(f"S2S2: s2s2_enc_stages = {self.enc_stages} but the network has only {n} encoder "
                            f"stages: set s2s2_enc_stages to at most {n}")
        self._enc = [f"encoder.{n - j}" for j in range(1, self.enc_stages + 1)]  # bottleneck first
        return (list(self._enc) if self.alpha_enc else []) + (["decoder.final"] if self.alpha_dec else [])

    def consistency_taps(self) -> Dict[str, str]:
        """``{logged name: tap name}`` of the consistency terms that are computed (call after
        ``required_features``)."""
        taps = {enc_term_name(j): tap for j, tap in enumerate(self._enc, 1)} if self.alpha_enc else {}
        if self.alpha_dec:
            taps["consist_dec"] = "decoder.final"
        return taps

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        out = {"seg_copy": WeightedTerm(self.seg_loss(half(state.output, 1), half(state.target, 1)), self.copy_weight)}
        for name, tap in self.consistency_taps().items():
            f = state.features[tap]
            out[name] = WeightedTerm(cosine_consistency(half(f, 0), half(f, 1)),
                                     self.alpha_dec if name == "consist_dec" else self.alpha_enc)
        return out
