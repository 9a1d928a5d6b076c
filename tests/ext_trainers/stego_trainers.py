"""Test-only short-schedule STEGO trainer on a tiny ViT (this folder is on nnUNet_extTrainer in the tests)."""
from nnunet_ext.core.schedule import ScheduleMixin
from nnunet_ext.stego.losses import CorrelationWeights
from nnunet_ext.stego.trainer import nnUNetTrainerSTEGO

#: the tiny ViT the STEGO tests save (timm vit_small_patch8_224 with these overrides)
TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}


class nnUNetTrainerSTEGO_tiny(ScheduleMixin, nnUNetTrainerSTEGO):
    """3 epochs x 40 iterations on a tiny random ViT-S/8 shape; lr 5e-3 (head) and 5e-2 (probe) for so few steps;
    shifts b = 0.6 for the random ViT's features (STEGO tunes b per backbone and dataset; the ViT-S defaults make
    every code alike here)."""
    schedule = {"num_epochs": 3, "num_iterations_per_epoch": 40, "num_val_iterations_per_epoch": 3, "save_every": 1}
    stego_backbone_kwargs = TINY_VIT
    stego_lr = 5e-3
    stego_probe_lr = 5e-2
    stego_weights = CorrelationWeights(b_self=0.6, b_knn=0.6, b_rand=0.6)


class nnUNetTrainerSTEGO_tinyTimm(nnUNetTrainerSTEGO_tiny):
    """The same tiny ViT named through timm: its own kNN table folder (none made: the missing-table error)."""
    stego_backbone = "timm:vit_small_patch8_224"


class nnUNetTrainerSTEGO_tinyShort(nnUNetTrainerSTEGO_tiny):
    """1 epoch x 5 iterations: runs the pipeline (images-only dataset), no quality expected."""
    schedule = {"num_epochs": 1, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 1, "save_every": 1}
