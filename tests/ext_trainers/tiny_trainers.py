"""Test-only short-schedule trainers (put this folder on nnUNet_extTrainer in the tests)."""

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.core.schedule import ScheduleMixin
from nnunet_ext.fd.trainer import nnUNetTrainerFD
from nnunet_ext.paths import env_var

TINY = {"num_epochs": 3, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 2, "save_every": 1}


class nnUNetTrainer_tiny(ScheduleMixin, nnUNetTrainer):
    schedule = TINY


class nnUNetTrainer_tinyC2F(ScheduleMixin, nnUNetTrainer):
    """TINY at lr 0.03 (the coarse configuration with 40 iterations per epoch); nnU-Net's final validation only
    where a test reads it (3d_fine), without test-time mirroring (the checkpoint, saved before, keeps nnU-Net's
    mirroring axes)."""
    schedule = TINY

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # coarse (24 x 32 x 32 grid): with TINY it predicted nothing on every test case in one CI run, and with 40
        # iterations per epoch alone in 1 of 3 runs here; 40 iterations at lr 0.03 found the liver in 6 of 6 runs
        # (9 s per epoch on 2 cores).
        # fine: at lr 0.01 the test cases' mean Dice was 0.22-0.30 in 3 runs here and 0.11 in one CI run (one case
        # at 0.02); at lr 0.03, same 30 iterations, 0.32-0.40 in 7 runs, no case under 0.29 (60 iterations: 0.40-0.41)
        self.initial_lr = 0.03
        if self.configuration_name == "3d_coarse":
            self.num_iterations_per_epoch = 40

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.configuration_name != "3d_fine":
            self.print_to_log_file("test trainer: final validation skipped")
            return
        self.inference_allowed_mirroring_axes = None
        super().perform_actual_validation(save_probabilities)


class nnUNetTrainerFD_tinyCrash(ScheduleMixin, nnUNetTrainerFD):
    """Stops with an error at the start of epoch $nnUNet_ext_test_crash_at_epoch (to test --c)."""
    schedule = TINY

    def on_epoch_start(self):
        crash = env_var("nnUNet_ext_test_crash_at_epoch")
        if crash is not None and self.current_epoch == int(crash):
            raise RuntimeError(f"test crash at epoch {self.current_epoch}")
        super().on_epoch_start()


MICRO = {"num_epochs": 1, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1}


class nnUNetTrainerFD_micro(ScheduleMixin, nnUNetTrainerFD):
    schedule = MICRO
