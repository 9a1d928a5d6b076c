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


def schedule_variant_source(base_module: str, base_class: str, name: str, schedule: dict) -> str:
    """Python source of a one-class trainer module ``name(ScheduleMixin, base_class)`` with ``schedule``.

    Used by the demo and the benchmarks to make short-budget variants of any trainer (stock ones
    included) in a folder that is then added to ``nnUNet_extTrainer``.
    """
    return (f"from nnunet_ext.core.schedule import ScheduleMixin\n"
            f"from {base_module} import {base_class}\n\n\n"
            f"class {name}(ScheduleMixin, {base_class}):\n"
            f"    schedule = {dict(schedule)!r}\n")
