"""``nnUNetTrainerFD``: nnU-Net + SelfReg-UNet internal feature distillation.

Settings are class attributes; variants are one-line subclasses (see ``trainers/ext_fd_trainers.py``).
"""
from typing import List

from nnunet_ext.core.loss_terms import LossTerm
from nnunet_ext.core.trainer import nnUNetTrainerExt
from nnunet_ext.fd.term import FeatureDistillationTerm


class nnUNetTrainerFD(nnUNetTrainerExt):
    """SelfReg-UNet feature distillation: loss = Dice+CE + 0.015 * (intra_fd + inter_fd).

    Settings (class attributes): ``fd_lambda`` (0.015, the paper's best), ``fd_intra``, ``fd_inter``.
    """

    fd_lambda: float = 0.015
    fd_intra: bool = True
    fd_inter: bool = True

    def build_loss_terms(self) -> List[LossTerm]:
        return [FeatureDistillationTerm(self.fd_lambda, self.fd_intra, self.fd_inter)]
