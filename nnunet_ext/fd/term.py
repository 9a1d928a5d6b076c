"""Feature distillation as a pluggable ``LossTerm`` over tapped U-Net features.

Which nnU-Net feature stands for which of the authors' features (SelfReg-UNet, CNN U-Net with
encoder outputs x1..x5 and up-stage outputs up1..up4; ``selection="stages"``, the default):

=======================  ===========================================  ==============================
authors (CNN U-Net)      nnU-Net PlainConvUNet / ResidualEncoderUNet  role
=======================  ===========================================  ==============================
x1 (full resolution)     ``encoder.0`` (stage 0 output)               not used
x2 .. x5 (x5 bottleneck)  ``encoder.1`` .. ``encoder.{n-1}``           students: intra + inter
up1 .. up3               ``decoder.0`` .. ``decoder.{n-3}``           students: intra + inter
up4 (head input)         ``decoder.{n-2}`` = ``decoder.final``        teacher (detached), no intra
=======================  ===========================================  ==============================

A stage output is the output of the stage's last conv block (PlainConvUNet) or last residual block
(ResidualEncoderUNet), in 2D and 3D alike; n is the number of encoder stages (5 stages, 2D: 4 + 3
= 7 students, as in the paper). Loss = lambda * (mean intra_fd over the encoder students + mean
intra_fd over the decoder students + mean inter_fd over all students): intra counts twice as much
as inter, as in the authors' ``KDloss``.

``selection="blocks"`` (``nnUNetTrainerFD_allBlocks``) is the authors' Swin-UNet selection mapped
onto the same networks: the first and the last block of every encoder and decoder stage (encoder
stage 0 included; where a stage has one block it counts once), the teacher left out. Loss =
lambda * (4 intra group means: encoder first blocks, encoder last blocks, decoder first blocks,
decoder last blocks + 2 inter group means: encoder blocks, decoder blocks), again 2:1.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from nnunet_ext.core.feature_taps import stage_block_names, tap_points
from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.fd.losses import selfreg_loss

TEACHER = "decoder.final"
SELECTIONS = ("stages", "blocks")

Groups = Tuple[List[List[str]], List[List[str]]]


def _num_stages(points, part: str) -> int:
    n = 0
    while f"{part}.{n}" in points:
        n += 1
    return n


def distillation_groups(network: nn.Module, selection: str = "stages") -> Groups:
    """``(intra_groups, inter_groups)`` as lists of tap names (see the module docstring)."""
    if selection not in SELECTIONS:
        raise ValueError(f"unknown feature selection {selection!r}; choose one of {SELECTIONS}")
    points = tap_points(network)
    n_enc, n_dec = _num_stages(points, "encoder"), _num_stages(points, "decoder")
    teacher = points[TEACHER]
    if selection == "stages":
        enc = [f"encoder.{i}" for i in range(1, n_enc)]
        dec = [f"decoder.{i}" for i in range(n_dec - 1)]
        return [enc, dec], [enc + dec]

    def blocks(part, which):
        # stage_block_names lists a one-block stage once, as its last block; the teacher is left out
        return [n for n in stage_block_names(network, (part,)) if n.endswith(which) and points[n] is not teacher]

    ef, el = blocks("encoder", ".first"), blocks("encoder", ".last")
    df, dl = blocks("decoder", ".first"), blocks("decoder", ".last")
    return [ef, el, df, dl], [ef + el, df + dl]


class FeatureDistillationTerm(LossTerm):
    """SelfReg-UNet's internal feature distillation (see the module docstring for the mapping).

    Logged terms ``intra_fd`` (sum of the intra group means) and ``inter_fd`` (sum of the inter
    group means), unweighted; both enter the total with ``lambda_`` (0.015, the authors' default).
    """

    def __init__(self, lambda_: float = 0.015, use_intra: bool = True, use_inter: bool = True,
                 selection: str = "stages", seed: Optional[int] = None):
        super().__init__()
        if not (use_intra or use_inter):
            raise ValueError("FeatureDistillationTerm needs at least one of use_intra / use_inter")
        if selection not in SELECTIONS:
            raise ValueError(f"unknown feature selection {selection!r}; choose one of {SELECTIONS}")
        self.lambda_, self.use_intra, self.use_inter = float(lambda_), use_intra, use_inter
        self.selection = selection
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.groups: Groups = ([], [])

    def required_features(self, network: nn.Module) -> List[str]:
        intra, inter = distillation_groups(network, self.selection)
        self.groups = (intra if self.use_intra else [], inter if self.use_inter else [])
        names = [n for g in self.groups[0] + self.groups[1] for n in g]
        return list(dict.fromkeys(names + [TEACHER]))

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        feats = state.features
        intra_groups = [[feats[n] for n in g] for g in self.groups[0]]
        inter_groups = [[feats[n] for n in g] for g in self.groups[1]]
        intra, inter = selfreg_loss(intra_groups, inter_groups, feats[TEACHER], self.generator)
        out = {}
        if self.use_intra:
            out["intra_fd"] = WeightedTerm(intra, self.lambda_)
        if self.use_inter:
            out["inter_fd"] = WeightedTerm(inter, self.lambda_)
        return out
