"""Shared fixtures: nnU-Net folders in a temp dir, synthetic datasets planned and preprocessed once
per session with the real ``nnUNetv2_plan_and_preprocess``, and a runner for nnU-Net's CLIs."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TEST_TRAINERS = Path(__file__).resolve().parent / "ext_trainers"
DS3D, DS2D = 501, 502
#: threads of every process the tests start: 2 OpenMP threads that sleep instead of spinning while they wait
THREADS_ENV = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


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
    """Environment for nnU-Net subprocesses: our folders, 1 worker, test trainers + our trainers, 2 OpenMP threads
    that sleep instead of spinning while they wait (a training's main process and its data worker share 2 cores:
    spinning threads cost a test run about 20% of its time, measured on a 3d training here)."""
    from nnunet_ext.paths import ext_trainer_env

    env = ext_trainer_env([TEST_TRAINERS])
    env.update(nnUNet_raw=str(nnunet_dirs["raw"]), nnUNet_preprocessed=str(nnunet_dirs["preprocessed"]),
               nnUNet_results=str(nnunet_dirs["results"]), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1",
               nnUNet_compile="false", PYTHONWARNINGS="ignore", **THREADS_ENV)
    return env


_FORKSERVER = {}


def _forkserver():
    """The session's fork server (``tests/forkserver.py``), started at first use; None when turned off with
    ``nnUNet_ext_test_forkserver=0`` (every run is then a plain subprocess)."""
    from nnunet_ext.paths import env_var
    if env_var("nnUNet_ext_test_forkserver", "1") == "0":
        return None
    if "client" not in _FORKSERVER:
        import atexit
        import tempfile

        from forkserver import ForkServerClient

        folder = tempfile.mkdtemp(prefix="nnunet_ext_forkserver_")
        path = os.path.join(folder, "socket")
        env = dict(os.environ, PYTHONWARNINGS="ignore", MPLBACKEND="Agg", **THREADS_ENV)
        server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("forkserver.py")), path], env=env,
                                  stdout=subprocess.PIPE, text=True)
        if server.stdout.readline().strip() != "forkserver ready":
            raise RuntimeError("the tests' fork server did not start")

        def stop():
            server.terminate()
            server.wait(10)
            shutil.rmtree(folder, ignore_errors=True)

        atexit.register(stop)
        _FORKSERVER["client"] = ForkServerClient(path)
    return _FORKSERVER["client"]


def run_cli(name: str, args, env, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run one of nnU-Net's (or our) console scripts with ``env``; on failure show its output.

    The run is a new process forked from the session's fork server (``tests/forkserver.py``: torch and the
    other heavy modules already imported, the script's own entry point called), or a plain subprocess with
    ``nnUNet_ext_test_forkserver=0``. A run past ``timeout`` gets SIGABRT first (``PYTHONFAULTHANDLER`` makes it
    print every thread's stack), then its whole process group is killed, and the error shows where it was stuck."""
    import tempfile

    args = [str(a) for a in args]
    env = dict(env, PYTHONFAULTHANDLER="1")
    server = _forkserver()
    with tempfile.TemporaryDirectory(prefix="run_cli_") as tmp:
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        if server is not None:
            pid, conn, reader = server.start(name, args, env, out_path, err_path)
            code = server.wait(conn, reader, timeout)
        else:
            with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
                proc = subprocess.Popen([_bin(name), *args], env=env, stdout=out_f, stderr=err_f,
                                        start_new_session=True)
                pid = proc.pid
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    code = None
        if code is None:
            _abort_and_kill(pid)
            if server is not None:
                conn.close()
            else:
                proc.wait()
        out, err = Path(out_path).read_text(errors="replace"), Path(err_path).read_text(errors="replace")
    if code is None:
        raise AssertionError(f"{name} {' '.join(args)} still running after {timeout} s; stacks at SIGABRT:\n"
                             f"{out[-3000:]}\n{err[-12000:]}")
    done = subprocess.CompletedProcess([name, *args], code, out, err)
    if check and code != 0:
        raise AssertionError(f"{name} {' '.join(args)} failed ({code}):\n{out[-4000:]}\n{err[-4000:]}")
    return done


def _abort_and_kill(pid: int) -> None:
    """SIGABRT to a stuck run (its stacks go to its stderr), then SIGKILL to its process group."""
    import time

    try:
        os.kill(pid, signal.SIGABRT)
        time.sleep(5)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(1)


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
