"""One naming rule (docs/developers.md, "Names"): numbers in trainer variant names, and environment variables.

* Every trainer of trainers/*.py follows the rule: each part of the name after the method's trainer that holds a
  digit is letters then a number written ``0`` / ``[1-9][0-9]*``, with ``p`` for a decimal point and no trailing
  zero (``lambda0p01``, ``lambda1p5``, ``enc0p4``, ``keep200``, ``vitb8``).
* Every old name (``RenamedTrainer``) is still found by nnU-Net's own trainer search, is a subclass of its new
  name in the same file (same settings), and prints one deprecation line naming the new name when created.
* ``nnunet_ext.paths.env_var``: ``nnUNet_ext_*`` first, then the old ``NNUNET_EXT_*`` with one deprecation line;
  ``scripts/env.sh`` does the same for the virtual environment's folder.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess

import pytest

from conftest import REPO

NUMBER = r"(?:0|[1-9][0-9]*)(?:p[0-9]*[1-9])?"
PART_RE = re.compile(rf"[A-Za-z]+{NUMBER}")
#: the renames of the rule's introduction: old name -> new name
RENAMED = {
    "nnUNetTrainerFD_lambda0010": "nnUNetTrainerFD_lambda0p01",
    "nnUNetTrainerFD_lambda0050": "nnUNetTrainerFD_lambda0p05",
    "nnUNetTrainerFD_lambda0100": "nnUNetTrainerFD_lambda0p1",
    "nnUNetTrainerS2S2_enc04": "nnUNetTrainerS2S2_enc0p4",
}


def _trainer_classes() -> dict:
    """{name: class} of every nnUNetTrainer* class defined in nnunet_ext's trainers folder."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.paths import trainer_files, trainers_path

    folder = trainers_path()
    found = {}
    for name, path in trainer_files([folder]).items():
        spec = importlib.util.spec_from_file_location(f"_naming_{os.path.basename(path)[:-3]}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cls = getattr(mod, name)
        assert inspect.isclass(cls) and issubclass(cls, nnUNetTrainer), name
        found[name] = cls
    return found


def _is_renamed(cls) -> bool:
    from nnunet_ext.paths import RenamedTrainer
    return RenamedTrainer in cls.__bases__


#: method names inside a variant name are names, not settings (``nnUNetTrainerFLARE22_noS2S2``)
METHODS_RE = re.compile(r"S2S2|FLARE22")


def follows_rule(name: str) -> bool:
    """The rule on the variant parts of ``name`` (everything after the first '_'; method names left out)."""
    _, _, variant = name.partition("_")
    parts = [METHODS_RE.sub("", part) for part in variant.split("_")]
    return all(PART_RE.fullmatch(part) for part in parts if re.search(r"\d", part))


@pytest.mark.parametrize("name,ok", [
    ("nnUNetTrainerFD_lambda0p01", True), ("nnUNetTrainerCPS_lambda1p5", True), ("nnUNetTrainerS2S2_enc0p4", True),
    ("nnUNetTrainerCPS_UIF_keep200", True), ("nnUNetTrainerSTEGO_vitb8", True), ("nnUNetTrainerS2S2FD", True),
    ("nnUNetTrainerFLARE22_noS2S2", True),
    ("nnUNetTrainerFD_lambda0010", False), ("nnUNetTrainerS2S2_enc04", False), ("nnUNetTrainerFD_lambda0p10", False),
    ("nnUNetTrainerFD_lambda01", False), ("nnUNetTrainerFD_lambda0.1", False)])
def test_rule(name, ok):
    assert follows_rule(name) == ok


def test_every_trainer_name_follows_the_rule():
    classes = _trainer_classes()
    assert "nnUNetTrainerFD_lambda0p01" in classes and "nnUNetTrainerCPS_lambda1p5" in classes
    current = [n for n, c in classes.items() if not _is_renamed(c)]
    bad = [n for n in current if not follows_rule(n)]
    assert not bad, f"trainer names against the naming rule of docs/developers.md: {bad}"
    old = {n: c.__bases__[-1].__name__ for n, c in classes.items() if _is_renamed(c)}
    assert old == RENAMED, "each old name derives from its new name (class OldName(RenamedTrainer, NewName))"


@pytest.mark.parametrize("old,new", sorted(RENAMED.items()))
def test_old_names_still_work_and_warn(old, new, monkeypatch, capsys):
    from nnunet_ext import paths

    monkeypatch.setenv("nnUNet_extTrainer", paths.trainers_path())
    old_cls, new_cls = paths.find_trainer_class(old), paths.find_trainer_class(new)
    assert old_cls is not None and new_cls is not None, "nnU-Net's trainer search must find both names"
    # (each search imports the trainer modules anew: classes of two searches are compared by name)
    assert old_cls.__name__ == old and old_cls.__bases__[-1].__name__ == new and _is_renamed(old_cls)
    assert paths.class_file(old_cls) == paths.class_file(new_cls)  # defined beside its new name
    settings = {k: getattr(new_cls, k) for k in dir(new_cls) if re.match(r"(fd|cps|uif|s2s2|stego|gms)_", k)}
    assert settings and all(getattr(old_cls, k) == v for k, v in settings.items())
    monkeypatch.setattr(paths, "_DEPRECATION_SHOWN", set())
    # creation prints the line, then goes on into nnU-Net's __init__ (which needs plans: here none are given)
    with pytest.raises(TypeError, match="plans"):
        old_cls()
    err = capsys.readouterr().err
    assert f"nnunet_ext: trainer {old} is deprecated, use {new} (the old name still works)" in err
    with pytest.raises(TypeError):
        old_cls()
    assert "deprecated" not in capsys.readouterr().err  # once per process
    with pytest.raises(TypeError):
        new_cls()
    assert "deprecated" not in capsys.readouterr().err


def test_env_var_new_name_first_old_name_with_one_line(monkeypatch, capsys):
    from nnunet_ext import paths

    monkeypatch.setattr(paths, "_DEPRECATION_SHOWN", set())
    for var in ("nnUNet_ext_debug", "NNUNET_EXT_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    assert paths.env_var("nnUNet_ext_debug") is None and paths.env_var("nnUNet_ext_debug", "0") == "0"
    monkeypatch.setenv("NNUNET_EXT_DEBUG", "1")
    assert paths.env_var("nnUNet_ext_debug") == "1"
    assert paths.env_var("nnUNet_ext_debug") == "1"
    err = capsys.readouterr().err.splitlines()
    assert err == ["nnunet_ext: environment variable NNUNET_EXT_DEBUG is deprecated, use nnUNet_ext_debug "
                   "(the old name still works)"]
    monkeypatch.setenv("nnUNet_ext_debug", "0")
    assert paths.env_var("nnUNet_ext_debug") == "0"  # the new name wins


def test_debug_switch_reads_both_names(monkeypatch):
    from nnunet_ext.paths import debug_enabled

    for var in ("nnUNet_ext_debug", "NNUNET_EXT_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    assert not debug_enabled()
    monkeypatch.setenv("NNUNET_EXT_DEBUG", "yes")
    assert debug_enabled()
    monkeypatch.setenv("nnUNet_ext_debug", "1")
    monkeypatch.delenv("NNUNET_EXT_DEBUG")
    assert debug_enabled()


@pytest.mark.parametrize("var,warns", [("nnUNet_ext_venv", False), ("NNUNET_EXT_VENV", True)])
def test_env_sh_venv_variable(tmp_path, var, warns):
    venv = tmp_path / "no_venv_here"
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_ext_venv", "NNUNET_EXT_VENV")}
    env[var] = str(venv)
    proc = subprocess.run(["bash", "-c", f"source '{REPO / 'scripts' / 'env.sh'}'"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert f"no virtual environment at {venv}" in proc.stderr
    assert ("NNUNET_EXT_VENV is deprecated, use nnUNet_ext_venv" in proc.stderr) == warns
