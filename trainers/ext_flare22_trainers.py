"""FLARE22: CPS + UIF + internal feature distillation (+ S2S2 where a semantic stack exists), composed.

Needs ``nnunet-ext preprocess-unlabeled -d D -c CONFIG`` after nnU-Net's planning (as the CPS trainers); S2S2 is
used when ``nnunet-ext s2s2-generate -d D -c CONFIG`` has made a stack for the configuration.
"""
from nnunet_ext.flare22.trainer import nnUNetTrainerFLARE22


class nnUNetTrainerFLARE22_noS2S2(nnUNetTrainerFLARE22):
    """FLARE22 without S2S2 even where a semantic stack exists: CPS + UIF + FD."""
    use_s2s2 = False


__all__ = ["nnUNetTrainerFLARE22", "nnUNetTrainerFLARE22_noS2S2"]
