"""Shared fixtures: nnU-Net folders in a temp dir, synthetic datasets planned and preprocessed once
per session with the real ``nnUNetv2_plan_and_preprocess``, and a runner for nnU-Net's CLIs."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TEST_TRAINERS = Path(__file__).resolve().parent / "ext_trainers"
DS3D, DS2D = 501, 502


def _bin(name: str) -> str:
    """A console script of the running interpreter's environment (falls back to PATH)."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else (shutil.which(name) or name)


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    d = {k: root / k for k in ("raw", "preprocessed", "results")}
    for p in d.values():
        p.mkdir()
    return d


@pytest.fixture(scope="session")
def nnunet_env(nnunet_dirs):
    """Environment for nnU-Net subprocesses: our folders, 1 worker, test trainers + our trainers."""
    from nnunet_ext.paths import ext_trainer_env

    env = ext_trainer_env([TEST_TRAINERS])
    env.update(nnUNet_raw=str(nnunet_dirs["raw"]), nnUNet_preprocessed=str(nnunet_dirs["preprocessed"]),
               nnUNet_results=str(nnunet_dirs["results"]), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1",
               nnUNet_compile="false", OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    return env


def run_cli(name: str, args, env, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run one of nnU-Net's (or our) console scripts; on failure show its output."""
    proc = subprocess.run([_bin(name), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def dataset3d(nnunet_dirs, nnunet_env):
    """Synthetic anisotropic 3D dataset (12 train, 3 test cases), planned and preprocessed (2d, 3d_fullres)."""
    from nnunet_ext.core.synthetic import generate_dataset_3d

    folder = generate_dataset_3d(str(nnunet_dirs["raw"]), DS3D, num_train=12, num_test=3, seed=1)
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS3D, "-c", "3d_fullres", "-npfp", 1, "-np", 1,
                                             "--verify_dataset_integrity"], nnunet_env)
    return {"id": DS3D, "raw": Path(folder), "name": Path(folder).name}


@pytest.fixture(scope="session")
def dataset2d(nnunet_dirs, nnunet_env):
    """Synthetic 2D RGB PNG dataset (10 train), planned and preprocessed (2d)."""
    from nnunet_ext.core.synthetic import generate_dataset_2d

    folder = generate_dataset_2d(str(nnunet_dirs["raw"]), DS2D, num_train=10, num_test=2, seed=2)
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS2D, "-c", "2d", "-npfp", 1, "-np", 1], nnunet_env)
    return {"id": DS2D, "raw": Path(folder), "name": Path(folder).name}


def foreground_dice_2d(pred_dir: Path, labels_dir: Path, labels=(0, 1, 2)):
    """Per case (PNG label maps): foreground Dice of the prediction in ``pred_dir`` and the Dice a random labelling
    with the true foreground share would get (its expected value = that share). Checks shapes and label values."""
    import numpy as np
    from PIL import Image

    dice, chance = [], []
    for ref_path in sorted(Path(labels_dir).glob("*.png")):
        pred, ref = np.asarray(Image.open(Path(pred_dir) / ref_path.name)), np.asarray(Image.open(ref_path))
        assert pred.shape == ref.shape and set(np.unique(pred)) <= set(labels), ref_path.name
        fg_p, fg_r = pred > 0, ref > 0
        dice.append(2 * (fg_p & fg_r).sum() / max(fg_p.sum() + fg_r.sum(), 1))
        chance.append(fg_r.mean())
    assert dice, f"no reference labels in {labels_dir}"
    return dice, chance
