"""The thin trainer variants the benchmark trains: ``<Trainer>__bench``.

``nnunet-ext benchmark`` writes one small module per trainer into ``OUT/trainers/`` (put on
``nnUNet_extTrainer`` for its nnU-Net subprocesses), e.g.::

    class nnUNetTrainerFD__bench(BenchMixin, ScheduleMixin, SeedMixin, nnUNetTrainerFD):
        schedule = {"num_epochs": 6, "num_iterations_per_epoch": 250, ...}

* ``ScheduleMixin`` (nnunet_ext.core.schedule): the iteration budget, the same for every trainer.
* ``SeedMixin`` (nnunet_ext.core.seeding): the seed, from ``$nnUNet_ext_seed`` (set per run).
* ``BenchMixin``: skips nnU-Net's final validation (the benchmark predicts the held-out cases itself with
  ``nnUNetv2_predict``).

The source is written by :func:`nnunet_ext.core.schedule.variant_source`, the generator the demo uses too.
"""
from __future__ import annotations

from pathlib import Path

from nnunet_ext.core.schedule import NoFinalValidationMixin, ScheduleMixin, write_variant_module
from nnunet_ext.core.schedule import variant_source as schedule_variant
from nnunet_ext.core.seeding import SeedMixin
from nnunet_ext.paths import class_file, find_trainer_class

__all__ = ["BenchMixin", "VARIANT_SUFFIX", "variant_name", "variant_source", "write_variant", "find_trainer_class",
           "class_file"]

VARIANT_SUFFIX = "__bench"


class BenchMixin(NoFinalValidationMixin):
    """Benchmark variant behaviour (see the module doc)."""

    #: the benchmark predicts the test cases itself; nnU-Net's validation would do it a second time
    skip_final_validation: bool = True
    skip_final_validation_reason = ("nnunet-ext benchmark: final validation skipped (the benchmark predicts the "
                                    "held-out cases with nnUNetv2_predict)")


def variant_name(trainer: str) -> str:
    return trainer + VARIANT_SUFFIX


def variant_source(trainer_cls, schedule: dict) -> str:
    """Python source of the module holding ``<Trainer>__bench`` (budget ``schedule``, seed from the environment)."""
    return schedule_variant(trainer_cls, variant_name(trainer_cls.__name__), schedule,
                            mixins=(BenchMixin, ScheduleMixin, SeedMixin), generated_by="nnunet-ext benchmark",
                            doc=f"{trainer_cls.__name__} with the benchmark's budget; seed from $nnUNet_ext_seed.")


def write_variant(folder: Path, trainer_cls, schedule: dict) -> str:
    """Write (or rewrite, when it changed) ``folder/bench_<Trainer>.py``; returns the variant's name."""
    write_variant_module(Path(folder) / f"bench_{trainer_cls.__name__}.py", variant_source(trainer_cls, schedule))
    return variant_name(trainer_cls.__name__)
