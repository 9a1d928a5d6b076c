"""S2S2 semantic stacking (nnUNetTrainerS2S2) and its variants; needs `nnunet-ext s2s2-generate` first."""
from nnunet_ext.fd.trainer import nnUNetTrainerFD
from nnunet_ext.paths import RenamedTrainer
from nnunet_ext.s2s2.trainer import nnUNetTrainerS2S2


class nnUNetTrainerS2S2_encOnly(nnUNetTrainerS2S2):
    """S2S2 with encoder consistency only (alpha_enc 1.0, alpha_dec 0; the ablations' strongest part)."""
    s2s2_alpha_dec = 0.0


class nnUNetTrainerS2S2_enc0p4(nnUNetTrainerS2S2):
    """S2S2 with alpha_enc 0.4 on the bottleneck only, alpha_dec 0 (total consistency weight 0.4).

    FCBFormer's weight on one feature, but not FCBFormer's setting: FCBFormer puts 0.4 on two encoder-side features
    (0.8 in all); that is ``nnUNetTrainerS2S2_fcbformer``.
    """
    s2s2_alpha_enc = 0.4
    s2s2_alpha_dec = 0.0


class nnUNetTrainerS2S2_fcbformer(nnUNetTrainerS2S2):
    """S2S2 as in the paper's FCBFormer setting: 0.4 on two encoder features (0.8 in all), alpha_dec 0.

    FCBFormer's consistency (weight 0.4 each) is on its transformer branch's output and on its CNN encoder's
    bottleneck. nnU-Net's U-Net has one encoder; the two features here are its two deepest encoder stage outputs:
    the bottleneck (``encoder.{n-1}``, logged ``consist_enc``), the counterpart of the CNN bottleneck, and the
    stage above it (``encoder.{n-2}``, ``consist_enc_2``), the deepest other encoder representation, standing in
    for the transformer branch's high-level feature.
    """
    s2s2_alpha_enc = 0.4
    s2s2_alpha_dec = 0.0
    s2s2_enc_stages = 2


class nnUNetTrainerS2S2_paperWeights(nnUNetTrainerS2S2):
    """S2S2 with the paper's TransUNet ratio of consistency to segmentation: alpha_enc 2.0, alpha_dec 2.0.

    TransUNet's total 0.5 (CE + CE_copy) + 0.5 (Dice + Dice_copy) + enc + dec, scaled by 2 so that nnU-Net's
    Dice + CE (weights 1 and 1) keeps its scale: (Dice+CE)(real) + (Dice+CE)(copy) + 2 enc + 2 dec. Same
    gradient direction as the paper's total, twice its size; nnU-Net's segmentation loss, learning rate and
    ``train_losses`` stay as in stock nnU-Net (the alternative, halving both segmentation losses, would halve the
    segmentation gradients nnU-Net's lr is tuned for).
    """
    s2s2_alpha_enc = 2.0
    s2s2_alpha_dec = 2.0


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


class nnUNetTrainerS2S2_enc04(RenamedTrainer, nnUNetTrainerS2S2_enc0p4):
    """Deprecated name of nnUNetTrainerS2S2_enc0p4 (before the naming rule of docs/developers.md)."""


__all__ = ["nnUNetTrainerS2S2", "nnUNetTrainerS2S2_encOnly", "nnUNetTrainerS2S2_enc0p4",
           "nnUNetTrainerS2S2_fcbformer", "nnUNetTrainerS2S2_paperWeights", "nnUNetTrainerS2S2_slaug",
           "nnUNetTrainerS2S2_gin", "nnUNetTrainerS2S2_diffusion", "nnUNetTrainerS2S2_controlnet",
           "nnUNetTrainerS2S2FD", "nnUNetTrainerS2S2_enc04"]
