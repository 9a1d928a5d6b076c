"""``nnunet-ext plan-small``: nnU-Net plans for a small compute budget (CPU, short benchmarks).

nnU-Net's planner sizes batch and patch for a GPU memory target (default 8 GB). On a CPU the batch is what
costs: with the default plans one MSD Hippocampus iteration takes 13-16 s on 2 cores (2d: batch 366).
``plan-small`` runs nnU-Net's own planner with a lower target and its own plans name, then nnU-Net's
preprocessing for those plans::

    nnUNetv2_extract_fingerprint -d D              (only if $nnUNet_preprocessed/DatasetXXX has no fingerprint)
    nnUNetv2_plan_experiment -d D -gpu_memory_target G -overwrite_plans_name NAME
    nnUNetv2_preprocess -d D -plans_name NAME -c CONFIGS

The result is ordinary nnU-Net plans (``-p NAME`` for training and inference); the default plans are not
touched. A lower target gives smaller batches first (2d), then smaller patches and fewer stages (3d, batch
stays >= 2). ``--time K`` times K training iterations per configuration afterwards (in-process loading,
after one warm-up iteration) and estimates the time of a run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from nnunet_ext.benchmark.protocol import BenchmarkError, resolve_dataset
from nnunet_ext.paths import console_script, dataset_id, nnunet_folder

#: default GPU memory target [GB] of plan-small. MSD Hippocampus, nnU-Net 2.8 planner (default target 8 GB:
#: 2d batch 366 x 56x40, 3d_fullres batch 9 x 40x56x40, 13-16 s/iteration on 2 CPU cores):
#:
#:  target | 2d batch x patch     | 3d_fullres batch x patch (stages)
#:  2      | 366 x 56x40 (as 8)   | 9 x 40x56x40 (4)
#:  1      | 196 x 56x40          | 7 x 40x56x40 (4)
#:  0.5    |  98 x 56x40          | 4 x 40x56x40 (4)
#:  0.25   |  49 x 56x40          | 2 x 40x56x32 (4)
#:  0.1    |  20 x 56x40          | 2 x 28x40x28 (3)
#:  0.05   |  10 x 56x40          | 2 x 24x32x20 (3)
#:
#: Measured at 0.1 (2 shared AMD EPYC cores, in-process loading, median of 5 iterations after 1 warm-up): 2d
#: 0.26 s/iteration and 3d_fullres 0.43 s/iteration when the machine was quiet (up to 2.3-2.6 s when other jobs
#: ran), so 1500 iterations take ~7-11 min of training at best and ~30 min under load, plus validation. 2d at
#: 0.1 keeps nnU-Net's patch and network and only shrinks the batch.
DEFAULT_TARGET_GB = 0.1
DEFAULT_PLANS_NAME = "nnUNetPlans_small"


def _run(cmd: List[str], quiet: bool) -> None:
    if not quiet:
        print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed (exit code {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}")


def _preprocessed_complete(pre_dir: Path, plans: dict, config: str, n_cases: int) -> bool:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    ident = plans["configurations"][config].get("data_identifier")
    folder = pre_dir / ident if ident else None
    if folder is None or not folder.is_dir() or not any(folder.iterdir()):
        return False
    try:
        return len(infer_dataset_class(str(folder)).get_identifiers(str(folder))) >= n_cases
    except Exception:  # noqa: BLE001 - unknown / half-written folder
        return False


def plan_small(dataset: str, gpu_memory_target: float = DEFAULT_TARGET_GB, plans_name: str = DEFAULT_PLANS_NAME,
               configurations=("2d",), num_processes: int = 2, planner: Optional[str] = None,
               overwrite: bool = False, quiet: bool = False) -> dict:
    """Plan (and preprocess) ``dataset`` with a small memory target; returns batch and patch per configuration.

    Planning is skipped when ``NAME.json`` exists with the same target (unless ``overwrite``), and
    preprocessing of a configuration when its folder already holds every case: re-running is cheap.
    """
    if gpu_memory_target <= 0:
        raise BenchmarkError("-gpu_memory_target must be > 0 (GB)")
    if plans_name == "nnUNetPlans":
        raise BenchmarkError("give the small plans their own name (-overwrite_plans_name), not nnUNetPlans")
    nnunet_folder("nnUNet_raw", BenchmarkError)
    name = resolve_dataset(dataset)
    pre_dir = nnunet_folder("nnUNet_preprocessed", BenchmarkError) / name
    did = f"{dataset_id(name):03d}"
    if not (pre_dir / "dataset_fingerprint.json").is_file():
        _run([console_script("nnUNetv2_extract_fingerprint"), "-d", did, "-np", str(num_processes)], quiet)
    plans_file = pre_dir / f"{plans_name}.json"
    meta_file = pre_dir / f"{plans_name}.plan_small.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if overwrite or not plans_file.is_file() or meta.get("gpu_memory_target") != gpu_memory_target \
            or meta.get("planner") != planner:
        cmd = [console_script("nnUNetv2_plan_experiment"), "-d", did, "-gpu_memory_target", str(gpu_memory_target),
               "-overwrite_plans_name", plans_name]
        if planner:
            cmd += ["-pl", planner]
        _run(cmd, quiet)
        meta_file.write_text(json.dumps({"gpu_memory_target": gpu_memory_target, "planner": planner}))
    plans = json.loads(plans_file.read_text())
    missing = [c for c in configurations if c not in plans["configurations"]]
    if missing:
        raise BenchmarkError(f"{plans_name} has no configuration {', '.join(missing)} "
                             f"(has: {', '.join(plans['configurations'])})")
    raw_json = json.loads((nnunet_folder("nnUNet_raw", BenchmarkError) / name / "dataset.json").read_text())
    n_cases = int(raw_json.get("numTraining", 0))
    todo = [c for c in configurations if overwrite or not _preprocessed_complete(pre_dir, plans, c, n_cases)]
    if todo:
        _run([console_script("nnUNetv2_preprocess"), "-d", did, "-plans_name", plans_name, "-c", *todo,
              "-np", *[str(num_processes)] * len(todo), "--no_pbar"], quiet)
    res = {"dataset": name, "plans": plans_name, "gpu_memory_target": gpu_memory_target, "configurations": {}}
    for c in configurations:
        cc = plans["configurations"][c]
        res["configurations"][c] = {"batch_size": cc["batch_size"], "patch_size": cc["patch_size"],
                                    "n_stages": cc.get("architecture", {}).get("arch_kwargs", {}).get("n_stages")}
    return res


def time_iterations(dataset: str, configuration: str, plans_name: str, iterations: int = 3,
                    trainer: str = "nnUNetTrainer", device: str = "cpu", fold: int = 0) -> dict:
    """Median seconds of ``iterations`` training iterations (after one warm-up), batches drawn in-process.

    Run in a subprocess by the CLI (it builds an nnU-Net trainer in the current process).
    """
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    os.environ["nnUNet_n_proc_DA"] = "0"
    tr = get_trainer_from_args(resolve_dataset(dataset), configuration, fold, trainer, plans_name,
                               device=torch.device(device))
    tr.initialize()
    dl_tr, dl_val = tr.get_dataloaders()
    tr.network.train()
    times = []
    for i in range(iterations + 1):
        b = next(dl_tr)
        t0 = time.perf_counter()
        tr.train_step(b)
        if i:
            times.append(time.perf_counter() - t0)
    return {"configuration": configuration, "batch_size": tr.batch_size,
            "patch_size": [int(v) for v in tr.configuration_manager.patch_size],
            "s_per_iteration": float(np.median(times)), "times": times, "device": device,
            "threads": torch.get_num_threads()}


def time_in_subprocess(dataset: str, configuration: str, plans_name: str, iterations: int, device: str) -> dict:
    code = ("import json,sys; from nnunet_ext.benchmark.plans import time_iterations; "
            "print('@@' + json.dumps(time_iterations(*sys.argv[1:4], int(sys.argv[4]), device=sys.argv[5])))")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", code, dataset, configuration, plans_name, str(iterations), device],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(f"timing {configuration} failed (exit code {proc.returncode}):\n{proc.stdout[-3000:]}")
