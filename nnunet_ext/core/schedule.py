"""Training-schedule variants without hand-written ``__init__`` overrides, and the one generator of their source.

nnU-Net sets ``num_epochs``, ``num_iterations_per_epoch``, ... as instance attributes in
``nnUNetTrainer.__init__``, so its own schedule variants (``nnUNetTrainer_5epochs``) override
``__init__``. ``ScheduleMixin`` does that once: a variant lists its settings in the class
attribute ``schedule`` and they are applied after nnU-Net's ``__init__``.

>>> class nnUNetTrainerFD_10epochs(ScheduleMixin, nnUNetTrainerFD):
...     schedule = {"num_epochs": 10}

``variant_source`` writes such a variant of any trainer (nnU-Net's, nnunet_ext's, one from a folder on
``nnUNet_extTrainer``) as a module of its own, for a folder that is then put on ``nnUNet_extTrainer``: the demo's
short runs and the benchmark's ``<Trainer>__bench`` variants are made by it.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Optional, Sequence

import torch

from nnunet_ext.atomic_io import write_text_atomic
from nnunet_ext.paths import class_file

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


def import_lines(cls, alias: str) -> str:
    """Source lines that import ``cls`` as ``alias`` in a generated module.

    A class whose module imports normally (nnU-Net's trainers, nnunet_ext's, any installed package) is
    imported by name; a class from a plain folder on ``nnUNet_extTrainer`` is loaded from its file.
    """
    mod_name = cls.__module__
    try:
        mod = importlib.import_module(mod_name)
        if getattr(mod, cls.__name__, None) is cls or _same_file(mod, cls):
            return f"from {mod_name} import {cls.__name__} as {alias}\n"
    except Exception:  # noqa: BLE001 - not importable by name: load it from its file
        pass
    path = class_file(cls)
    if path is None:
        raise RuntimeError(f"cannot locate the source file of trainer {cls.__name__} (module {mod_name})")
    return ("import importlib.util as _ilu\nimport sys as _sys\n"
            f"_path = {str(path)!r}\n"
            f"_sys.path.insert(0, {str(path.parent)!r})\n"
            "try:\n"
            f"    _spec = _ilu.spec_from_file_location({'_nnunet_ext_variant_base_' + cls.__name__!r}, _path)\n"
            "    _mod = _ilu.module_from_spec(_spec)\n"
            "    _spec.loader.exec_module(_mod)\n"
            "finally:\n"
            f"    _sys.path.remove({str(path.parent)!r})\n"
            f"{alias} = _mod.{cls.__name__}\n")


def _same_file(mod, cls) -> bool:
    try:
        other = getattr(mod, cls.__name__, None)
        return other is not None and Path(inspect.getfile(other)).resolve() == Path(inspect.getfile(cls)).resolve()
    except (TypeError, OSError):
        return False


def variant_source(base_cls, name: str, schedule: dict, mixins: Sequence[type] = (ScheduleMixin,),
                   generated_by: str = "nnunet_ext", doc: Optional[str] = None) -> str:
    """Python source of a module holding ``class name(*mixins, base_cls)`` with ``schedule``.

    Mixins the base already has are left out (listing them again would make no consistent MRO); a ``schedule`` of
    the base is kept where ``schedule`` does not set the key. Each mixin is imported from its module, the base
    as :func:`import_lines` says.
    """
    mixins = [m for m in mixins if not issubclass(base_cls, m)]
    full = {**dict(getattr(base_cls, "schedule", {}) or {}), **dict(schedule)}
    body = f"    \"\"\"{doc}\"\"\"\n" if doc else ""
    return (f'"""Generated by {generated_by}: do not edit (rewritten on every run)."""\n'
            + "".join(f"from {m.__module__} import {m.__name__}\n" for m in mixins)
            + import_lines(base_cls, "_Base")
            + f"\n\nclass {name}({', '.join([m.__name__ for m in mixins] + ['_Base'])}):\n"
            + body + f"    schedule = {full!r}\n")


def write_variant_module(path, source: str) -> bool:
    """Write ``source`` to ``path`` (atomically) unless it holds exactly that already; True when it was written."""
    path = Path(path)
    if path.is_file() and path.read_text() == source:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, source)
    return True
