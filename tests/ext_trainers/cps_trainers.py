"""Test-only short-schedule CPS trainers (this folder is on nnUNet_extTrainer in the tests)."""

from nnunet_ext.core.schedule import NoFinalValidationMixin, ScheduleMixin
from nnunet_ext.cps.trainer import (nnUNetTrainerCPS, nnUNetTrainerCPS_UIF, nnUNetTrainerCPS_cutmix,
                                    nnUNetTrainerCPS_cutmix_UIF)
from nnunet_ext.paths import env_var


CPS_TINY = {"num_epochs": 3, "num_iterations_per_epoch": 6, "num_val_iterations_per_epoch": 1, "save_every": 1}


class nnUNetTrainerCPS_tiny(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainerCPS):
    schedule = CPS_TINY
    unlabeled_batch_size = 1


class nnUNetTrainerCPS_UIF_tiny(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainerCPS_UIF):
    """Scores at epoch 1 (warm-up 1/3), keeps half of the unlabelled cases, 2 patches per case."""
    schedule = CPS_TINY
    unlabeled_batch_size = 1
    uif_warmup = 1 / 3
    uif_keep = 0.5
    uif_patches_per_case = 2

    def on_epoch_start(self):
        crash = env_var("nnUNet_ext_test_crash_at_epoch")
        if crash is not None and self.current_epoch == int(crash):
            raise RuntimeError(f"test crash at epoch {self.current_epoch}")
        super().on_epoch_start()


class nnUNetTrainerCPS_cutmix_tiny(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainerCPS_cutmix):
    """CPS + CutMix: U0 and U1 of one patch each per iteration."""
    schedule = CPS_TINY
    unlabeled_batch_size = 1


class nnUNetTrainerCPS_cutmix_UIF_tiny(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainerCPS_cutmix_UIF):
    """CPS + CutMix + UIF: 2 epochs of 3 iterations, scores at epoch 1, keeps half of the unlabelled cases."""
    schedule = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1, "save_every": 1}
    unlabeled_batch_size = 1
    uif_warmup = 0.5
    uif_keep = 0.5
    uif_patches_per_case = 1
