"""Test-only short-schedule S2S2 trainers (this folder is on nnUNet_extTrainer in the tests)."""
from nnunet_ext.core.schedule import ScheduleMixin
from nnunet_ext.fd.trainer import nnUNetTrainerFD
from nnunet_ext.s2s2.trainer import nnUNetTrainerS2S2

S2S2_TINY = {"num_epochs": 3, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 2, "save_every": 1}
S2S2_MICRO = {"num_epochs": 1, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1}


class nnUNetTrainerS2S2_tiny(ScheduleMixin, nnUNetTrainerS2S2):
    schedule = S2S2_TINY


class nnUNetTrainerS2S2FD_micro(ScheduleMixin, nnUNetTrainerS2S2, nnUNetTrainerFD):
    schedule = S2S2_MICRO


class nnUNetTrainerS2S2Diffusion_micro(ScheduleMixin, nnUNetTrainerS2S2):
    schedule = S2S2_MICRO
    s2s2_generator = "diffusion"


class nnUNetTrainerS2S2Gin_micro(ScheduleMixin, nnUNetTrainerS2S2):
    schedule = S2S2_MICRO
    s2s2_generator = "gin"
