"""One command that runs every trainer of nnunet_ext on the device and measures what only a GPU can show (issue #28).

    python benchmarks/gpu_check.py                      # on a CUDA machine: smoke + measure, about 8 min on one H100
    python benchmarks/gpu_check.py --device cpu --quick # the same code paths on tiny settings (the CI test runs it)
    python benchmarks/gpu_check.py --parts smoke --items cps,gms     # re-run only what failed

No network, no input beyond the repository: it writes small synthetic datasets (``nnunet_ext.core.synthetic``),
plans them with nnU-Net (``nnUNetv2_plan_and_preprocess``, ``nnunet-ext plan-gms / plan-c2f``) in a work folder,
and then runs two parts.

**smoke**: every trainer on the device for a few epochs x a few iterations with nnU-Net's own AMP (autocast and
GradScaler on CUDA): stock ``nnUNetTrainer``, FD and FD_allBlocks, CPS, CPS_UIF, CPS_cutmix, S2S2 (GIN stack),
S2S2FD, GMS
(TAESD from ``../shared/weights/taesd`` or ``.whl/taesd`` when present, else a tiny ``AutoencoderTiny`` the script
builds, saves and loads through ``nnunet_ext.core.vae``), STEGO (a tiny ViT saved the way tests/test_stego.py does)
with ``stego-crf`` on its probabilities, FLARE22 (CPS + UIF + FD + S2S2 on 3D), coarse-to-fine (``plan-c2f``, the
coarse and fine models, ``predict-c2f``), ``s2s2-tune`` a few steps and ``s2s2-generate --generator diffusion`` a
few copies, and on CUDA FD once more with nnU-Net's ``torch.compile``. Every training is stopped after its first
epoch (a planned error, checkpoint written) and continued with ``nnUNetv2_train --c``, then predicted with
``nnUNetv2_predict``. An item passes when every command succeeded, every logged loss is finite, the checkpoint was
written and reloaded, and the prediction's mean foreground Dice is above chance (the Dice of a random labelling
with the reference's class shares; required on the device, recorded but not required with ``--quick``, whose few
iterations cannot learn). Peak GPU memory (``torch.cuda.max_memory_allocated``) of every command is recorded.

**measure** (one item at a time, nothing else on the device): per-iteration time ratios FD / stock, FD_allBlocks /
stock, CPS / two stock trainers (each stock trainer on 2B labelled patches, CPS on B labelled + B unlabelled) and
S2S2 / stock, paired per batch (every trainer times the same batch, rotating who goes first; the same random
batches for all: the time of a step does not depend on the values), on a Hippocampus-shaped dataset (the MSD
Hippocampus field of view at 1 mm, nnU-Net's default plans: 2d and 3d_fullres) and on default-plans-shaped batches
(nnU-Net's default plans of a CT-like abdomen, 2d and 3d_fullres); GMS's step at 256 x 256, batch 8, against stock
2d on the same batch (paired), with ``benchmarks/profile_gms.py``'s part breakdown; the diffusion generator's tuning
steps/s and sampling images/s at 64 and 256 px (``benchmarks/bench_s2s2_generator.py``); ``predict-c2f`` against
``nnUNetv2_predict -c 3d_fullres`` with and without mirroring on abdomen volumes of 100 x 512 x 512 voxels: seconds
per case and peak GPU memory (issue #12's goal: at least 5x faster, under 2 GB). Ratios are given with 95%
bootstrap intervals over batches (``nnunet_ext.benchmark.stats.bootstrap_ci``).

Robustness: every command runs in its own process (forked from this one after torch and nnU-Net's third-party
modules are imported, so it starts in well under a second; ``--no-fork``: a fresh interpreter each) with its own
time limit; every item runs in its own process with a time limit and its failure is recorded with the last line of
its traceback; all items run even when some fail; ``--budget-s`` stops cleanly when the time is up (running items
are stopped, the rest skipped, all of it recorded), and so do SIGTERM and Ctrl-C. Console scripts that the
environment lacks (on the device the wheels are installed with ``pip --target``) are replaced by small shims in the
work folder's ``bin/``, first on PATH for every command (the project's own calls of ``nnUNetv2_*`` find them).

Data: the 2D phantom (64 x 64 RGB; with --quick the 32 x 32 grey texture phantom: nnU-Net's fingerprint draws 10^8
intensity samples per channel whatever the data's size), the 3D phantom with unlabelled cases (CPS, UIF, FLARE22;
with --quick also coarse-to-fine and the measure part's stand-in plans), a CT-like abdomen (training volumes
100 x 256 x 256 at 2.5 x 0.8 x 0.8 mm, test volumes 100 x 512 x 512), 260 Hippocampus-shaped volumes (nnU-Net's
planner caps the batch at 5% of the dataset's voxels: MSD Hippocampus's plans need its number of cases) and
256 x 256 RGB images for GMS.

Output: ``benchmarks/results/gpu_check_<date>.{md,json}`` (or ``--results DIR``) through ``bench_fd.write_record``:
command, device, driver, torch, CUDA and nnU-Net versions, every item with its figures, its time and, if it failed,
the last line of the traceback and the tail of its log. Exit status: 0 all smoke items passed, 1 a smoke item
failed, 2 none failed but some did not run (``--budget-s``). The elapsed time of each part is printed.

On the device: ``bash benchmarks/gpu_wheels.sh`` (here) downloads the wheels the device image lacks into ``.whl``
and prints the one command that installs them there and runs this script.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

#: console scripts the check runs, with the function each calls when the environment has no metadata for it
ENTRY_FALLBACK = {
    "nnunet-ext": "nnunet_ext.cli:main",
    "nnUNetv2_plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:"
                                    "plan_and_preprocess_entry",
    "nnUNetv2_extract_fingerprint": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:"
                                    "extract_fingerprint_entry",
    "nnUNetv2_plan_experiment": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_experiment_entry",
    "nnUNetv2_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:preprocess_entry",
    "nnUNetv2_train": "nnunetv2.run.run_training:run_training_entry",
    "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
}
#: imported once before any fork (as tests/forkserver.py does); nothing that reads nnU-Net's folders at import
PRELOAD = ("torch", "torch._dynamo", "numpy", "scipy.ndimage", "scipy.optimize", "SimpleITK", "matplotlib",
           "pandas", "blosc2", "batchgenerators.dataloading.nondet_multi_threaded_augmenter",
           "batchgeneratorsv2.transforms.spatial.spatial", "dynamic_network_architectures.architectures.unet",
           "acvl_utils.cropping_and_padding.bounding_boxes", "sklearn.model_selection", "tqdm", "PIL.Image",
           "nibabel", "timm", "diffusers")
STOP_ENV = "GPU_CHECK_STOP_AFTER_EPOCH"
PEAK_ENV = "GPU_CHECK_PEAK_FILE"
#: the tiny ViT of the STEGO check: timm vit_small_patch8_224 with these overrides (as tests/ext_trainers)
TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}
DS = {"d2": 921, "d3": 922, "dc": 923, "dct": 924, "dh": 925, "dg": 926}


# =====================================================================================================================
# settings
# =====================================================================================================================
@dataclass
class Settings:
    """Sizes and budgets: ``full()`` for the device (about 8 minutes on one H100), ``quick()`` for CPU CI."""
    quick: bool
    epochs: int                 # smoke trainings: epochs (the first is stopped and resumed with --c)
    iters_2d: int               # iterations per epoch, 2D
    iters_3d: int               # iterations per epoch, 3D
    val_iters: int
    d2_shape: tuple             # 2D phantom (RGB PNG; grey texture phantom with d2_texture)
    d2_texture: bool
    d2_cases: tuple             # (train, test)
    d3_cases: tuple             # (train, test, unlabelled), 3D phantom at TEST_SPEC
    c2f_train_shape: tuple      # abdomen training volumes (z, y, x) at c2f_spacing
    c2f_test_shape: tuple       # abdomen test volumes
    c2f_cases: tuple            # (train, test)
    c2f_spacing: tuple
    coarse_size: int
    c2f_epochs: dict            # {config: (epochs, iterations)}
    c2f_data: str               # dc: the abdomen (train) + dct (large test volumes); d3: the 3D phantom (quick)
    gms_lr: float
    tune_args: list             # s2s2-tune model/size arguments
    tune_steps: int
    generate_ddim: int
    hippocampus_shape: Optional[tuple]  # None: the 3D phantom's plans stand in (quick)
    gms_shape: Optional[int]            # 256: a 256 x 256 RGB dataset; None: the 2D phantom's gms_2d (quick)
    step_configs: dict          # measure: configurations timed per dataset ("hippocampus", "default")
    batches: int                # measure: timed batches per configuration
    warmup: int
    generator: dict             # bench_s2s2_generator settings
    jobs: int                   # smoke items at a time
    predict_procs: int          # nnUNetv2_predict -npp / -nps
    n_proc_da: int              # nnUNet_n_proc_DA of trainings
    np_plan: int                # processes of planning / preprocessing
    item_timeout: float
    compile_item: bool

    @classmethod
    def full(cls, jobs: int) -> "Settings":
        return cls(quick=False, epochs=3, iters_2d=25, iters_3d=15, val_iters=2, d2_shape=(64, 64), d2_texture=False,
                   d2_cases=(10, 3),
                   d3_cases=(8, 2, 4), c2f_train_shape=(100, 256, 256), c2f_test_shape=(100, 512, 512),
                   c2f_cases=(6, 2), c2f_spacing=(2.5, 0.8, 0.8), coarse_size=48,
                   c2f_epochs={"3d_coarse": (4, 40), "3d_fine": (3, 30), "3d_fullres": (2, 2)}, c2f_data="dc",
                   gms_lr=5e-3,
                   tune_args=["--batch-size", 8, "--image-size", 64], tune_steps=20, generate_ddim=10,
                   hippocampus_shape=(36, 50, 35), gms_shape=256,
                   step_configs={"hippocampus": ["2d", "3d_fullres"], "default": ["2d", "3d_fullres"]}, batches=12,
                   warmup=2,
                   generator={"sizes": (64, 256), "models": ("tiny", "default"), "batch_size": 8, "ddim_steps": 25,
                              "repeats": 3},
                   jobs=jobs, predict_procs=2, n_proc_da=2, np_plan=8, item_timeout=300, compile_item=True)

    @classmethod
    def quick_cpu(cls) -> "Settings":
        return cls(quick=True, epochs=2, iters_2d=2, iters_3d=1, val_iters=1, d2_shape=(32, 32), d2_texture=True,
                   d2_cases=(6, 1),
                   d3_cases=(5, 1, 2), c2f_train_shape=(16, 40, 40), c2f_test_shape=(16, 48, 48), c2f_cases=(4, 1),
                   c2f_spacing=(3.0, 2.0, 2.0), coarse_size=16,
                   c2f_epochs={"3d_coarse": (1, 1), "3d_fine": (1, 1), "3d_fullres": (1, 1)}, c2f_data="d3",
                   gms_lr=5e-3,
                   tune_args=["--batch-size", 2, "--image-size", 16, "--channels", "8,16", "--layers-per-block", 1,
                              "--preview-ddim-steps", 1],
                   tune_steps=2, generate_ddim=1, hippocampus_shape=None, gms_shape=None,
                   step_configs={"hippocampus": ["2d"], "default": ["3d_fullres"]}, batches=2, warmup=0,
                   generator={"sizes": (32,), "models": ("tiny",), "batch_size": 2, "ddim_steps": 1, "repeats": 1},
                   jobs=2, predict_procs=0, n_proc_da=0, np_plan=1, item_timeout=150, compile_item=False)


# =====================================================================================================================
# running commands: forked (default) or fresh processes, each in its own process group, with a time limit
# =====================================================================================================================
def entry_point(name: str) -> Callable:
    """The function the console script ``name`` calls (installed metadata first, then ``ENTRY_FALLBACK``)."""
    from importlib import import_module
    from importlib.metadata import entry_points

    found = list(entry_points(group="console_scripts", name=name))
    if found:
        try:
            return found[0].load()
        except ImportError:
            pass
    if name not in ENTRY_FALLBACK:
        raise RuntimeError(f"no console script {name!r} in this environment")
    module, func = ENTRY_FALLBACK[name].split(":")
    return getattr(import_module(module), func)


def write_shims(bin_dir: Path) -> List[str]:
    """A shim in ``bin_dir`` for every console script of ``ENTRY_FALLBACK`` that is neither beside this Python nor
    on PATH: ``exec python -c 'call the entry point' "$@"``. Returns the names shimmed."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name in ENTRY_FALLBACK:
        if (Path(sys.executable).parent / name).exists() or shutil.which(name):
            continue
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
                f"from gpu_check import entry_point; sys.argv[0] = {name!r}; sys.exit(entry_point({name!r})())")
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(code)} \"$@\"\n")
        path.chmod(0o755)
        made.append(name)
    return made


