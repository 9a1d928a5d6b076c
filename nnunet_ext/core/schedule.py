"""Training-schedule variants without hand-written ``__init__`` overrides.

nnU-Net sets ``num_epochs``, ``num_iterations_per_epoch``, ... as instance attributes in
``nnUNetTrainer.__init__``, so its own schedule variants (``nnUNetTrainer_5epochs``) override
``__init__``. ``ScheduleMixin`` does that once: a variant lists its settings in the class
attribute ``schedule`` and they are applied after nnU-Net's ``__init__``.

>>> class nnUNetTrainerFD_10epochs(ScheduleMixin, nnUNetTrainerFD):
...     schedule = {"num_epochs": 10}
"""
from __future__ import annotations

import torch

SCHEDULE_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every",
                 "initial_lr", "weight_decay", "oversample_foreground_percent")


class ScheduleMixin:
    """Applies the ``schedule`` dict of the class to the trainer instance after ``__init__``."""

    schedule: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        unknown = set(self.schedule) - set(SCHEDULE_KEYS)
        if unknown:
            raise ValueError(f"{type(self).__name__}.schedule has unknown keys {sorted(unknown)}; "
                             f"allowed: {SCHEDULE_KEYS}")
        for k, v in self.schedule.items():
            setattr(self, k, v)


class NoFinalValidationMixin:
    """Skips nnU-Net's validation of the fold at the end of training (``perform_actual_validation``: sliding-window
    prediction of every validation case, export, metrics), for short-schedule variants whose checkpoint is used
    otherwise (``nnUNetv2_predict`` reads ``checkpoint_final.pth``). Per-epoch validation still runs. Set
    ``skip_final_validation = False`` on a subclass to keep it; the reason goes to the training log."""

    skip_final_validation: bool = True
    skip_final_validation_reason: str = "final validation skipped"

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.skip_final_validation:
            self.print_to_log_file(f"{type(self).__name__}: {self.skip_final_validation_reason}")
            return
        return super().perform_actual_validation(save_probabilities)


def schedule_variant_source(base_module: str, base_class: str, name: str, schedule: dict) -> str:
    """Python source of a one-class trainer module ``name(ScheduleMixin, base_class)`` with ``schedule``.

    Used by the demo and the benchmarks to make short-budget variants of any trainer (stock ones
    included) in a folder that is then added to ``nnUNet_extTrainer``.
    """
    return (f"from nnunet_ext.core.schedule import ScheduleMixin\n"
            f"from {base_module} import {base_class}\n\n\n"
            f"class {name}(ScheduleMixin, {base_class}):\n"
            f"    schedule = {dict(schedule)!r}\n")
