"""Where things are: nnunet_ext's trainers, nnU-Net's folders and datasets, console scripts; checks of the
paths a verb reads and writes (made before any heavy work, each failure one line).

* ``trainers_path``, ``ext_trainer_env``, ``ext_trainer_status``: the trainers folder on ``nnUNet_extTrainer``.
* ``nnunet_folder``: ``$nnUNet_raw`` / ``$nnUNet_preprocessed`` / ``$nnUNet_results``, or a one-line error.
* ``dataset_id``, ``parse_dataset_name``, ``dataset_folder_name``, ``resolve_dataset_name``: ``DatasetXXX_Name``.
* ``PreprocessedConfiguration``: one configuration of a dataset's preprocessed data.
* ``console_script``: a command of this environment (``nnUNetv2_train``, ``nnunet-ext``).
* ``link_or_copy``: a file placed at a second path without copying where the file system allows.
* ``require_input_folder``, ``require_output_folder``, ``require_output_file``: a verb's paths, checked first.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, Sequence, Tuple

from nnunet_ext.atomic_io import replace_atomic
from nnunet_ext.errors import UserError


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
        raise (error or UserError)(f"${var} is not set (nnU-Net's folders: nnUNet_raw, nnUNet_preprocessed, "
                                   f"nnUNet_results)")
    return Path(v)


DATASET_NAME_RE = re.compile(r"Dataset(\d+)_(.+)")


def parse_dataset_name(name: str) -> Tuple[int, str]:
    """``(XXX, "Name")`` of nnU-Net's dataset folder name ``DatasetXXX_Name`` (``ValueError`` for another name)."""
    m = DATASET_NAME_RE.fullmatch(str(name))
    if m is None:
        raise ValueError(f"{name!r} is not an nnU-Net dataset name (DatasetXXX_Name)")
    return int(m.group(1)), m.group(2)


def dataset_id(name: str) -> int:
    """The id XXX of ``DatasetXXX_Name``."""
    return parse_dataset_name(name)[0]


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name`` (three digits at least, as nnU-Net names its folders)."""
    return f"Dataset{int(dataset_id):03d}_{name}"


def resolve_dataset_name(dataset, error=None, require: Sequence[str] = ()) -> str:
    """``DatasetXXX_Name`` for an id (``4``, ``"004"``) or a name, looked up in $nnUNet_results,
    $nnUNet_preprocessed and $nnUNet_raw. Unknown or ambiguous: raises ``error`` (default ``UserError``);
    so does an unset variable among ``require`` (e.g. ``("nnUNet_preprocessed",)``: where the verb works)."""
    error = error or UserError
    for var in require:
        nnunet_folder(var, error)
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
        where = ", ".join(f"{v}={os.environ.get(v)}" for v in ("nnUNet_results", "nnUNet_preprocessed", "nnUNet_raw"))
        raise error(f"no dataset with id {int(dataset)} ({prefix}*) in $nnUNet_results, $nnUNet_preprocessed or "
                    f"$nnUNet_raw ({where})")
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


def link_or_copy(src, dst, symlink: bool = False, replace: bool = False) -> None:
    """Put ``src`` at ``dst`` without copying where the file system allows, atomically.

    A hard link (``symlink``: a symbolic link to ``src`` as given), else a copy (across file systems, or where
    links are not allowed). An existing ``dst`` is kept, unless ``replace``: then it is replaced when it is not
    already that link."""
    dst = Path(dst)
    if os.path.lexists(dst):
        if not replace or _links_to(dst, src, symlink):
            return

    def place(tmp):
        os.unlink(tmp)
        try:
            os.symlink(src, tmp) if symlink else os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
    replace_atomic(dst, place, umask_mode=False)


def _links_to(dst: Path, src, symlink: bool) -> bool:
    if symlink:
        return dst.is_symlink() and os.readlink(dst) == str(src)
    try:
        return not dst.is_symlink() and os.path.samefile(dst, src)
    except OSError:
        return False


def console_script(name: str) -> str:
    """The console script ``name`` of the running interpreter's environment (``nnUNetv2_train``,
    ``nnunet-ext``), else the one on PATH, else ``name`` itself."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else (shutil.which(name) or name)


# ------------------------------------------------------------------------------------------------ checks
def require_input_folder(path, what: str = "input folder", error=None) -> Path:
    """``path`` as an absolute path if it is a folder; else ``error`` (default ``UserError``), one line."""
    p = Path(path).expanduser().absolute()
    if not p.is_dir():
        raise (error or UserError)(f"{what} {path} " + ("is a file, not a folder" if p.exists() else
                                                        "does not exist"))
    return p


