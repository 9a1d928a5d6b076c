"""``nnunet-ext demo``: the whole nnU-Net pipeline, stock vs. nnunet_ext trainers, on a phantom.

Steps (each skipped when its output already exists, so an interrupted demo resumes):

1. write a synthetic hippocampus-like MRI dataset (``nnunet_ext.core.synthetic``) in nnU-Net raw
   format, with held-out cases in ``imagesTs``/``labelsTs``;
2. ``nnUNetv2_plan_and_preprocess``;
3. ``nnUNetv2_train`` for every trainer with the same short schedule (generated one-line variants
   ``<Trainer>_demo`` in ``<workdir>/trainers``, put first on ``nnUNet_extTrainer``);
4. ``nnUNetv2_predict`` on the held-out cases;
5. Dice per class, train time per trainer: a table on the console, ``report.md`` with overlay
   PNGs and ``results.json`` in the work folder.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "Phantom"
QUICK = {"epochs": 6, "iterations": 25}
LONG = {"epochs": 50, "iterations": 100}


TIME_NOTE = ("s/epoch: median [quartiles] of the epoch wall times; the time ratio compares medians. Wall times on a "
             "shared machine are noisy (another job can halve a ratio): speed is measured on identical batches by "
             "benchmarks/bench_fd.py.")


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="nnunet_ext_demo", help="folder for raw/preprocessed/results and the report")
    p.add_argument("--trainers", default="nnUNetTrainer,nnUNetTrainerFD",
                   help="comma-separated trainer classes to compare (stock first is the reference)")
    p.add_argument("--configuration", default="3d_fullres", help="nnU-Net configuration to train")
    p.add_argument("--long", action="store_true", default=argparse.SUPPRESS,
                   help=f"longer run: {LONG['epochs']} epochs x {LONG['iterations']} iterations instead of "
                        f"{QUICK['epochs']} x {QUICK['iterations']} (the quick default: under 10 minutes on 2 CPU "
                        f"cores)")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--iterations", type=int, default=None, help="override the iterations per epoch")
    p.add_argument("--train-cases", type=int, default=20, help="phantom training cases")
    p.add_argument("--test-cases", type=int, default=5, help="held-out phantom cases")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="training/prediction device")
    p.add_argument("--seed", type=int, default=0, help="phantom generator seed")


def _env(workdir: Path, demo_trainers: Path) -> dict:
    from nnunet_ext.paths import ext_trainer_env

    env = ext_trainer_env([demo_trainers])
    env.update(nnUNet_raw=str(workdir / "nnUNet_raw"), nnUNet_preprocessed=str(workdir / "nnUNet_preprocessed"),
               nnUNet_results=str(workdir / "nnUNet_results"))
    env.setdefault("nnUNet_def_n_proc", str(min(4, os.cpu_count() or 1)))
    env.setdefault("nnUNet_n_proc_DA", str(max(1, min(4, (os.cpu_count() or 2) - 1))))
    return env


def _run(cmd, env, log: Path, progress=None) -> None:
    """Run a command, output to ``log``; optional ``progress(log)`` callback polled while it runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=f, stderr=subprocess.STDOUT)
        stop = threading.Event()
        if progress is not None:
            t = threading.Thread(target=progress, args=(stop,), daemon=True)
            t.start()
        rc = proc.wait()
        stop.set()
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed with exit code {rc}; full log: {log}\n{tail}")


def _demo_variant(trainer: str, schedule: dict, env: dict) -> tuple[str, str]:
    """(variant class name, module source) of a short-schedule subclass of ``trainer``.

    The trainer is looked up as ``nnUNetv2_train`` would, with the demo's ``nnUNet_extTrainer``; the module is
    written by the project's one variant generator (:func:`nnunet_ext.core.schedule.variant_source`).
    """
    from unittest import mock

    from nnunet_ext.core.schedule import variant_source
    from nnunet_ext.errors import UserError
    from nnunet_ext.paths import find_trainer_class

    with mock.patch.dict(os.environ, {"nnUNet_extTrainer": env["nnUNet_extTrainer"]}):
        cls = find_trainer_class(trainer)
    if cls is None:
        raise UserError(f"--trainers: nnU-Net does not find {trainer} (nnunet-ext trainers {trainer} says why)")
    name = f"{trainer}_demo"
    return name, variant_source(cls, name, schedule, generated_by="nnunet-ext demo")


