"""``nnUNetTrainerFD``: nnU-Net + SelfReg-UNet internal feature distillation.

Settings are class attributes; variants are one-line subclasses (see ``trainers/ext_fd_trainers.py``).
Which nnU-Net features are used, and how they are weighted: ``nnunet_ext.fd.term``.
"""
from typing import List

from nnunet_ext.core.loss_terms import LossTerm
from nnunet_ext.core.trainer import nnUNetTrainerExt
from nnunet_ext.fd.term import FeatureDistillationTerm


class nnUNetTrainerFD(nnUNetTrainerExt):
    """SelfReg-UNet feature distillation (authors' CNN composition): Dice+CE + 0.015 * (intra + inter).

    Students: encoder stage outputs 1..n-1 and decoder stage outputs except the last; teacher: the
    last decoder stage output (detached). intra = mean intra_fd over encoder students + mean over
    decoder students; inter = mean inter_fd over all students.

    Settings (class attributes): ``fd_lambda`` (0.015, the authors' default), ``fd_intra``,
    ``fd_inter``, ``fd_selection`` ("stages": the authors' CNN U-Net; "blocks": their Swin variant).
    """

    fd_lambda: float = 0.015
    fd_intra: bool = True
    fd_inter: bool = True
    fd_selection: str = "stages"

    def build_loss_terms(self) -> List[LossTerm]:
        return super().build_loss_terms() + [FeatureDistillationTerm(self.fd_lambda, self.fd_intra, self.fd_inter,
                                                                     self.fd_selection)]
