"""Test-only trainer for ``tests/test_robustness.py``: the shortest schedule that still yields a checkpoint."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.core.schedule import NoFinalValidationMixin, ScheduleMixin


class nnUNetTrainer_robustnessMicro(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainer):
    """2 epochs x 8 iterations, no end-of-training validation export (the robustness tool predicts the
    validation cases itself): enough for the pipeline's end-to-end test, not for a good model."""
    schedule = {"num_epochs": 2, "num_iterations_per_epoch": 8, "num_val_iterations_per_epoch": 1, "save_every": 1}
