"""STEGO: unsupervised segmentation from a frozen backbone ($nnUNet_ext_backbone); needs `nnunet-ext stego-knn`."""
from nnunet_ext.stego.losses import LIVER_ULTRASOUND
from nnunet_ext.stego.trainer import nnUNetTrainerSTEGO


class nnUNetTrainerSTEGO_taesd(nnUNetTrainerSTEGO):
    """STEGO on the TAESD encoder ($nnUNet_ext_backbone = TAESD's folder; stride 8, 4 channels)."""
    stego_backbone = "taesd"


class nnUNetTrainerSTEGO_vitb8(nnUNetTrainerSTEGO):
    """STEGO on DINO ViT-B/8 ($nnUNet_ext_backbone = its local weights file)."""
    stego_backbone = "dino_vitb8"


class nnUNetTrainerSTEGO_dinov2(nnUNetTrainerSTEGO):
    """STEGO on DINOv2 ViT-S/14 (patches resized to multiples of 14 inside the network)."""
    stego_backbone = "dinov2_vits14"


class nnUNetTrainerSTEGO_liverUS(nnUNetTrainerSTEGO):
    """Liver-ultrasound STEGO: ViT-B/8, dim 90, lambda rand/knn/self 0.11/0.93/0.12, b 0.93/0.21/0.21, lr 5e-5."""
    stego_backbone = "dino_vitb8"
    stego_dim = 90
    stego_weights = LIVER_ULTRASOUND
    stego_lr = 5e-5


__all__ = ["nnUNetTrainerSTEGO", "nnUNetTrainerSTEGO_taesd", "nnUNetTrainerSTEGO_vitb8", "nnUNetTrainerSTEGO_dinov2",
           "nnUNetTrainerSTEGO_liverUS"]
