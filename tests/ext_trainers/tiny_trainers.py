"""Test-only short-schedule trainers (put this folder on nnUNet_extTrainer in the tests)."""
import os

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.core.schedule import ScheduleMixin
from nnunet_ext.fd.trainer import nnUNetTrainerFD

TINY = {"num_epochs": 3, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 2, "save_every": 1}


class nnUNetTrainer_tiny(ScheduleMixin, nnUNetTrainer):
    schedule = TINY


class nnUNetTrainerFD_tiny(ScheduleMixin, nnUNetTrainerFD):
    schedule = TINY


class nnUNetTrainerFD_tinyCrash(ScheduleMixin, nnUNetTrainerFD):
    """Stops with an error at the start of epoch $NNUNET_EXT_TEST_CRASH_AT_EPOCH (to test --c)."""
    schedule = TINY

    def on_epoch_start(self):
        crash = os.environ.get("NNUNET_EXT_TEST_CRASH_AT_EPOCH")
        if crash is not None and self.current_epoch == int(crash):
            raise RuntimeError(f"test crash at epoch {self.current_epoch}")
        super().on_epoch_start()


MICRO = {"num_epochs": 1, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1}


class nnUNetTrainerFD_micro(ScheduleMixin, nnUNetTrainerFD):
    schedule = MICRO
