"""Test-only short-schedule FLARE22 trainers (this folder is on nnUNet_extTrainer in the tests).

Both skip nnU-Net's final validation (test time; sliding-window inference of the pair is covered by the test's
nnUNetv2_predict, per-epoch validation still runs)."""

from nnunet_ext.core.schedule import NoFinalValidationMixin, ScheduleMixin
from nnunet_ext.flare22.trainer import nnUNetTrainerFLARE22
from nnunet_ext.paths import env_var


class nnUNetTrainerFLARE22_tiny(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainerFLARE22):
    """3 epochs of 2 iterations; UIF scores at epoch 1 and keeps half of the unlabelled cases (1 patch each)."""
    schedule = {"num_epochs": 3, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1, "save_every": 1}
    unlabeled_batch_size = 1
    uif_warmup = 1 / 3
    uif_keep = 0.5
    uif_patches_per_case = 1

    def on_epoch_start(self):
        crash = env_var("nnUNet_ext_test_crash_at_epoch")
        if crash is not None and self.current_epoch == int(crash):
            raise RuntimeError(f"test crash at epoch {self.current_epoch}")
        super().on_epoch_start()


class nnUNetTrainerFLARE22_micro(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainerFLARE22):
    """1 epoch of 2 iterations."""
    schedule = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
    unlabeled_batch_size = 1
