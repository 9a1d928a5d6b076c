"""S2S2 semantic stacking (nnUNetTrainerS2S2) and its variants; needs `nnunet-ext s2s2-generate` first."""
from nnunet_ext.fd.trainer import nnUNetTrainerFD
from nnunet_ext.s2s2.trainer import nnUNetTrainerS2S2


class nnUNetTrainerS2S2_encOnly(nnUNetTrainerS2S2):
    """S2S2 with encoder consistency only (alpha_enc 1.0, alpha_dec 0; the ablations' strongest part)."""
    s2s2_alpha_dec = 0.0


class nnUNetTrainerS2S2_enc04(nnUNetTrainerS2S2):
    """S2S2 as in the paper's FCBFormer setting: alpha_enc 0.4, alpha_dec 0."""
    s2s2_alpha_enc = 0.4
    s2s2_alpha_dec = 0.0


class nnUNetTrainerS2S2_slaug(nnUNetTrainerS2S2):
    """S2S2 as in the SLAug setting: the copy's seg loss and the consistency scaled by 0.1 (alpha_dec 0)."""
    s2s2_copy_weight = 0.1
    s2s2_alpha_enc = 0.1
    s2s2_alpha_dec = 0.0


class nnUNetTrainerS2S2_gin(nnUNetTrainerS2S2):
    """S2S2 on the training-free GIN stack (when several stacks exist)."""
    s2s2_generator = "gin"


class nnUNetTrainerS2S2_diffusion(nnUNetTrainerS2S2):
    """S2S2 on the stack of the tuned diffusion generator (`s2s2-tune`, then `s2s2-generate --generator diffusion`)."""
    s2s2_generator = "diffusion"


class nnUNetTrainerS2S2_controlnet(nnUNetTrainerS2S2):
    """S2S2 on the stack of the tuned ControlNet (`s2s2-tune --generator controlnet --init SD_FOLDER`)."""
    s2s2_generator = "controlnet"


class nnUNetTrainerS2S2FD(nnUNetTrainerS2S2, nnUNetTrainerFD):
    """S2S2 + internal feature distillation (FD's term with FD's settings), composed through build_loss_terms."""


__all__ = ["nnUNetTrainerS2S2", "nnUNetTrainerS2S2_encOnly", "nnUNetTrainerS2S2_enc04", "nnUNetTrainerS2S2_slaug",
           "nnUNetTrainerS2S2_gin", "nnUNetTrainerS2S2_diffusion", "nnUNetTrainerS2S2_controlnet", "nnUNetTrainerS2S2FD"]
