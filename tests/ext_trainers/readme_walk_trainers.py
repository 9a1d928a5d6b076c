"""Test-only trainers for tests/test_readme_walkthrough.py (the README's "Use, in order" commands).

The walk trains five times (stock, FD, FD --c; stock and FD on the small plans). To fit CI time these
variants shorten the schedule (1 epoch x 3 iterations; 3 x 10 for the 3d_fullres FD run, whose prediction
is scored) and skip nnU-Net's final validation of the fold: that validation spawns two worker processes
(export, metrics), about 30 s on 2 busy cores whatever the schedule, and the walk does not use its output
(nnUNetv2_predict reads checkpoint_final.pth). test_fd_end_to_end.py runs the final validation.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ext.core.schedule import NoFinalValidationMixin, ScheduleMixin
from nnunet_ext.fd.trainer import nnUNetTrainerFD

#: the 3d_fullres FD model whose prediction is scored: the schedule of tiny_trainers.TINY
WALK_FD = {"num_epochs": 3, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 2, "save_every": 1}
#: the other runs are only checked to train, save and predict: one short epoch
WALK_MICRO = {"num_epochs": 1, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 1, "save_every": 1}


class nnUNetTrainer_readmeWalk(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainer):
    schedule = WALK_MICRO


class nnUNetTrainerFD_readmeWalk(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainerFD):
    schedule = WALK_FD


class nnUNetTrainerFD_readmeWalkMicro(NoFinalValidationMixin, ScheduleMixin, nnUNetTrainerFD):
    schedule = WALK_MICRO