def require_output_folder(path, what: str = "output folder", error=None) -> Path:
    """``path`` as an absolute path if a verb can write its results there: a folder, or a path where one can be
    created (the nearest existing folder above it is writable). A file at ``path`` or above it, or a folder
    without write permission, raises ``error`` (default ``UserError``) with one line. Creates nothing."""
    error = error or UserError
    p = Path(path).expanduser().absolute()
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise error(f"{what} {path} is a file, not a folder: name a folder" if existing == p else
                    f"{what} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"{what} {path}: no permission to write in {existing}")
    return p


def require_output_file(path, what: str = "output file", error=None) -> Path:
    """``path`` as an absolute path if a verb can write this file: not a folder, its folder writable or creatable,
    an existing file writable. Otherwise ``error`` (default ``UserError``), one line. Creates nothing."""
    error = error or UserError
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    require_output_folder(p.parent, f"the folder of {what} {path}", error)
    if p.exists() and not os.access(p, os.W_OK):
        raise error(f"{what} {path}: no permission to write it")
    return p


def ext_trainer_folders() -> list:
    """The folders on ``nnUNet_extTrainer``, in order (where nnU-Net looks for trainers after its own)."""
    return [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]


def ext_trainer_check() -> Tuple[bool, str]:
    """``(ok, line)``: whether nnU-Net will find nnunet_ext's trainers (their folder is on ``nnUNet_extTrainer``),
    and one line that says so, or says what to run."""
    ours = trainers_path()
    current = ext_trainer_folders()
    if not current:
        return False, ("nnUNet_extTrainer is not set, so nnU-Net will not find nnunet_ext's trainers: run "
                       "export nnUNet_extTrainer=\"$(nnunet-ext trainers-path)\" (in a checkout set up by "
                       "scripts/setup_env.sh: source scripts/env.sh)")
    if not any(os.path.realpath(p) == os.path.realpath(ours) for p in current):
        return False, (f"nnUNet_extTrainer={os.pathsep.join(current)} does not include nnunet_ext's trainers "
                       f"({ours}): run export nnUNet_extTrainer=\"$(nnunet-ext trainers-path){os.pathsep}"
                       f"$nnUNet_extTrainer\"")
    return True, f"nnUNet_extTrainer includes nnunet_ext's trainers ({ours})"


def find_trainer_class(name: str):
    """The trainer class ``nnUNetv2_train -tr name`` would use (nnU-Net's own trainers, then the folders on
    ``nnUNet_extTrainer``), or None; nnU-Net's search messages are not shown."""
    import contextlib
    import io
    import warnings

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation chatter of the trainer modules nnU-Net imports while it searches
        try:
            return recursive_find_trainer_class_by_name(name)
        except RuntimeError:
            return None


def class_file(cls):
    """The file that defines ``cls``; also for classes nnU-Net imported from an ``nnUNet_extTrainer`` folder
    (nnU-Net removes those modules from ``sys.modules`` again, so ``inspect.getfile`` fails for them)."""
    import inspect

    try:
        return Path(inspect.getfile(cls)).resolve()
    except (TypeError, OSError):
        pass
    rel = Path(*cls.__module__.split("."))
    for folder in ext_trainer_folders() + [trainers_path()]:  # nnunet_ext's trainers/ even if the variable is unset
        for cand in (Path(folder) / rel.with_suffix(".py"), Path(folder) / rel / "__init__.py"):
            if folder and cand.is_file():
                return cand.resolve()
    for v in vars(cls).values():  # any function defined in the class body knows its file
        code = getattr(getattr(v, "__func__", v), "__code__", None)
        if code is not None and os.path.isfile(code.co_filename):
            return Path(code.co_filename).resolve()
    return None


_TRAINER_CLASS_RE = re.compile(r"^class\s+(nnUNetTrainer\w*)\s*[(:]", re.MULTILINE)


def trainer_files(folders: Sequence, nnunet: bool = False) -> Dict[str, str]:
    """``{trainer class name: file}`` of the ``nnUNetTrainer*`` classes defined in the Python files under
    ``folders`` (``nnunet``: nnU-Net's own trainers first), read as text (nothing is imported); the first
    definition of a name wins, as in nnU-Net's search."""
    roots = [Path(f) for f in folders if f]
    if nnunet:
        import nnunetv2
        roots.insert(0, Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer")
    found: Dict[str, str] = {}
    for root in roots:
        for f in sorted(root.rglob("*.py")) if root.is_dir() else []:
            try:
                text = f.read_text(errors="ignore")
            except OSError:
                continue
            for m in _TRAINER_CLASS_RE.finditer(text):
                found.setdefault(m.group(1), str(f))
    return found


def ext_trainer_status() -> str:
    """One human-readable line: is nnunet_ext's trainer folder on ``nnUNet_extTrainer``? (:func:`ext_trainer_check`)"""
    return ext_trainer_check()[1]


# ------------------------------------------------------------------------------------ renamed names
_DEPRECATION_SHOWN: set = set()


def deprecation_line(old: str, new: str, what: str) -> None:
    """Print one line to stderr, once per process and old name: ``nnunet_ext: <what> OLD is deprecated, use NEW``."""
    if old not in _DEPRECATION_SHOWN:
        _DEPRECATION_SHOWN.add(old)
        print(f"nnunet_ext: {what} {old} is deprecated, use {new} (the old name still works)", file=sys.stderr)


def env_var(name: str, default: str | None = None, old: str | None = None) -> str | None:
    """The environment variable ``name`` (``nnUNet_ext_*``, nnU-Net's casing), else the old spelling ``old``
    (default: ``name`` in upper case, ``NNUNET_EXT_*``) with one deprecation line, else ``default``."""
    value = os.environ.get(name)
    if value is not None:
        return value
    old = old or name.upper()
    if old != name and os.environ.get(old) is not None:
        deprecation_line(old, name, "environment variable")
        return os.environ[old]
    return default


def debug_enabled() -> bool:
    """True when ``nnUNet_ext_debug`` (old name ``NNUNET_EXT_DEBUG``) is set to a true value (1, true, yes): an
    expected error then shows its traceback (as ``nnunet-ext --debug``)."""
    return (env_var("nnUNet_ext_debug") or "").strip().lower() in ("1", "true", "yes")


class RenamedTrainer:
    """Mixin of an old trainer name: ``class OldName(RenamedTrainer, NewName)`` is NewName with its settings
    under the old class name (nnU-Net finds trainers by class name, and results folders and checkpoints carry
    it), and prints one deprecation line naming NewName when created."""

    def __init__(self, *args, **kwargs):
        old = next(c for c in type(self).__mro__ if RenamedTrainer in c.__bases__)
        new = old.__bases__[old.__bases__.index(RenamedTrainer) + 1]
        deprecation_line(old.__name__, new.__name__, "trainer")
        super().__init__(*args, **kwargs)
