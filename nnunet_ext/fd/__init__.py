"""Internal feature distillation (SelfReg-UNet, MICCAI 2024) for nnU-Net: ``nnUNetTrainerFD``."""
from nnunet_ext.fd.losses import inter_fd, intra_fd, selfreg_loss
from nnunet_ext.fd.term import FeatureDistillationTerm, distillation_groups

__all__ = ["intra_fd", "inter_fd", "selfreg_loss", "FeatureDistillationTerm", "distillation_groups"]
