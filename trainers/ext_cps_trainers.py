"""Cross pseudo supervision with unlabelled images (nnUNetTrainerCPS), uncertainty image filtering (UIF), CutMix,
variants.

Needs ``nnunet-ext preprocess-unlabeled -d D -c CONFIG`` after nnU-Net's planning (see the README).
"""
from nnunet_ext.cps.trainer import (nnUNetTrainerCPS, nnUNetTrainerCPS_UIF, nnUNetTrainerCPS_cutmix,
                                    nnUNetTrainerCPS_cutmix_UIF)


class nnUNetTrainerCPS_rampup(nnUNetTrainerCPS):
    """CPS, lambda ramped up (sigmoid) over the first 20% of the epochs."""
    cps_rampup = 0.2


class nnUNetTrainerCPS_lambda1p5(nnUNetTrainerCPS):
    """CPS with lambda = 1.5 (the original CPS setting on VOC)."""
    cps_weight = 1.5


class nnUNetTrainerCPS_UIF_keep200(nnUNetTrainerCPS_UIF):
    """CPS + UIF keeping 200 unlabelled cases (the published FLARE22 setting: 200 of 2000)."""
    uif_keep = 200


class nnUNetTrainerCPS_UIF_rescore(nnUNetTrainerCPS_UIF):
    """CPS + UIF, re-scored every 100 epochs (10% of nnU-Net's 1000) after the first scoring."""
    uif_rescore_every = 100


class nnUNetTrainerCPS_cutmix_box1(nnUNetTrainerCPS_cutmix):
    """CPS + CutMix with one box per mask (the default has the CPS code's 3): the share of the patch taken from the
    second image is the box's volume fraction, in 0.25..0.5."""
    cutmix_boxes = 1


__all__ = ["nnUNetTrainerCPS", "nnUNetTrainerCPS_UIF", "nnUNetTrainerCPS_rampup", "nnUNetTrainerCPS_lambda1p5",
           "nnUNetTrainerCPS_UIF_keep200", "nnUNetTrainerCPS_UIF_rescore", "nnUNetTrainerCPS_cutmix",
           "nnUNetTrainerCPS_cutmix_UIF", "nnUNetTrainerCPS_cutmix_box1"]
