"""Where nnunet_ext's trainers live, and checks of nnU-Net's environment variables."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Dict


def trainers_path() -> str:
    """The folder to put on ``nnUNet_extTrainer`` (the installed ``nnunet_ext_trainers`` package, or
    ``trainers/`` of a source checkout)."""
    spec = importlib.util.find_spec("nnunet_ext_trainers")
    if spec is not None and spec.submodule_search_locations:
        return str(Path(list(spec.submodule_search_locations)[0]).resolve())
    src = Path(__file__).resolve().parent.parent / "trainers"
    if src.is_dir():
        return str(src)
    raise RuntimeError("nnunet_ext's trainers folder was not found: reinstall with `pip install .` from the "
                       "nnunet_ext source folder")


def ext_trainer_env(extra_dirs=(), base: Dict[str, str] | None = None) -> Dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) whose ``nnUNet_extTrainer`` lists ``extra_dirs``,
    then nnunet_ext's trainers, then whatever it held before (no duplicates)."""
    env = dict(os.environ if base is None else base)
    parts = [str(d) for d in extra_dirs] + [trainers_path()] + \
        [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    env["nnUNet_extTrainer"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def nnunet_folder(var: str, error=None) -> Path:
    """The folder in nnU-Net's environment variable ``var`` (nnUNet_raw, nnUNet_preprocessed, nnUNet_results).

    Unset: raises ``error`` (a ``nnunet_ext.errors.UserError`` subclass; default ``UserError``) naming the variable.
    """
    v = os.environ.get(var)
    if not v:
        from nnunet_ext.errors import UserError
        raise (error or UserError)(f"${var} is not set (nnU-Net's folders: nnUNet_raw, nnUNet_preprocessed, "
                                   f"nnUNet_results)")
    return Path(v)


def resolve_dataset_name(dataset, error=None) -> str:
    """``DatasetXXX_Name`` for an id (``4``, ``"004"``) or a name, looked up in $nnUNet_results,
    $nnUNet_preprocessed and $nnUNet_raw. Unknown or ambiguous: raises ``error`` (default ``UserError``)."""
    from nnunet_ext.errors import UserError
    error = error or UserError
    dataset = str(dataset)
    if dataset.startswith("Dataset"):
        return dataset
    if not dataset.isdigit():
        raise error(f"-d must be a dataset id (e.g. 4) or name (Dataset004_Hippocampus), got {dataset!r}")
    prefix = f"Dataset{int(dataset):03d}_"
    found = set()
    for var in ("nnUNet_results", "nnUNet_preprocessed", "nnUNet_raw"):
        root = os.environ.get(var)
        if root and os.path.isdir(root):
            found.update(d for d in os.listdir(root) if d.startswith(prefix) and os.path.isdir(os.path.join(root, d)))
    if not found:
        raise error(f"no dataset with id {int(dataset)} ({prefix}*) in $nnUNet_results, $nnUNet_preprocessed or "
                    f"$nnUNet_raw ({', '.join(f'{v}={os.environ.get(v)}' for v in ('nnUNet_results', 'nnUNet_preprocessed', 'nnUNet_raw'))})")
    if len(found) > 1:
        raise error(f"dataset id {int(dataset)} is ambiguous: {', '.join(sorted(found))}")
    return found.pop()


class PreprocessedConfiguration:
    """One configuration of a dataset's preprocessed data: ``name`` (DatasetXXX_Name), ``folder`` (its
    $nnUNet_preprocessed folder), ``plans_manager``, ``configuration_manager``, ``data_dir`` and ``cases``.

    Missing plans, configuration or preprocessed cases raise ``error`` (default ``UserError``) naming the
    nnU-Net command that makes them."""

    def __init__(self, dataset, configuration: str, plans: str = "nnUNetPlans", error=None):
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunet_ext.errors import UserError
        error = error or UserError
        self.name = resolve_dataset_name(dataset, error)
        self.folder = nnunet_folder("nnUNet_preprocessed", error) / self.name
        plans_file = self.folder / f"{plans}.json"
        if not plans_file.is_file():
            raise error(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset} -c {configuration} "
                        f"first")
        self.plans_manager = PlansManager(load_json(str(plans_file)))
        if configuration not in self.plans_manager.available_configurations:
            raise error(f"configuration {configuration!r} is not in {plans_file} "
                        f"({', '.join(self.plans_manager.available_configurations)})")
        self.configuration_manager = self.plans_manager.get_configuration(configuration)
        self.data_dir = self.folder / self.configuration_manager.data_identifier
        self.cases = sorted(infer_dataset_class(str(self.data_dir)).get_identifiers(str(self.data_dir))) \
            if self.data_dir.is_dir() else []
        if not self.cases:
            raise error(f"no preprocessed cases in {self.data_dir}: run nnUNetv2_plan_and_preprocess -d {dataset} "
                        f"-c {configuration} first")


def link_or_copy(src, dst) -> None:
    """Hard-link ``src`` to ``dst`` (a copy across file systems), atomically; an existing ``dst`` is kept."""
    import shutil

    dst = Path(dst)
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def ext_trainer_status() -> str:
    """One human-readable line: is nnunet_ext's trainer folder on ``nnUNet_extTrainer``?"""
    ours = trainers_path()
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if not current:
        return ("nnUNet_extTrainer is not set: nnU-Net will not find nnunet_ext's trainers. Run\n"
                "  export nnUNet_extTrainer=\"$(nnunet-ext trainers-path)\"\n"
                "or, in a checkout set up by scripts/setup_env.sh (demo.sh, test.sh), activate ./.venv and set it:\n"
                "  source scripts/env.sh")
    if not any(os.path.realpath(p) == os.path.realpath(ours) for p in current):
        return (f"nnUNet_extTrainer={os.pathsep.join(current)} does not include nnunet_ext's trainers ({ours}). "
                f"Run\n  export nnUNet_extTrainer=\"$(nnunet-ext trainers-path){os.pathsep}$nnUNet_extTrainer\"")
    return f"nnUNet_extTrainer includes nnunet_ext's trainers ({ours})"