def _record_peak_gpu() -> None:
    """In a command's process, at exit: its peak CUDA memory (MB) into ``$GPU_CHECK_PEAK_FILE`` (if CUDA was used)."""
    path = os.environ.get(PEAK_ENV)
    torch = sys.modules.get("torch")
    if not path or torch is None:
        return
    try:
        if torch.cuda.is_initialized():
            Path(path).write_text(json.dumps({"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20}))
    except Exception:  # noqa: BLE001 - a figure, never a reason to fail
        pass


@dataclass
class CmdResult:
    name: str
    args: List[str]
    code: Optional[int]     # None: stopped at its time limit
    wall_s: float
    log: Path
    peak_gpu_mb: Optional[float] = None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.tail(200).splitlines() if ln.strip()]
        for ln in reversed(lines):  # the exception line of a traceback, else the last line
            if ":" in ln and (ln.split(":")[0].endswith(("Error", "Exception", "Interrupt")) or
                              ln.startswith(("AssertionError", "RuntimeError", "SystemExit"))):
                return ln[:500]
        return lines[-1][:500] if lines else f"{self.name}: no output"


class CommandFailed(Exception):
    pass


#: ``python -c`` code of ``Runner.call`` without fork: NAME ARGS_JSON OUT_FILE
_CALL_CODE = ("import json, sys; sys.path.insert(0, %r); import gpu_check as g; "
              "r = getattr(g, sys.argv[1])(*json.loads(sys.argv[2])); "
              "open(sys.argv[3], 'w').write(json.dumps(r, default=str))" % str(Path(__file__).resolve().parent))


_CURRENT_PGIDS: List[int] = []


def _kill_group(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if sig == signal.SIGTERM:
            time.sleep(2)


def _wait(pid: int, timeout: Optional[float]) -> Optional[int]:
    """The exit code of ``pid`` (negative: killed by that signal), or None after ``timeout`` seconds."""
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if end is not None and time.monotonic() > end:
            return None
        time.sleep(0.05)


class Runner:
    """Runs console scripts and Python functions in child processes (``fork``: a copy of this process, or a fresh
    interpreter), each with its own log file, environment and time limit, in its own process group (killed whole at
    the limit)."""

    def __init__(self, env: dict, log_dir: Path, fork: bool, deadline: Optional[float]):
        self.env, self.log_dir, self.fork = dict(env), log_dir, fork
        self.deadline = deadline  # monotonic time after which nothing may run (the item's limit)
        self.counter = 0
        log_dir.mkdir(parents=True, exist_ok=True)

    def _limit(self, timeout: Optional[float]) -> Optional[float]:
        if self.deadline is None:
            return timeout
        left = max(1.0, self.deadline - time.monotonic())
        return left if timeout is None else min(timeout, left)

    def cli(self, name: str, args, env: Optional[dict] = None, timeout: Optional[float] = None,
            check: bool = True, tag: str = "") -> CmdResult:
        args = [str(a) for a in args]
        return self._run(name, args, lambda: entry_point(name)(), env, timeout, check, tag, [name, *args])

    def call(self, func: Callable, *fargs, env: Optional[dict] = None, timeout: Optional[float] = None,
             tag: str = ""):
        """``func(*fargs)`` (a function of this module, JSON-able arguments) in a child process; returns its return
        value (JSON-able). Raises ``CommandFailed`` when it fails."""
        name = func.__name__
        out = self.log_dir / f"{self.counter + 1:02d}_{tag or name}.value.json"

        def target():
            Path(out).write_text(json.dumps(func(*fargs), default=str))

        argv = None if self.fork else [sys.executable, "-c", _CALL_CODE, name, json.dumps(list(fargs)), str(out)]
        self._run(name, [], target, env, timeout, True, tag, argv, python=not self.fork)
        return json.loads(out.read_text()) if out.is_file() else None

    def _run(self, name, args, target, env, timeout, check, tag, argv, python=False) -> CmdResult:
        self.counter += 1
        stem = f"{self.counter:02d}_{(tag or name).replace('/', '_')}"
        log, peak = self.log_dir / f"{stem}.log", self.log_dir / f"{stem}.peak.json"
        full_env = dict(self.env, **(env or {}), **{PEAK_ENV: str(peak)})
        with open(log, "w") as f:
            f.write("$ " + " ".join(shlex.quote(a) for a in ([name, *args] if python or argv is None else argv))
                    + "\n")
        t0 = time.monotonic()
        if self.fork:
            pid = os.fork()
            if pid == 0:
                _child(target, log, full_env, argv)
        else:
            import subprocess
            exe = argv[0]
            if not python:  # a console script: beside this Python, else on PATH (as the project's _bin() looks)
                beside = Path(sys.executable).parent / argv[0]
                exe = str(beside) if beside.exists() else (shutil.which(argv[0], path=full_env.get("PATH")) or exe)
            with open(log, "a") as f:
                proc = subprocess.Popen([exe, *argv[1:]], env=full_env, stdout=f, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            pid = proc.pid
        _CURRENT_PGIDS.append(pid)
        try:
            code = _wait(pid, self._limit(timeout))
            if code is None:
                _kill_group(pid)
                _wait(pid, 10)
                with open(log, "a") as f:
                    f.write(f"\ngpu_check: stopped at its time limit ({self._limit(timeout):.0f} s)\n")
        finally:
            _CURRENT_PGIDS.remove(pid)
        res = CmdResult(name, list(args), code, time.monotonic() - t0, log)
        if peak.is_file():
            res.peak_gpu_mb = json.loads(peak.read_text())["peak_gpu_mb"]
        if check and code != 0:
            why = "timed out" if code is None else f"exit code {code}"
            raise CommandFailed(f"{' '.join([name, *args])[:300]}: {why}: {res.last_line()}")
        return res


def _child(target: Callable, log: Path, env: dict, argv: Optional[List[str]]) -> None:
    """In a forked child: its own process group, output to ``log``, ``env`` as the environment, then ``target``;
    exits with its status (never returns into the parent's code)."""
    code = 1
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(str(log), os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdout.reconfigure(line_buffering=True)
        os.environ.clear()
        os.environ.update(env)
        import faulthandler
        faulthandler.enable()
        if argv is not None:
            sys.argv = list(argv)
        try:
            ret = target()
            code = 0 if ret is None else (ret if isinstance(ret, int) else 1)
            if isinstance(ret, str):
                print(ret, file=sys.stderr)
        except SystemExit as e:
            code = 0 if e.code is None else (e.code if isinstance(e.code, int) else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - the child reports and exits
            traceback.print_exc()
            code = 1
        _record_peak_gpu()
        try:
            atexit._run_exitfuncs()  # what sys.exit would run (multiprocessing's clean-up, logging)
        except BaseException:  # noqa: BLE001
            pass
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


# =====================================================================================================================
# items
# =====================================================================================================================
@dataclass
class Item:
    name: str
    part: str                   # data | smoke | measure
    func: Callable
    deps: List[str] = field(default_factory=list)
    timeout: Optional[float] = None


class Ctx:
    """What an item function gets: settings, folders, the runner and helpers."""

    def __init__(self, args, st: Settings, work: Path, env: dict, runner: Runner):
        self.args, self.st, self.work, self.env, self.run = args, st, work, env, runner
        self.device = args.device
        self.raw = Path(env["nnUNet_raw"])
        self.pre = Path(env["nnUNet_preprocessed"])
        self.results = Path(env["nnUNet_results"])
        self.figures: dict = {}
        self.notes: List[str] = []

    def dataset_folder(self, key: str) -> Path:
        return next(self.raw.glob(f"Dataset{DS[key]:03d}_*"))

    def fold_dir(self, key: str, trainer: str, config: str, plans: str = "nnUNetPlans") -> Path:
        return self.results / self.dataset_folder(key).name / f"{trainer}__{plans}__{config}" / "fold_0"

    def peak(self, *results: CmdResult) -> Optional[float]:
        vals = [r.peak_gpu_mb for r in results if r is not None and r.peak_gpu_mb is not None]
        return max(vals) if vals else None


# ------------------------------------------------------------------------------------------------------ datasets
def _gen_2d(raw, did, n_train, n_test, shape, texture=False):
    """The 2D phantom (RGB PNG); ``texture``: the grey texture phantom (one channel: nnU-Net's fingerprint, which
    draws 10^8 intensity samples per channel whatever the size, costs a third)."""
    from nnunet_ext.core.synthetic import generate_dataset_2d, generate_texture_dataset_2d
    if texture:
        generate_texture_dataset_2d(raw, did, name="GCTexture2D", num_train=n_train, num_test=n_test,
                                    shape=tuple(shape), seed=2)
    else:
        generate_dataset_2d(raw, did, name="GCPhantom2D" if tuple(shape) != (256, 256) else "GCRGB256",
                            num_train=n_train, num_test=n_test, shape=tuple(shape), seed=2)


def _gen_3d(raw, did, n_train, n_test, n_unl, shape, name):
    from nnunet_ext.core.synthetic import TEST_SPEC, PhantomSpec, generate_dataset_3d
    spec = TEST_SPEC if shape is None else PhantomSpec(shape=tuple(shape), spacing=(1.0, 1.0, 1.0))
    generate_dataset_3d(raw, did, name=name, num_train=n_train, num_test=n_test, num_unlabeled=n_unl, spec=spec,
                        seed=3)


def _gen_abdomen(raw, did, name, n_train, n_test, shape, spacing, seed):
    from nnunet_ext.core.synthetic import generate_abdomen_dataset_3d
    generate_abdomen_dataset_3d(raw, did, name=name, num_train=n_train, num_test=n_test, shape=tuple(shape),
                                spacing=tuple(spacing), seed=seed)


def _save_tiny_vit(path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, dynamic_img_size=True, **TINY_VIT)
    save_file(m.state_dict(), str(path))


def _save_tiny_vae(folder):
    """A small diffusers AutoencoderTiny (TAESD's architecture, fewer channels), saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                    latent_channels=4).save_pretrained(str(folder))


def _save_taesd_shaped(folder):
    """diffusers' AutoencoderTiny with TAESD's default architecture and random weights (timing only: the time of a
    step does not depend on the weights), saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(latent_channels=4).save_pretrained(str(folder))


def vae_folder(ctx: Ctx) -> tuple:
    """``(folder, kind)`` of the VAE the GMS items use: TAESD's real weights where present, else a tiny one."""
    if ctx.st.quick and not ctx.args.vae:
        return ctx.work / "tiny_vae", "tiny"
    for cand in (Path(ctx.args.vae) if ctx.args.vae else None, REPO.parent / "shared" / "weights" / "taesd",
                 REPO / ".whl" / "taesd"):
        if cand is not None and all((cand / f).is_file() for f in ("taesd_encoder.safetensors",
                                                                    "taesd_decoder.safetensors")):
            return cand, "taesd"
    return ctx.work / "tiny_vae", "tiny"


def data_d2(ctx: Ctx):
    st, did = ctx.st, DS["d2"]
    ctx.run.call(_gen_2d, str(ctx.raw), did, *st.d2_cases, st.d2_shape, st.d2_texture, tag="generate")
    ctx.run.cli("nnUNetv2_plan_and_preprocess", ["-d", did, "-c", "2d", "-npfp", st.np_plan, "-np", st.np_plan])
    folder, kind = vae_folder(ctx)
    if kind == "tiny" and not (folder / "config.json").is_file():
        ctx.run.call(_save_tiny_vae, str(folder), tag="tiny_vae")
    ctx.figures["vae"] = f"{kind} ({folder})"
    ctx.run.cli("nnunet-ext", ["plan-gms", "-d", did, "-np", st.np_plan])
    ctx.run.cli("nnunet-ext", ["s2s2-generate", "-d", did, "-c", "2d", "-k", 2, "--generator", "gin", "-q"])
    vit = ctx.work / "tiny_vit.safetensors"
    ctx.run.call(_save_tiny_vit, str(vit), tag="tiny_vit")
    ctx.run.cli("nnunet-ext", ["stego-knn", "-d", did, "-c", "2d", "-tr", "nnUNetTrainerSTEGO_gc", "-device",
                               ctx.device, "--no-progress"], env=_vit_env(ctx))


def data_d3(ctx: Ctx):
    st, did = ctx.st, DS["d3"]
    ctx.run.call(_gen_3d, str(ctx.raw), did, *st.d3_cases, None, "GCPhantom3D", tag="generate")
    ctx.run.cli("nnUNetv2_plan_and_preprocess", ["-d", did, "-c", "3d_fullres", "-npfp", st.np_plan,
                                                 "-np", st.np_plan])
    ctx.run.cli("nnunet-ext", ["preprocess-unlabeled", "-d", did, "-c", "3d_fullres", "-np", st.np_plan, "-q"])
    ctx.run.cli("nnunet-ext", ["s2s2-generate", "-d", did, "-c", "3d_fullres", "-k", 2, "--generator", "gin", "-q"])


def data_dc(ctx: Ctx):
    """The abdomen for coarse-to-fine: training volumes planned by plan-c2f (nnU-Net's default plans + 3d_coarse +
    3d_fine), 3d_fullres preprocessed for the stock model; large test volumes in a dataset of their own. With
    --quick: plan-c2f on the 3D phantom (planned already)."""
    st = ctx.st
    if st.c2f_data == "d3":
        ctx.run.cli("nnunet-ext", ["plan-c2f", "-d", DS["d3"], "--coarse-size", st.coarse_size, "--margin-mm", 10,
                                   "-np", st.np_plan])
        return
    ctx.run.call(_gen_abdomen, str(ctx.raw), DS["dc"], "GCAbdomen", st.c2f_cases[0], 0, st.c2f_train_shape,
                 st.c2f_spacing, 11, tag="generate_train")
    ctx.run.call(_gen_abdomen, str(ctx.raw), DS["dct"], "GCAbdomenTest", 0, st.c2f_cases[1], st.c2f_test_shape,
                 st.c2f_spacing, 12, tag="generate_test")
    ctx.run.cli("nnunet-ext", ["plan-c2f", "-d", DS["dc"], "--coarse-size", st.coarse_size, "--margin-mm", 10,
                               "-np", st.np_plan])
    ctx.run.cli("nnUNetv2_preprocess", ["-d", DS["dc"], "-c", "3d_fullres", "-np", st.np_plan])


def data_dh(ctx: Ctx):
    """Hippocampus-shaped: MSD Hippocampus's 260 cases of its field of view (36 x 50 x 35 voxels at 1 mm), so that
    nnU-Net's default plans (2d, 3d_fullres) come out as MSD Hippocampus's (its planner caps the batch at 5% of the
    dataset's voxels: the number of cases matters, not only their shape)."""
    ctx.run.call(_gen_3d, str(ctx.raw), DS["dh"], 260, 0, 0, ctx.st.hippocampus_shape, "GCHippocampusShape",
                 tag="generate")
    ctx.run.cli("nnUNetv2_plan_and_preprocess", ["-d", DS["dh"], "-c", "2d", "3d_fullres", "-npfp", ctx.st.np_plan,
                                                 "-np", ctx.st.np_plan, ctx.st.np_plan])


def data_dg(ctx: Ctx):
    """256 x 256 RGB images for GMS's step time (plan-gms: batch 8, patch 256 x 256)."""
    ctx.run.call(_gen_2d, str(ctx.raw), DS["dg"], 4, 0, (256, 256), tag="generate")
    ctx.run.cli("nnUNetv2_plan_and_preprocess", ["-d", DS["dg"], "-c", "2d", "-npfp", ctx.st.np_plan,
                                                 "-np", ctx.st.np_plan])
    ctx.run.cli("nnunet-ext", ["plan-gms", "-d", DS["dg"], "-np", ctx.st.np_plan])


# --------------------------------------------------------------------------------------------- smoke: trainings
def dice_vs_chance(pred_dir: str, ref_dir: str, ending: str) -> dict:
    """Mean over cases of the mean over foreground classes of Dice(pred == c, ref == c), and chance: the same mean
    of the classes' shares in the reference (the expected Dice of a random labelling with those shares)."""
    import numpy as np

    def read(p):
        if ending == ".png":
            from PIL import Image
            return np.asarray(Image.open(p))
        import SimpleITK as sitk
        return sitk.GetArrayFromImage(sitk.ReadImage(str(p)))

    dice, chance = [], []
    refs = sorted(Path(ref_dir).glob(f"*{ending}"))
    if not refs:
        raise RuntimeError(f"no reference labels in {ref_dir}")
    for ref_path in refs:
        pred_path = Path(pred_dir) / ref_path.name
        if not pred_path.is_file():
            raise RuntimeError(f"no prediction {pred_path}")
        pred, ref = read(pred_path), read(ref_path)
        if pred.shape != ref.shape:
            raise RuntimeError(f"{ref_path.name}: prediction shape {pred.shape} != reference {ref.shape}")
        classes = [c for c in np.unique(ref) if c != 0]
        d = [2 * np.logical_and(pred == c, ref == c).sum() / max((pred == c).sum() + (ref == c).sum(), 1)
             for c in classes]
        dice.append(float(np.mean(d)) if d else 1.0)
        chance.append(float(np.mean([(ref == c).mean() for c in classes])) if classes else 0.0)
    return {"dice": float(np.mean(dice)), "chance": float(np.mean(chance)), "cases": len(refs)}


def check_checkpoint(fold: str, epochs: int) -> dict:
    """checkpoint_final.pth: epochs done, every logged curve finite; returns the last losses."""
    import numpy as np
    import torch

    final = Path(fold) / "checkpoint_final.pth"
    if not final.is_file():
        raise RuntimeError(f"no {final}")
    ck = torch.load(final, map_location="cpu", weights_only=False)
    if ck["current_epoch"] != epochs:
        raise RuntimeError(f"checkpoint_final.pth at epoch {ck['current_epoch']}, expected {epochs}")
    bad, last = [], {}
    for k, v in ck["logging"].items():
        if k in ("epoch_start_timestamps", "epoch_end_timestamps", "lrs", "dice_per_class_or_region"):
            continue
        vals = np.asarray(v, dtype=np.float64).ravel()
        if vals.size and not np.all(np.isfinite(vals)):
            bad.append(k)
        if vals.size:
            last[k] = float(vals[-1])
    if bad:
        raise RuntimeError(f"non-finite logged values: {', '.join(bad)} ({ {k: last.get(k) for k in bad} })")
    return {"last": last, "grad_scaler": ck.get("grad_scaler_state") is not None}


def train_resume_predict(ctx: Ctx, key: str, config: str, trainer: str, predict: bool = True,
                         extra_env: Optional[dict] = None, predict_args=(), epochs: Optional[int] = None,
                         resume: bool = True) -> dict:
    """Train ``trainer`` (stopped after epoch 0 by plan, checkpoint written), continue with ``--c``, check the
    checkpoint, predict the dataset's imagesTs with nnUNetv2_predict and score it."""
    st = ctx.st
    did, epochs = DS[key], epochs or st.epochs
    env = dict(extra_env or {}, nnUNet_n_proc_DA=str(st.n_proc_da))
    base = [did, config, 0, "-tr", trainer, "-device", ctx.device]
    fold = ctx.fold_dir(key, trainer, config)
    if epochs < 2 or not resume:  # (nnU-Net writes no checkpoint_latest in the last epoch)
        first = ctx.run.cli("nnUNetv2_train", base, env=env, tag=f"train_{trainer}")
        resumed = None
    else:
        first = ctx.run.cli("nnUNetv2_train", base, env=dict(env, **{STOP_ENV: "0"}), check=False,
                            tag=f"train_{trainer}")
        if first.code == 0 or "gpu_check: planned stop after epoch 0" not in first.tail(400):
            raise CommandFailed(f"nnUNetv2_train {trainer} (first epoch): {first.last_line()}")
        if not (fold / "checkpoint_latest.pth").is_file():
            raise RuntimeError(f"no checkpoint_latest.pth after the first epoch in {fold}")
        resumed = ctx.run.cli("nnUNetv2_train", base + ["--c"], env=env, tag=f"resume_{trainer}")
    out = {"train_s": round(first.wall_s, 1), "resume_s": round(resumed.wall_s, 1) if resumed else None}
    out.update(ctx.run.call(check_checkpoint, str(fold), epochs, tag="check_checkpoint"))
    peaks = [first, resumed]
    if predict:
        raw = ctx.dataset_folder(key)
        ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
        pred = ctx.work / "pred" / f"{trainer}_{config}"
        p = ctx.run.cli("nnUNetv2_predict", ["-i", raw / "imagesTs", "-o", pred, "-d", did, "-c", config, "-f", 0,
                                             "-tr", trainer, "-device", ctx.device, "--disable_tta",
                                             "-npp", st.predict_procs, "-nps", st.predict_procs, *predict_args],
                        env=extra_env, tag=f"predict_{trainer}")
        peaks.append(p)
        out["predict_s"] = round(p.wall_s, 1)
        out.update(ctx.run.call(dice_vs_chance, str(pred), str(raw / "labelsTs"), ending, tag="dice"))
        out["pred_dir"] = str(pred)
    out["peak_gpu_mb"] = ctx.peak(*peaks)
    return out


def require_above_chance(ctx: Ctx, res: dict) -> None:
    if "dice" not in res:
        return
    res["above_chance"] = res["dice"] > res["chance"]
    if not res["above_chance"]:
        msg = f"prediction Dice {res['dice']:.3f} not above chance {res['chance']:.3f}"
        if ctx.st.quick:
            ctx.notes.append(msg + " (not required with --quick)")
        else:
            raise RuntimeError(msg)


def smoke_trainer(key: str, config: str, trainer: str, env_fn: Optional[Callable] = None, predict_args=()):
    def run(ctx: Ctx):
        env = env_fn(ctx) if env_fn else None
        res = train_resume_predict(ctx, key, config, trainer, extra_env=env, predict_args=predict_args)
        ctx.figures.update(res)
        require_above_chance(ctx, res)
    return run


def _vae_env(ctx: Ctx) -> dict:
    return {"nnUNet_ext_vae": str(vae_folder(ctx)[0])}


def _vit_env(ctx: Ctx) -> dict:
    return {"nnUNet_ext_backbone": str(ctx.work / "tiny_vit.safetensors")}


def smoke_stego(ctx: Ctx):
    env = _vit_env(ctx)
    res = train_resume_predict(ctx, "d2", "2d", "nnUNetTrainerSTEGO_gc", extra_env=env,
                               predict_args=["--save_probabilities"])
    ctx.figures.update(res)
    raw = ctx.dataset_folder("d2")
    out = ctx.work / "pred" / "stego_crf"
    crf = ctx.run.cli("nnunet-ext", ["stego-crf", "-i", raw / "imagesTs", "-p", res["pred_dir"], "-o", out,
                                     "-d", DS["d2"], "--device", ctx.device], env=env, tag="stego_crf")
    refined = ctx.run.call(dice_vs_chance, str(out), str(raw / "labelsTs"), ".png", tag="dice_crf")
    ctx.figures["crf"] = {"dice": refined["dice"], "seconds": round(crf.wall_s, 1), "peak_gpu_mb": crf.peak_gpu_mb}
    require_above_chance(ctx, res)


def smoke_compile(ctx: Ctx):
    # one run (no stop and --c: each process compiles again, a minute or more)
    res = train_resume_predict(ctx, "d2", "2d", "nnUNetTrainerFD_gcCompile", extra_env={"nnUNet_compile": "true"},
                               resume=False)
    ctx.figures.update(res)
    require_above_chance(ctx, res)


def smoke_c2f(ctx: Ctx):
    """plan-c2f's 3d_coarse and 3d_fine trained (stock nnU-Net, short), predict-c2f on the device; the stock
    3d_fullres model (for the measure part) trained for one short epoch."""
    figs = {}
    for config in ("3d_coarse", "3d_fine", "3d_fullres"):
        tr = {"3d_coarse": "nnUNetTrainer_gcCoarse", "3d_fine": "nnUNetTrainer_gcFine",
              "3d_fullres": "nnUNetTrainer_gcFullres"}[config]
        r = train_resume_predict(ctx, ctx.st.c2f_data, config, tr, predict=False,
                                 epochs=ctx.st.c2f_epochs[config][0])
        figs[config] = {k: r.get(k) for k in ("train_s", "resume_s", "peak_gpu_mb", "last")}
    test = ctx.dataset_folder(c2f_test_key(ctx.st))
    out = ctx.work / "pred" / "c2f_smoke"
    p = ctx.run.cli("nnunet-ext", ["predict-c2f", "-i", test / "imagesTs", "-o", out, "-d", DS[ctx.st.c2f_data],
                                   "-tr_coarse", "nnUNetTrainer_gcCoarse", "-tr_fine", "nnUNetTrainer_gcFine",
                                   "-f", 0, "-device", ctx.device], tag="predict_c2f")
    ctx.figures.update(figs)
    ctx.figures["predict_c2f"] = _c2f_csv(out)
    ctx.figures["predict_c2f"].update(ctx.run.call(dice_vs_chance, str(out), str(test / "labelsTs"), ".nii.gz",
                                                   tag="dice"), wall_s=round(p.wall_s, 1),
                                      peak_gpu_mb_process=p.peak_gpu_mb)
    require_above_chance(ctx, ctx.figures["predict_c2f"])


def c2f_test_key(st: Settings) -> str:
    return "dct" if st.c2f_data == "dc" else st.c2f_data


def _c2f_csv(out: Path) -> dict:
    import csv
    rows = list(csv.DictReader(open(out / "predict_c2f_cases.csv")))
    bad = [r["case"] for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"predict-c2f failed on {bad}: {[r['error'] for r in rows if r['status'] != 'ok']}")
    f = lambda k: [float(r[k]) for r in rows if r[k] not in ("", None)]  # noqa: E731
    return {"cases": len(rows), "case_s": f("total_s"), "network_share": f("network_share"),
            "peak_gpu_mb": f("peak_gpu_mb"), "fallbacks": [r["fallback"] for r in rows if r["fallback"]]}


def smoke_tune_generate(ctx: Ctx):
    """s2s2-tune a few steps (AMP on CUDA), s2s2-generate --generator diffusion a few copies; every training case
    of the 2D phantom gets its copies."""
    st, did = ctx.st, DS["d2"]
    t = ctx.run.cli("nnunet-ext", ["s2s2-tune", "-d", did, "-c", "2d", "-f", 0, "--steps", st.tune_steps,
                                   "--save-every", max(1, st.tune_steps // 2), *st.tune_args, "-device", ctx.device,
                                   "-q"], tag="s2s2_tune")
    g = ctx.run.cli("nnunet-ext", ["s2s2-generate", "-d", did, "-c", "2d", "-k", 2, "--generator", "diffusion",
                                   "-f", 0, "--ddim-steps", st.generate_ddim, "--batch-size", 8, "-device",
                                   ctx.device, "-q"], tag="s2s2_generate")
    folder = ctx.pre / ctx.dataset_folder("d2").name / "nnUNetPlans_2d_s2s2_diffusion"
    made = sorted(folder.glob("*.b2nd"))
    if len(made) < st.d2_cases[0]:
        raise RuntimeError(f"s2s2-generate wrote {len(made)} case(s) in {folder}, expected {st.d2_cases[0]}")
    import re
    losses = [float(m.group(1)) for m in re.finditer(r"s2s2-tune: step \d+, loss (?:\(last \d+\) )?([-+0-9.eEnaif]+)",
                                                     t.tail(400))]
    if not losses:
        raise RuntimeError("s2s2-tune printed no loss")
    ctx.figures.update({"tune_s": round(t.wall_s, 1), "generate_s": round(g.wall_s, 1), "cases": len(made),
                        "tune_losses": losses, "peak_gpu_mb": ctx.peak(t, g)})
    import math
    if any(not math.isfinite(v) for v in losses):
        raise RuntimeError(f"non-finite s2s2-tune loss: {losses}")


# --------------------------------------------------------------------------------------------- measure
def _random_batch(trainer, n: int, channels: int, device_pin: bool):
    """``n`` random patches of ``trainer``'s plans (data: ``channels`` channels; target: labels at every
    deep-supervision scale, nearest-downsampled as nnU-Net's loader does)."""
    import torch
    import torch.nn.functional as F

    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    data = torch.randn(n, channels, *patch)
    k = len(trainer.label_manager.all_labels)
    seg = torch.randint(0, k, (n, 1, *patch), dtype=torch.int16)
    scales = trainer._get_deep_supervision_scales() if trainer.enable_deep_supervision else None
    if scales is None:
        target = seg
    else:
        target = []
        for s in scales:
            size = [max(1, round(p * f)) for p, f in zip(patch, s)]
            target.append(seg if size == patch else F.interpolate(seg.float(), size=size, mode="nearest").to(seg.dtype))
    if device_pin:
        data = data.pin_memory()
        target = target.pin_memory() if torch.is_tensor(target) else [t.pin_memory() for t in target]
    return {"data": data, "target": target, "keys": [f"r{i}" for i in range(n)]}


def _cat(b1, b2):
    import torch
    t = [torch.cat((x, y)) for x, y in zip(b1["target"], b2["target"])] if isinstance(b1["target"], list) \
        else torch.cat((b1["target"], b2["target"]))
    return {"data": torch.cat((b1["data"], b2["data"])), "target": t, "keys": list(b1["keys"]) + list(b2["keys"])}


def measure_plans(ctx: Ctx, key: str) -> str:
    """A copy of the dataset's nnUNetPlans whose every configuration's data_identifier names a preprocessed folder
    that exists (the trainers only need plans and dataset.json here; batches are random)."""
    name = ctx.dataset_folder(key).name
    pre = ctx.pre / name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    own = {cfg.get("data_identifier") for cfg in plans["configurations"].values()}
    have = [d.name for d in sorted(pre.iterdir()) if d.is_dir() and d.name in own and any(d.glob("*.pkl"))]
    if not have:
        raise RuntimeError(f"no preprocessed folder in {pre}")
    for cfg in plans["configurations"].values():
        ident = cfg.get("data_identifier")
        if ident is not None and ident not in have:
            cfg["data_identifier"] = have[0]
    plans["plans_name"] = "nnUNetPlans_gcMeasure"
    from nnunet_ext.atomic_io import write_json_atomic
    write_json_atomic(pre / "nnUNetPlans_gcMeasure.json", plans, indent=1)
    return "nnUNetPlans_gcMeasure"


def paired_steps(dataset: str, config: str, plans: str, device: str, batches: int, warmup: int) -> dict:
    """In a child: stock (B patches), two stock trainers (2B labelled each: the CPS comparison), FD, FD_allBlocks,
    CPS (B labelled + B unlabelled) and S2S2 (B patches + their copies as channels) built on ``config``; every
    ``train_step`` timed on the same random batches, rotating who goes first; returns medians, paired ratios and
    their bootstrap CIs."""
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.benchmark.stats import bootstrap_ci

    os.environ["nnUNet_n_proc_DA"] = "0"
    dev = torch.device(device)
    names = {"stock": "nnUNetTrainer", "stock_a": "nnUNetTrainer", "stock_b": "nnUNetTrainer",
             "fd": "nnUNetTrainerFD", "fd_allBlocks": "nnUNetTrainerFD_allBlocks", "cps": "nnUNetTrainerCPS",
             "s2s2": "nnUNetTrainerS2S2"}
    tr = {}
    for i, (key, cls) in enumerate(names.items()):
        torch.manual_seed(i)
        t = get_trainer_from_args(dataset, config, 0, cls, plans, device=dev)
        t.initialize()
        t.network.train()
        tr[key] = t
    stock = tr["stock"]
    b, c = stock.batch_size, stock.num_input_channels
    pin = dev.type == "cuda"
    n = warmup + batches
    lab = [_random_batch(stock, b, c, pin) for _ in range(2 * n)]
    unl = [_random_batch(stock, b, c, pin)["data"] for _ in range(n)]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = {k: [] for k in tr}
    order0 = list(tr)
    for i in range(n):
        one, double = lab[2 * i], _cat(lab[2 * i], lab[2 * i + 1])
        copy = dict(one, data=torch.cat((one["data"], -one["data"]), 1))
        feed = {"stock": one, "stock_a": double, "stock_b": double, "fd": one, "fd_allBlocks": one, "cps": one,
                "s2s2": copy}
        tr["cps"].dataloader_unlabeled = iter([{"data": unl[i]}])
        for k in order0[i % len(order0):] + order0[:i % len(order0)]:
            sync()
            t0 = time.perf_counter()
            res = tr[k].train_step(feed[k])
            sync()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
            loss = float(np.asarray(res["loss"]).ravel()[0])
            if not np.isfinite(loss):
                raise RuntimeError(f"{k}: non-finite loss {loss} at batch {i}")
    base = np.asarray(times["stock"])
    two = np.asarray(times["stock_a"]) + np.asarray(times["stock_b"])
    out = {"config": config, "batch_size": b, "patch_size": [int(p) for p in stock.configuration_manager.patch_size],
           "median_s": {k: float(np.median(v)) for k, v in times.items()}, "ratios": {}}
    pairs = {"fd / stock": ("fd", base), "fd_allBlocks / stock": ("fd_allBlocks", base),
             "cps / two stock (2B each)": ("cps", two), "s2s2 / stock": ("s2s2", base)}
    for label, (k, ref) in pairs.items():
        r = np.asarray(times[k]) / ref
        mean, lo, hi = bootstrap_ci(r)
        out["ratios"][label] = {"mean": mean, "ci95": [lo, hi], "median": float(np.median(r))}
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return out


def measure_steps(key: str, label: str, which: str):
    def run(ctx: Ctx):
        plans = measure_plans(ctx, key)
        name = ctx.dataset_folder(key).name
        for config in ctx.st.step_configs[which]:
            ctx.figures[config] = ctx.run.call(paired_steps, name, config, plans, ctx.device, ctx.st.batches,
                                               ctx.st.warmup, env={"nnUNet_n_proc_DA": "0"}, tag=f"steps_{config}")
        ctx.figures["shape"] = label
    return run


def gms_steps(dataset: str, config: str, device: str, batches: int, warmup: int, vae: str) -> dict:
    """In a child: paired train_step times of nnUNetTrainerGMS (gms_2d, batch 8) and stock 2d on the same 8 patches,
    then profile_gms.profile_shape's part breakdown (fp32, outside nnU-Net's autocast)."""
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.benchmark.stats import bootstrap_ci

    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ["nnUNet_ext_vae"] = vae
    dev = torch.device(device)
    torch.manual_seed(0)
    gms = get_trainer_from_args(dataset, config, 0, "nnUNetTrainerGMS", "nnUNetPlans", device=dev)
    gms.initialize()
    gms.network.train()
    stock = get_trainer_from_args(dataset, "2d", 0, "nnUNetTrainer", "nnUNetPlans", device=dev)
    stock.initialize()
    stock.network.train()
    b, c = gms.batch_size, gms.num_input_channels
    pin = dev.type == "cuda"
    gb = [_random_batch(gms, b, c, pin) for _ in range(warmup + batches)]

    def as_stock(batch):
        import torch.nn.functional as F
        scales = stock._get_deep_supervision_scales()
        seg = batch["target"] if torch.is_tensor(batch["target"]) else batch["target"][0]
        size = list(seg.shape[2:])
        t = [seg if all(f == 1 for f in s) else
             F.interpolate(seg.float(), size=[max(1, round(p * f)) for p, f in zip(size, s)]).to(seg.dtype)
             for s in scales]
        return {"data": batch["data"], "target": t, "keys": batch["keys"]}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = {"gms": [], "stock": []}
    for i, batch in enumerate(gb):
        feed = {"gms": batch, "stock": as_stock(batch)}
        for k in (("gms", "stock") if i % 2 == 0 else ("stock", "gms")):
            sync()
            t0 = time.perf_counter()
            (gms if k == "gms" else stock).train_step(feed[k])
            sync()
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    r = np.asarray(times["gms"]) / np.asarray(times["stock"])
    mean, lo, hi = bootstrap_ci(r)
    out = {"batch_size": b, "patch_size": [int(p) for p in gms.configuration_manager.patch_size], "channels": c,
           "median_s": {k: float(np.median(v)) for k, v in times.items()},
           "ratio gms / stock": {"mean": mean, "ci95": [lo, hi], "median": float(np.median(r))}}
    from profile_gms import profile_shape

    from nnunet_ext.core.vae import load_vae
    args = argparse.Namespace(device=device, batch_size=b, repeats=max(2, batches // 3))
    h, w = out["patch_size"]
    n_fg = len(gms.label_manager.foreground_labels)
    prof = profile_shape(load_vae(vae, device=dev), f"gms:{h}x{w}:{c}:{n_fg}", args)
    out["profile_gms (fp32)"] = {"sum_of_parts_s": prof["sum_of_parts"], "vae_share": prof["vae_share"],
                                 "shares": prof["shares"]}
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return out


def measure_gms(ctx: Ctx):
    key = "dg" if ctx.st.gms_shape else "d2"
    folder, kind = vae_folder(ctx)
    if kind == "tiny" and not ctx.st.quick:
        folder = ctx.work / "taesd_shaped"  # TAESD's architecture with random weights: the same step time
        if not (folder / "config.json").is_file():
            ctx.run.call(_save_taesd_shaped, str(folder), tag="taesd_shaped")
        kind = "TAESD architecture, random weights (no TAESD weights found)"
    ctx.figures.update(ctx.run.call(gms_steps, ctx.dataset_folder(key).name, "gms_2d", ctx.device, ctx.st.batches,
                                    ctx.st.warmup, str(folder), tag="gms_steps"))
    ctx.figures["vae"] = f"{kind} ({folder})"


def generator_rates(device: str, gen: dict) -> dict:
    import torch
    from bench_s2s2_generator import gin, measure

    args = argparse.Namespace(device=device, batch_size=gen["batch_size"], ddim_steps=gen["ddim_steps"],
                              repeats=gen["repeats"])
    rows = [measure(m, s, args) for m in gen["models"] for s in gen["sizes"]]
    out = {"diffusion": rows, "gin_images_per_s": {str(s): gin(s, 16) for s in gen["sizes"]},
           "precision": "fp32 (bench_s2s2_generator.measure; s2s2-tune itself uses AMP on CUDA)"}
    if device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def measure_generator(ctx: Ctx):
    ctx.figures.update(ctx.run.call(generator_rates, ctx.device, ctx.st.generator, tag="generator"))


def measure_c2f(ctx: Ctx):
    """Stock nnUNetv2_predict -c 3d_fullres (mirroring on, and --disable_tta) against predict-c2f on the large test
    volumes: wall seconds per case (one run of each tool over all cases, model loading included), peak GPU memory
    of the tool's process, Dice; predict-c2f's own per-case times (no model loading) from its CSV."""
    import numpy as np

    from nnunet_ext.benchmark.stats import bootstrap_ci

    test = ctx.dataset_folder(c2f_test_key(ctx.st))
    n = len(list((test / "imagesTs").glob("*_0000.nii.gz")))
    common = ["-i", test / "imagesTs", "-d", DS[ctx.st.c2f_data], "-f", 0, "-device", ctx.device]
    procs = ["-npp", ctx.st.predict_procs, "-nps", ctx.st.predict_procs]
    tools = {
        "stock_tta": ("nnUNetv2_predict", common + ["-c", "3d_fullres", "-tr", "nnUNetTrainer_gcFullres"] + procs),
        "stock_noTTA": ("nnUNetv2_predict", common + ["-c", "3d_fullres", "-tr", "nnUNetTrainer_gcFullres",
                                                      "--disable_tta"] + procs),
        "c2f": ("nnunet-ext", ["predict-c2f"] + common + ["-tr_coarse", "nnUNetTrainer_gcCoarse", "-tr_fine",
                                                          "nnUNetTrainer_gcFine"]),
    }
    res = {}
    for tool, (cli, args) in tools.items():
        out = ctx.work / "pred" / f"measure_c2f_{tool}"
        r = ctx.run.cli(cli, args + ["-o", out], tag=f"predict_{tool}")
        res[tool] = {"wall_s_per_case": r.wall_s / n, "peak_gpu_mb": r.peak_gpu_mb,
                     **ctx.run.call(dice_vs_chance, str(out), str(test / "labelsTs"), ".nii.gz", tag="dice")}
        if tool == "c2f":
            res[tool]["csv"] = _c2f_csv(out)
    c2f_case = np.asarray(res["c2f"]["csv"]["case_s"])
    for tool in ("stock_tta", "stock_noTTA"):
        res[f"speedup vs {tool} (wall per case, model loading included)"] = \
            res[tool]["wall_s_per_case"] / res["c2f"]["wall_s_per_case"]
    if len(c2f_case) > 1:
        res["c2f case_s mean [95% CI]"] = list(bootstrap_ci(c2f_case))
    res["cases"] = n
    res["shape"] = list(ctx.st.c2f_test_shape) if ctx.st.c2f_data == "dc" else "3D phantom (--quick)"
    peak = res["c2f"]["peak_gpu_mb"]
    res["goals"] = {"5x faster than stock (mirroring)": res["speedup vs stock_tta (wall per case, model loading "
                                                            "included)"] >= 5,
                    "under 2 GB GPU": None if peak is None else peak < 2048}
    ctx.figures.update(res)


def device_info() -> dict:
    import platform
    import subprocess

    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    try:
        from importlib.metadata import version
        info["nnunetv2"] = version("nnunetv2")
    except Exception:  # noqa: BLE001
        info["nnunetv2"] = "unknown"
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_gb"] = round(props.total_memory / 2 ** 30, 1)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:  # noqa: BLE001
            info["driver"] = "unknown (nvidia-smi failed)"
    else:
        info["device"] = "CPU"
        info["driver"] = "-"
    from bench_fd import machine
    info["machine"] = machine()
    return info


# =====================================================================================================================
# trainer variants (written into WORK/trainers, put on nnUNet_extTrainer)
# =====================================================================================================================
def write_trainer_module(settings: dict, path: str) -> None:
    """In a child (it imports nnU-Net's trainers): write ``trainer_module``'s source to ``path``."""
    Path(path).write_text(trainer_module(Settings(**settings)))


def trainer_module(st: Settings) -> str:
    """Source of the short-schedule variants: ``<Trainer>_gc`` = GpuCheckMixin + the trainer (imported through
    ``nnunet_ext.core.schedule.import_lines``, which also loads classes from the trainers folder)."""
    from nnunet_ext.core.schedule import import_lines
    from nnunet_ext.paths import find_trainer_class

    def sched(epochs, iters):
        return {"num_epochs": epochs, "num_iterations_per_epoch": iters, "num_val_iterations_per_epoch": st.val_iters,
                "save_every": 1}

    s2, s3 = sched(st.epochs, st.iters_2d), sched(st.epochs, st.iters_3d)
    uif = {"unlabeled_batch_size": 1 if st.quick else None, "uif_warmup": 1 / st.epochs, "uif_keep": 0.5,
           "uif_patches_per_case": 1}
    variants = [  # (name, base trainer, schedule, extra class attributes)
        ("nnUNetTrainer_gc", "nnUNetTrainer", s2, {}),
        ("nnUNetTrainerFD_gc", "nnUNetTrainerFD", s2, {}),
        ("nnUNetTrainerFD_gcCompile", "nnUNetTrainerFD", s2, {}),
        ("nnUNetTrainerFD_allBlocks_gc", "nnUNetTrainerFD_allBlocks", s2, {}),
        ("nnUNetTrainerCPS_gc", "nnUNetTrainerCPS", s3, {"unlabeled_batch_size": 1 if st.quick else None}),
        ("nnUNetTrainerCPS_UIF_gc", "nnUNetTrainerCPS_UIF", s3, uif),
        ("nnUNetTrainerCPS_cutmix_gc", "nnUNetTrainerCPS_cutmix", s3,
         {"unlabeled_batch_size": 1 if st.quick else None}),
        ("nnUNetTrainerS2S2_gc", "nnUNetTrainerS2S2", s2, {"s2s2_generator": "gin"}),
        ("nnUNetTrainerS2S2FD_gc", "nnUNetTrainerS2S2FD", s2, {"s2s2_generator": "gin"}),
        ("nnUNetTrainerGMS_gc", "nnUNetTrainerGMS", dict(s2, initial_lr=st.gms_lr), {"gms_warmup_epochs": 0}),
        ("nnUNetTrainerSTEGO_gc", "nnUNetTrainerSTEGO", dict(s2, num_iterations_per_epoch=max(st.iters_2d, 2)),
         {"stego_backbone_kwargs": TINY_VIT, "stego_lr": 5e-3, "stego_probe_lr": 5e-2,
          "stego_weights": "@type({base}.stego_weights)(b_self=0.6, b_knn=0.6, b_rand=0.6)"}),
        ("nnUNetTrainerFLARE22_gc", "nnUNetTrainerFLARE22", s3, dict(uif, s2s2_generator="gin")),
        ("nnUNetTrainer_gcCoarse", "nnUNetTrainer", dict(sched(*st.c2f_epochs["3d_coarse"]), initial_lr=0.03), {}),
        ("nnUNetTrainer_gcFine", "nnUNetTrainer", dict(sched(*st.c2f_epochs["3d_fine"]), initial_lr=0.03), {}),
        ("nnUNetTrainer_gcFullres", "nnUNetTrainer", sched(*st.c2f_epochs["3d_fullres"]), {}),
    ]
    src = ['"""Written by benchmarks/gpu_check.py (rewritten on every run): short-schedule variants."""',
           "import os", "", "from nnunet_ext.core.schedule import NoFinalValidationMixin, ScheduleMixin",
           "",
           f"STOP_ENV = {STOP_ENV!r}", "", "",
           "class GpuCheckMixin(NoFinalValidationMixin, ScheduleMixin):",
           "    skip_final_validation_reason = 'gpu_check: final validation skipped (nnUNetv2_predict after)'", "",
           "    def on_epoch_end(self):",
           "        epoch = self.current_epoch",
           "        super().on_epoch_end()",
           "        stop = os.environ.get(STOP_ENV)",
           "        if stop is not None and int(stop) == epoch:",
           "            for name, value in list(vars(self).items()):  # no worker may outlive the planned stop",
           "                if name.startswith('dataloader') and callable(getattr(value, '_finish', None)):",
           "                    value._finish()",
           "            raise RuntimeError(f'gpu_check: planned stop after epoch {epoch} (continued with --c)')", ""]
    seen = {}
    for name, base, schedule, extra in variants:
        if base not in seen:
            cls = find_trainer_class(base)
            if cls is None:
                raise RuntimeError(f"trainer {base} not found (nnUNet_extTrainer: "
                                   f"{os.environ.get('nnUNet_extTrainer')})")
            alias = f"_B{len(seen)}"
            src.append(import_lines(cls, alias))
            seen[base] = alias
        body = [f"    schedule = {schedule!r}"]
        for k, v in extra.items():
            if v is None:
                continue
            # "@..." is source (the base's own type, wherever its module lives), anything else a value
            body.append(f"    {k} = {v[1:].format(base=seen[base])}" if isinstance(v, str) and v.startswith("@")
                        else f"    {k} = {v!r}")
        src += ["", f"class {name}(GpuCheckMixin, {seen[base]}):", *body, ""]
    return "\n".join(src) + "\n"


# =====================================================================================================================
# the items, the scheduler, the record
# =====================================================================================================================
def build_items(st: Settings, device: str) -> List[Item]:
    t = st.item_timeout
    items = [
        Item("data_2d", "data", data_d2, timeout=2 * t),
        Item("data_3d", "data", data_d3, timeout=2 * t),
        Item("data_c2f", "data", data_dc, ["data_3d"] if st.c2f_data == "d3" else [], 2 * t),
        Item("stock", "smoke", smoke_trainer("d2", "2d", "nnUNetTrainer_gc"), ["data_2d"], t),
        Item("fd", "smoke", smoke_trainer("d2", "2d", "nnUNetTrainerFD_gc"), ["data_2d"], t),
        Item("fd_allBlocks", "smoke", smoke_trainer("d2", "2d", "nnUNetTrainerFD_allBlocks_gc"), ["data_2d"], t),
        Item("cps", "smoke", smoke_trainer("d3", "3d_fullres", "nnUNetTrainerCPS_gc"), ["data_3d"], t),
        Item("cps_uif", "smoke", smoke_trainer("d3", "3d_fullres", "nnUNetTrainerCPS_UIF_gc"), ["data_3d"], t),
        Item("cps_cutmix", "smoke", smoke_trainer("d3", "3d_fullres", "nnUNetTrainerCPS_cutmix_gc"), ["data_3d"], t),
        Item("s2s2", "smoke", smoke_trainer("d2", "2d", "nnUNetTrainerS2S2_gc"), ["data_2d"], t),
        Item("s2s2fd", "smoke", smoke_trainer("d2", "2d", "nnUNetTrainerS2S2FD_gc"), ["data_2d"], t),
        Item("gms", "smoke", smoke_trainer("d2", "gms_2d", "nnUNetTrainerGMS_gc", _vae_env), ["data_2d"], t),
        Item("stego", "smoke", smoke_stego, ["data_2d"], t),
        Item("flare22", "smoke", smoke_trainer("d3", "3d_fullres", "nnUNetTrainerFLARE22_gc"), ["data_3d"], t),
        Item("c2f", "smoke", smoke_c2f, ["data_c2f"], 2 * t),
        Item("s2s2_tune_generate", "smoke", smoke_tune_generate, ["data_2d"], t),
    ]
    if st.compile_item and device.startswith("cuda"):
        items.append(Item("fd_compile", "smoke", smoke_compile, ["data_2d"], 2 * t))
    if st.hippocampus_shape:
        items.append(Item("data_hippocampus", "data", data_dh, timeout=t))
        items.append(Item("steps_hippocampus", "measure", measure_steps("dh", "Hippocampus-shaped (36 x 50 x 35 at "
                                                                              "1 mm), default plans", "hippocampus"),
                          ["data_hippocampus"], t))
    else:
        items.append(Item("steps_hippocampus", "measure", measure_steps("d3", "3D phantom (--quick stand-in), "
                                                                              "default plans", "hippocampus"),
                          ["data_3d"], t))
    items.append(Item("steps_default_plans", "measure", measure_steps(
        st.c2f_data, "CT-like abdomen, nnU-Net's default plans" if st.c2f_data == "dc" else
        "3D phantom (--quick stand-in), default plans", "default"), ["data_c2f"], t))
    if st.gms_shape:
        items.append(Item("data_gms256", "data", data_dg, timeout=t))
        items.append(Item("gms_step", "measure", measure_gms, ["data_gms256", "data_2d"], t))
    else:
        items.append(Item("gms_step", "measure", measure_gms, ["data_2d"], t))
    items.append(Item("generator", "measure", measure_generator, [], t))
    items.append(Item("c2f_inference", "measure", measure_c2f, ["data_c2f", "c2f"], 2 * t))
    return items


def select_items(all_items: List[Item], parts: List[str], names: Optional[List[str]]) -> List[Item]:
    by = {i.name: i for i in all_items}
    if names:
        unknown = [n for n in names if n not in by]
        if unknown:
            raise SystemExit(f"unknown item(s) {', '.join(unknown)}; known: {', '.join(by)}")
        wanted = [by[n] for n in names]
    else:
        wanted = [i for i in all_items if i.part in parts]
    need, stack = {}, list(wanted)
    while stack:  # dependencies (datasets, the c2f models) come along
        it = stack.pop()
        if it.name not in need:
            need[it.name] = it
            stack.extend(by[d] for d in it.deps)
    return [i for i in all_items if i.name in need]


def _item_child(item: Item, ctx: Ctx, result_file: Path) -> None:
    """In a forked item process: run the item, write its result (never returns)."""
    code = 0
    try:
        os.setpgid(0, 0)

        def on_term(signum, frame):
            for pgid in list(_CURRENT_PGIDS):
                _kill_group(pgid)
            os._exit(3)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log = ctx.work / "logs" / item.name / "item.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)
        res = {"status": "passed"}
        try:
            item.func(ctx)
        except BaseException as e:  # noqa: BLE001 - recorded
            traceback.print_exc()
            res = {"status": "failed", "error": (traceback.format_exception_only(type(e), e)[-1].strip())[:1000]}
        res.update(figures=ctx.figures, notes=ctx.notes)
        result_file.write_text(json.dumps(res, default=str))
    except BaseException:  # noqa: BLE001
        code = 4
    finally:
        os._exit(code)


def _log_tail(folder: Path, n: int = 30) -> str:
    """The last lines of the item's newest command log (where a failure shows)."""
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return ""
    last = [p for p in logs if p.name != "item.log"] or logs
    return f"[{last[-1].name}]\n" + "\n".join(last[-1].read_text(errors="replace").splitlines()[-n:])


def run_items(items: List[Item], make_ctx: Callable[[Item], Ctx], jobs: int, budget_end: Optional[float],
              on_done: Callable[[str, dict], None]) -> Dict[str, dict]:
    """Run the items (dependencies first; up to ``jobs`` smoke/data items at a time, measure items alone)."""
    results: Dict[str, dict] = {}
    pending = list(items)
    running: Dict[int, tuple] = {}  # pid -> (item, ctx, result file, start, deadline)
    while pending or running:
        now = time.monotonic()
        # budget, or SIGTERM / SIGINT to this process: stop everything cleanly, record what finished
        if _STOP or (budget_end is not None and now > budget_end):
            why = f"signal {_STOP}" if _STOP else "--budget-s"
            for pid, (it, ctx, rf, t0, dl) in list(running.items()):
                _stop(pid)
                results[it.name] = {"status": f"stopped ({why})", "seconds": round(now - t0, 1),
                                    "log_tail": _log_tail(ctx.work / "logs" / it.name)}
                on_done(it.name, results[it.name])
            running.clear()
            for it in pending:
                results[it.name] = {"status": f"not run ({why})"}
                on_done(it.name, results[it.name])
            break
        # finished or timed-out items
        for pid, (it, ctx, rf, t0, dl) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done and now > dl:
                _stop(pid)
                res = {"status": "failed", "error": f"item time limit ({dl - t0:.0f} s) exceeded"}
            elif done:
                try:
                    res = json.loads(rf.read_text())
                except (OSError, ValueError):
                    res = {"status": "failed", "error": f"the item's process ended without a result "
                                                        f"(status {os.waitstatus_to_exitcode(status)})"}
            else:
                continue
            del running[pid]
            res["seconds"] = round(time.monotonic() - t0, 1)
            if res["status"] != "passed":
                res["log_tail"] = _log_tail(ctx.work / "logs" / it.name)
            results[it.name] = res
            on_done(it.name, res)
        # start what can start
        measure_running = any(it.part == "measure" for it, *_ in running.values())
        for it in list(pending):
            states = [results.get(d, {}).get("status") for d in it.deps]
            if any(s is not None and s != "passed" for s in states):
                pending.remove(it)
                failed = [d for d, s in zip(it.deps, states) if s != "passed"]
                results[it.name] = {"status": "failed", "error": f"needs {', '.join(failed)}, which did not pass"}
                on_done(it.name, results[it.name])
                continue
            if any(s is None for s in states):
                continue
            if it.part == "measure":  # alone on the device: after every other item, one at a time
                others = [p for p in pending if p.part != "measure"]
                if running or others:
                    continue
            elif measure_running or len(running) >= jobs:
                continue
            pending.remove(it)
            ctx = make_ctx(it)
            rf = ctx.work / "logs" / it.name / "result.json"
            rf.parent.mkdir(parents=True, exist_ok=True)
            if rf.exists():
                rf.unlink()
            pid = os.fork()
            if pid == 0:
                _item_child(it, ctx, rf)
            t0 = time.monotonic()
            running[pid] = (it, ctx, rf, t0, t0 + (it.timeout or 600))
            print(f"[{_stamp()}] start {it.part}/{it.name}", flush=True)
            if it.part == "measure":
                break
        time.sleep(0.1)
    return results


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)  # the item stops its running command first
    except ProcessLookupError:
        pass
    if _wait(pid, 15) is None:
        _kill_group(pid)
        _wait(pid, 10)


_T0 = time.monotonic()
#: set by SIGTERM / SIGINT (the signal's name): the scheduler stops the running items and records what finished
_STOP = None


def _on_stop_signal(signum, frame):
    global _STOP
    _STOP = signal.Signals(signum).name


def _stamp() -> str:
    return f"{time.monotonic() - _T0:6.0f} s"


def markdown(rec: dict) -> str:
    info = rec["device"]
    lines = ["# gpu_check: every trainer on the device, and the GPU-only measurements", "",
             f"Command: `{rec['command']}`  ", f"Date: {rec['date']}  ",
             f"Device: {info.get('device')} (driver {info.get('driver')}, {info.get('gpu_memory_gb', '-')} GB), "
             f"torch {info.get('torch')} (CUDA {info.get('cuda_runtime')}), nnU-Net {info.get('nnunetv2')}, "
             f"Python {info.get('python')}  ", f"Machine: {info.get('machine')}  ",
             f"Settings: {'--quick' if rec['settings']['quick'] else 'full'}; parts: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in rec["elapsed_s"].items()), "",
             "## Items", "", "| part | item | status | s | peak GPU MB | Dice (chance) | note |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rec["items"].items():
        f = r.get("figures", {})
        peak = "" if f.get("peak_gpu_mb") is None else f"{f['peak_gpu_mb']:.0f}"
        dice = f"{f['dice']:.3f} ({f['chance']:.3f})" if "dice" in f else ""
        note = (r.get("error", "") or "; ".join(r.get("notes", []))).replace("|", "/")[:300]
        lines.append(f"| {r.get('part', '')} | {name} | {r['status']} | {r.get('seconds', '')} | {peak} | {dice} | "
                     f"{note} |")
    meas = {k: v for k, v in rec["items"].items() if v.get("part") == "measure" and v.get("figures")}
    if meas:
        lines += ["", "## Measurements", ""]
        for name in ("steps_hippocampus", "steps_default_plans"):
            f = meas.get(name, {}).get("figures")
            if not f:
                continue
            lines += [f"### Time per iteration, paired: {f.get('shape')}", "",
                      "| config | batch x patch | stock s/it | ratio | mean [95% CI] | median |",
                      "|---|---|---|---|---|---|"]
            for cfg in ("2d", "3d_fullres"):
                c = f.get(cfg)
                if not c:
                    continue
                for label, v in c["ratios"].items():
                    lines.append(f"| {cfg} | {c['batch_size']} x {c['patch_size']} | {c['median_s']['stock']:.4f} | "
                                 f"{label} | {v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] | "
                                 f"{v['median']:.3f} |")
            lines.append("")
        g = meas.get("gms_step", {}).get("figures")
        if g:
            v = g["ratio gms / stock"]
            lines += [f"### GMS step ({g['batch_size']} x {g['patch_size']}, {g['channels']} channels; "
                      f"VAE: {g['vae']})",
                      "", f"GMS {g['median_s']['gms']:.4f} s, stock 2d on the same batch {g['median_s']['stock']:.4f} s"
                      f"; GMS / stock {v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]; profile_gms (fp32): "
                      f"step {g['profile_gms (fp32)']['sum_of_parts_s']:.4f} s, VAE "
                      f"{100 * g['profile_gms (fp32)']['vae_share']:.0f}%", ""]
        gen = meas.get("generator", {}).get("figures")
        if gen:
            lines += ["### S2S2 diffusion generator (fp32)", "", "| model | size | tune steps/s | sample images/s |",
                      "|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['size']} | {r['tune_steps_per_s']:.2f} | {r['sample_images_per_s']:.2f} |"
                      for r in gen["diffusion"]]
            lines.append("")
        c = meas.get("c2f_inference", {}).get("figures")
        if c:
            lines += [f"### Coarse-to-fine inference ({c['cases']} case(s) of {c['shape']} voxels)", "",
                      "| tool | wall s / case | peak GPU MB | Dice |", "|---|---|---|---|"]
            for tool in ("stock_tta", "stock_noTTA", "c2f"):
                r = c[tool]
                peak = "" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"
                lines.append(f"| {tool} | {r['wall_s_per_case']:.2f} | {peak} | {r['dice']:.3f} |")
            lines += ["", "Goals: " + ", ".join(f"{k}: {v}" for k, v in c["goals"].items()), ""]
    bad = {k: v for k, v in rec["items"].items() if v["status"] != "passed" and v.get("log_tail")}
    if bad:
        lines += ["## Failures: the end of each one's last log", ""]
        for name, r in bad.items():
            lines += [f"### {name}: {r.get('error', r['status'])}", "", "```", r["log_tail"], "```", ""]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny settings (CPU CI: the same code paths in < 3 min)")
    p.add_argument("--parts", default="smoke,measure", help="smoke, measure or both (their datasets come along)")
    p.add_argument("--items", default=None, help="only these items (comma-separated; their dependencies come along)")
    p.add_argument("--budget-s", type=float, default=None, help="stop cleanly after this many seconds")
    p.add_argument("--jobs", type=int, default=None, help="data / smoke items at a time (default: 6 on CUDA, 2 on "
                                                          "CPU)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="folder of the record")
    p.add_argument("--workdir", default=None, help="work folder (default: a new temporary folder, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--vae", default=None, help="TAESD folder (default: ../shared/weights/taesd, .whl/taesd)")
    p.add_argument("--no-fork", dest="fork", action="store_false",
                   help="run every command in a fresh interpreter instead of a fork of this process")
    return p.parse_args(argv)


def _cuda_available() -> bool:
    """Without initialising CUDA in this process (its children are forked from it): ask nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return False
    import subprocess
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except Exception:  # noqa: BLE001
        return False


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.device = args.device or ("cuda" if _cuda_available() else "cpu")
    if args.device not in ("cuda", "cpu"):
        raise SystemExit("--device must be cuda or cpu")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in ("smoke", "measure") for p in parts):
        raise SystemExit("--parts takes smoke, measure or smoke,measure")
    jobs = args.jobs or (6 if args.device == "cuda" else 2)
    st = Settings.quick_cpu() if args.quick else Settings.full(jobs)
    st.jobs = jobs
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    budget_end = t_start + args.budget_s if args.budget_s else None

    # nnU-Net's folders, our trainers, shims: set before anything of nnU-Net is imported (children inherit them)
    env = dict(os.environ)
    for k, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        (work / sub).mkdir(exist_ok=True)
        env[k] = str(work / sub)
    (work / "trainers").mkdir(exist_ok=True)
    shims = write_shims(work / "bin")
    env.update(PATH=f"{work / 'bin'}{os.pathsep}{env.get('PATH', '')}", nnUNet_compile="false",
               nnUNet_def_n_proc=str(st.np_plan), PYTHONWARNINGS="ignore", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(dict.fromkeys([str(REPO), *[p for p in env.get("PYTHONPATH", "").split(
                   os.pathsep) if p]])))
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "2")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.clear()
    os.environ.update(env)
    from nnunet_ext.paths import ext_trainer_env
    env = ext_trainer_env([work / "trainers"], env)
    os.environ.update(env)
    for module in PRELOAD:
        try:
            __import__(module)
        except ImportError as e:
            print(f"gpu_check: cannot import {module}: {e}", flush=True)
    torch = sys.modules.get("torch")
    if args.fork and torch is not None and torch.cuda.is_initialized():
        print("gpu_check: CUDA was initialised while importing; running every command in a fresh interpreter "
              "(--no-fork)", flush=True)
        args.fork = False

    print(f"[{_stamp()}] gpu_check: device {args.device}, {'--quick' if st.quick else 'full'} settings, work folder "
          f"{work}" + (f", shims for {', '.join(shims)}" if shims else ""), flush=True)
    setup = Runner(env, work / "logs" / "_setup", args.fork, None)
    try:
        info = setup.call(device_info, timeout=180, tag="device_info")
    except Exception as e:  # noqa: BLE001 - recorded, the check goes on
        info = {"device": "unknown", "error": str(e)}
    print(f"[{_stamp()}] {info.get('device')} (driver {info.get('driver')}), torch {info.get('torch')}, "
          f"nnU-Net {info.get('nnunetv2')}", flush=True)
    setup.call(write_trainer_module, asdict(st), str(work / "trainers" / "gpu_check_trainers.py"), timeout=300,
               tag="trainers")
    if args.device == "cuda" and not info.get("cuda_available"):
        print("gpu_check: CUDA is not available in the child process; the items will fail", flush=True)

    all_items = build_items(st, args.device)
    items = select_items(all_items, parts, [s.strip() for s in args.items.split(",")] if args.items else None)
    part_of = {i.name: i.part for i in items}

    def make_ctx(item: Item) -> Ctx:
        deadline = time.monotonic() + (item.timeout or 600)
        if budget_end is not None:
            deadline = min(deadline, budget_end)
        return Ctx(args, st, work, env, Runner(env, work / "logs" / item.name, args.fork, deadline))

    part_times: Dict[str, List[float]] = {}
    starts: Dict[str, float] = {}

    def on_done(name: str, res: dict) -> None:
        part = part_of[name]
        res["part"] = part
        now = time.monotonic()
        part_times.setdefault(part, [now, now])
        part_times[part][1] = now
        extra = f": {res.get('error', '')}" if res.get("status") not in ("passed",) else ""
        print(f"[{_stamp()}] {res['status']:>8} {part}/{name} ({res.get('seconds', 0)} s){extra}", flush=True)

    orig_make = make_ctx

    def make_ctx_timed(item: Item) -> Ctx:
        starts.setdefault(item.part, time.monotonic())
        return orig_make(item)

    signal.signal(signal.SIGTERM, _on_stop_signal)  # items fork after this: they set their own handler
    signal.signal(signal.SIGINT, _on_stop_signal)
    results = run_items(items, make_ctx_timed, st.jobs, budget_end, on_done)
    elapsed = {p: part_times[p][1] - starts.get(p, part_times[p][0]) for p in ("data", "smoke", "measure")
               if p in part_times}
    elapsed["total"] = time.monotonic() - t_start
    for p, s in elapsed.items():
        print(f"gpu_check: {p}: {s:.0f} s", flush=True)

    date = _dt.datetime.now().isoformat(timespec="seconds")
    rec = {"command": "python " + " ".join([os.path.relpath(__file__, REPO)] + [shlex.quote(a) for a in argv]),
           "date": date, "device": info, "settings": {k: v for k, v in vars(st).items()},
           "elapsed_s": elapsed, "shims": shims, "work_folder": str(work),
           "items": {i.name: dict(results.get(i.name, {"status": "not run"}), part=i.part) for i in items}}
    smoke = [v for v in rec["items"].values() if v["part"] in ("smoke", "data")]
    failed = [k for k, v in rec["items"].items() if v["status"] == "failed"]
    rec["summary"] = {"passed": sum(v["status"] == "passed" for v in rec["items"].values()),
                      "failed": failed, "smoke_failed": [k for k in failed if rec["items"][k]["part"] != "measure"],
                      "not_run": [k for k, v in rec["items"].items() if v["status"] not in ("passed", "failed")]}
    from bench_fd import new_record_stem, write_record
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    stem = new_record_stem(res_dir / f"gpu_check_{date[:10]}")
    write_record(stem, rec, markdown(rec), default=str)
    print(f"gpu_check: wrote {stem}.json/.md; {rec['summary']['passed']} passed, failed: {failed or 'none'}",
          flush=True)
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if rec["summary"]["smoke_failed"]:
        return 1
    if any(v["status"] not in ("passed", "failed") for v in smoke):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
