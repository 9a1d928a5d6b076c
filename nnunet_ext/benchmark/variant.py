"""The thin trainer variants the benchmark trains: ``<Trainer>__bench``.

``nnunet-ext benchmark`` writes one small module per trainer into ``OUT/trainers/`` (put on
``nnUNet_extTrainer`` for its nnU-Net subprocesses), e.g.::

    class nnUNetTrainerFD__bench(BenchMixin, ScheduleMixin, SeedMixin, nnUNetTrainerFD):
        schedule = {"num_epochs": 6, "num_iterations_per_epoch": 250, ...}

* ``ScheduleMixin`` (nnunet_ext.core.schedule): the iteration budget, the same for every trainer.
* ``SeedMixin`` (nnunet_ext.core.seeding): the seed, from ``$nnUNet_ext_seed`` (set per run).
* ``BenchMixin``: skips nnU-Net's final validation (the benchmark predicts the held-out cases itself with
  ``nnUNetv2_predict``), and has a test hook that kills the benchmark after a given epoch.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import signal
from pathlib import Path

from nnunet_ext.atomic_io import write_text_atomic
from nnunet_ext.core.schedule import NoFinalValidationMixin

#: test hook: after this epoch (0-based, checkpoint written) the trainer kills its parent (the benchmark)
#: and itself with SIGKILL, as an external ``kill -9`` would. Set by the benchmark for one run only.
KILL_ENV = "nnUNet_ext_bench_kill_after_epoch"

VARIANT_SUFFIX = "__bench"


class BenchMixin(NoFinalValidationMixin):
    """Benchmark variant behaviour (see the module doc)."""

    #: the benchmark predicts the test cases itself; nnU-Net's validation would do it a second time
    skip_final_validation: bool = True
    skip_final_validation_reason = ("nnunet-ext benchmark: final validation skipped (the benchmark predicts the "
                                    "held-out cases with nnUNetv2_predict)")

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()
        kill = os.environ.get(KILL_ENV, "").strip()
        if kill and int(kill) == epoch:
            self.print_to_log_file(f"{KILL_ENV}={kill}: killing the benchmark and this run (test hook)")
            import multiprocessing
            for child in multiprocessing.active_children():  # nnU-Net's data workers would outlive us
                child.kill()
            try:
                os.kill(os.getppid(), signal.SIGKILL)
            finally:
                os.kill(os.getpid(), signal.SIGKILL)


def find_trainer_class(name: str):
    """The trainer class nnU-Net would use for ``name`` (its own trainers, then ``$nnUNet_extTrainer``)."""
    import contextlib
    import io

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return recursive_find_trainer_class_by_name(name)
        except RuntimeError:
            return None


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
            f"    _spec = _ilu.spec_from_file_location({'_nnunet_ext_bench_base_' + cls.__name__!r}, _path)\n"
            "    _mod = _ilu.module_from_spec(_spec)\n"
            "    _spec.loader.exec_module(_mod)\n"
            "finally:\n"
            f"    _sys.path.remove({str(path.parent)!r})\n"
            f"{alias} = _mod.{cls.__name__}\n")


def class_file(cls):
    """The file that defines ``cls``; also for classes nnU-Net imported from an ``nnUNet_extTrainer`` folder
    (nnU-Net removes those modules from ``sys.modules`` again, so ``inspect.getfile`` fails for them)."""
    try:
        return Path(inspect.getfile(cls)).resolve()
    except (TypeError, OSError):
        pass
    rel = Path(*cls.__module__.split("."))
    from nnunet_ext.paths import trainers_path  # nnunet_ext's trainers/ is searched even if the variable is unset
    for folder in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) + [trainers_path()]:
        for cand in (Path(folder) / rel.with_suffix(".py"), Path(folder) / rel / "__init__.py"):
            if folder and cand.is_file():
                return cand.resolve()
    for v in vars(cls).values():  # any function defined in the class body knows its file
        code = getattr(getattr(v, "__func__", v), "__code__", None)
        if code is not None and os.path.isfile(code.co_filename):
            return Path(code.co_filename).resolve()
    return None


def _same_file(mod, cls) -> bool:
    try:
        other = getattr(mod, cls.__name__, None)
        return other is not None and Path(inspect.getfile(other)).resolve() == Path(inspect.getfile(cls)).resolve()
    except (TypeError, OSError):
        return False


def variant_name(trainer: str) -> str:
    return trainer + VARIANT_SUFFIX


def variant_source(trainer_cls, schedule: dict) -> str:
    """Python source of the module holding ``<Trainer>__bench``.

    Mixins the trainer already has are not listed again (that would make no consistent MRO); a ``schedule``
    of the trainer is kept where the benchmark does not set the key.
    """
    from nnunet_ext.core.schedule import ScheduleMixin
    from nnunet_ext.core.seeding import SeedMixin

    name = variant_name(trainer_cls.__name__)
    mixins = [m for m in ("BenchMixin", "ScheduleMixin", "SeedMixin")
              if not issubclass(trainer_cls, {"BenchMixin": BenchMixin, "ScheduleMixin": ScheduleMixin,
                                              "SeedMixin": SeedMixin}[m])]
    full = {**dict(getattr(trainer_cls, "schedule", {}) or {}), **dict(schedule)}
    return ('"""Generated by nnunet-ext benchmark: do not edit (rewritten on every run)."""\n'
            "from nnunet_ext.benchmark.variant import BenchMixin\n"
            "from nnunet_ext.core.schedule import ScheduleMixin\n"
            "from nnunet_ext.core.seeding import SeedMixin\n"
            + import_lines(trainer_cls, "_Base") +
            f"\n\nclass {name}({', '.join(mixins + ['_Base'])}):\n"
            f"    \"\"\"{trainer_cls.__name__} with the benchmark's budget; seed from $nnUNet_ext_seed.\"\"\"\n"
            f"    schedule = {full!r}\n")


def write_variant(folder: Path, trainer_cls, schedule: dict) -> str:
    """Write (or rewrite, when it changed) ``folder/bench_<Trainer>.py``; returns the variant's name."""
    folder.mkdir(parents=True, exist_ok=True)
    src = variant_source(trainer_cls, schedule)
    path = folder / f"bench_{trainer_cls.__name__}.py"
    if not path.is_file() or path.read_text() != src:
        write_text_atomic(path, src)
    return variant_name(trainer_cls.__name__)
