"""Internal feature distillation (SelfReg-UNet, MICCAI 2024) for nnU-Net: ``nnUNetTrainerFD``."""
from nnunet_ext.fd.losses import feature_distillation, inter_fd, intra_fd
from nnunet_ext.fd.term import FeatureDistillationTerm

__all__ = ["intra_fd", "inter_fd", "feature_distillation", "FeatureDistillationTerm"]
