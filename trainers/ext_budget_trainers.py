"""Small-budget schedules for CPU users: 30 epochs x 50 iterations (1500 iterations), a checkpoint every epoch.

nnU-Net writes ``checkpoint_latest.pth`` only every 50 epochs by default, so ``--c`` after an early stop on a
slow machine starts over; these variants save every epoch. Use them with small-budget plans
(``nnunet-ext plan-small``), see the README section "Training on a CPU".
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.core.schedule import ScheduleMixin
from nnunet_ext.fd.trainer import nnUNetTrainerFD

SMALL_BUDGET = {"num_epochs": 30, "num_iterations_per_epoch": 50, "num_val_iterations_per_epoch": 10, "save_every": 1}


class nnUNetTrainer_smallBudget(ScheduleMixin, nnUNetTrainer):
    """Stock nnU-Net, 30 epochs x 50 iterations, checkpoint every epoch (CPU budget)."""
    schedule = SMALL_BUDGET


class nnUNetTrainerFD_smallBudget(ScheduleMixin, nnUNetTrainerFD):
    """nnUNetTrainerFD, 30 epochs x 50 iterations, checkpoint every epoch (CPU budget)."""
    schedule = SMALL_BUDGET