def _epoch_progress(log_folder: Path, total: int, desc: str):
    from tqdm import tqdm

    def poll(stop: threading.Event):
        bar = tqdm(total=total, desc=desc, unit="epoch", leave=True)
        done = 0
        while not stop.is_set():
            logs = sorted(log_folder.glob("training_log_*.txt")) if log_folder.is_dir() else []
            if logs:
                n = len(re.findall(r"Epoch time:", logs[-1].read_text(errors="ignore")))
                if n > done:
                    bar.update(n - done)
                    done = n
            stop.wait(2.0)
        bar.close()
    return poll


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels) -> dict:
    out = {}
    for c in labels:
        p, r = pred == c, ref == c
        denom = p.sum() + r.sum()
        out[c] = float(2 * np.logical_and(p, r).sum() / denom) if denom else float("nan")
    return out


def run_demo(args) -> dict:
    import SimpleITK as sitk
    import torch

    from nnunet_ext.atomic_io import move_folder_atomic, write_json_atomic
    from nnunet_ext.core.synthetic import DEMO_SPEC, generate_dataset_3d
    from nnunet_ext.core.trainer import NNUNET_LOG_KEYS
    from nnunet_ext.core.schedule import write_variant_module
    from nnunet_ext.demo.report import write_report
    from nnunet_ext.paths import console_script, dataset_folder_name, require_output_folder

    t_start = time.time()
    workdir = require_output_folder(args.workdir, "--workdir").resolve()
    budget = dict(LONG if getattr(args, "long", False) else QUICK)
    if args.epochs:
        budget["epochs"] = args.epochs
    if args.iterations:
        budget["iterations"] = args.iterations
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    demo_trainers = workdir / "trainers"
    env = _env(workdir, demo_trainers)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[k]).mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    ds_name = dataset_folder_name(DEMO_DATASET_ID, DEMO_DATASET_NAME)
    raw = Path(env["nnUNet_raw"]) / ds_name
    print(f"nnunet_ext demo in {workdir} (device {device}, {budget['epochs']} epochs x {budget['iterations']} "
          f"iterations per trainer)")
    # the trainers first (a mistyped name fails here, before any heavy work)
    schedule = {"num_epochs": budget["epochs"], "num_iterations_per_epoch": budget["iterations"],
                "num_val_iterations_per_epoch": max(2, budget["iterations"] // 5)}
    sources = {tr: _demo_variant(tr, schedule, env) for tr in trainers}

    # 1. data
    if not (raw / "dataset.json").is_file():
        print(f"[1/5] writing phantom dataset {ds_name}: {args.train_cases} training + {args.test_cases} test cases")
        tmp = Path(env["nnUNet_raw"]) / f".tmp_{ds_name}"
        tmp.mkdir(parents=True, exist_ok=True)
        generate_dataset_3d(str(tmp), DEMO_DATASET_ID, DEMO_DATASET_NAME, args.train_cases, args.test_cases,
                            spec=DEMO_SPEC, seed=args.seed)
        move_folder_atomic(tmp / ds_name, raw)
        tmp.rmdir()
    else:
        print(f"[1/5] dataset {ds_name} exists, kept")

    # 2. plan and preprocess
    plans = Path(env["nnUNet_preprocessed"]) / ds_name / "nnUNetPlans.json"
    if not plans.is_file() or not (plans.parent / f"nnUNetPlans_{args.configuration}").is_dir():
        print("[2/5] nnUNetv2_plan_and_preprocess")
        n = env["nnUNet_def_n_proc"]
        _run([console_script("nnUNetv2_plan_and_preprocess"), "-d", DEMO_DATASET_ID, "-c", args.configuration,
              "-npfp", n, "-np", n, "--verify_dataset_integrity"], env, logs / "plan_and_preprocess.log")
    else:
        print("[2/5] plans and preprocessed data exist, kept")

    # 3. train
    results = {"budget": budget, "device": device, "trainers": {}}
    variants = {}
    for tr, (name, src) in sources.items():
        write_variant_module(demo_trainers / f"demo_{name}.py", src)
        variants[tr] = name
    for i, tr in enumerate(trainers):
        name = variants[tr]
        fold = Path(env["nnUNet_results"]) / ds_name / f"{name}__nnUNetPlans__{args.configuration}" / "fold_0"
        if (fold / "checkpoint_final.pth").is_file():
            print(f"[3/5] {tr}: trained model exists, kept")
        else:
            print(f"[3/5] training {tr} ({i + 1}/{len(trainers)}), log: {logs / f'train_{tr}.log'}")
            cmd = [console_script("nnUNetv2_train"), DEMO_DATASET_ID, args.configuration, 0, "-tr", name,
                   "-device", device]
            if (fold / "checkpoint_latest.pth").is_file():
                cmd.append("--c")  # resume an interrupted run
            _run(cmd, env, logs / f"train_{tr}.log", _epoch_progress(fold, budget["epochs"], tr))
        ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        lg = ckpt["logging"]
        epoch_s = [e - s for s, e in zip(lg["epoch_start_timestamps"], lg["epoch_end_timestamps"])]
        results["trainers"][tr] = {"variant": name, "train_time_s": float(np.sum(epoch_s)),
                                   "epoch_time_s": float(np.median(epoch_s)),
                                   "epoch_time_iqr_s": [float(q) for q in np.percentile(epoch_s, [25, 75])],
                                   "aux": {k: float(v[-1]) for k, v in lg.items() if k not in NNUNET_LOG_KEYS},
                                   "fold": str(fold)}

    # 4. predict held-out cases
    preds = workdir / "predictions"
    for tr in trainers:
        out = preds / tr
        cases = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
        if out.is_dir() and all((out / c.name.replace("_0000.nii.gz", ".nii.gz")).is_file() for c in cases):
            print(f"[4/5] {tr}: predictions exist, kept")
            continue
        print(f"[4/5] nnUNetv2_predict with {tr} on {len(cases)} held-out cases")
        _run([console_script("nnUNetv2_predict"), "-i", raw / "imagesTs", "-o", out, "-d", DEMO_DATASET_ID, "-c",
              args.configuration, "-f", 0, "-tr", variants[tr], "-device", device, "-npp", 1, "-nps", 1],
             env, logs / f"predict_{tr}.log")

    # 5. evaluate and report
    labels = json.loads((raw / "dataset.json").read_text())["labels"]
    fg = {v: k for k, v in labels.items() if v != 0}
    refs = sorted((raw / "labelsTs").glob("*.nii.gz"))
    for tr in trainers:
        per_case = {}
        for r in refs:
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(r)))
            pred = sitk.GetArrayFromImage(sitk.ReadImage(str(preds / tr / r.name)))
            per_case[r.name] = dice_per_class(pred, ref, fg)
        mean = {fg[c]: float(np.nanmean([d[c] for d in per_case.values()])) for c in fg}
        results["trainers"][tr].update(dice=mean, dice_per_case={k: {fg[c]: v for c, v in d.items()}
                                                                   for k, d in per_case.items()})
    results["wall_time_s"] = time.time() - t_start
    report = write_report(workdir, raw, preds, trainers, results)
    print()
    print(report["table"])
    print(TIME_NOTE)
    print()
    print(f"report: {report['path']}   (total {results['wall_time_s'] / 60:.1f} min)")
    write_json_atomic(workdir / "results.json", results)
    return results
