"""Benchmark: time per training iteration of nnUNetTrainerFD (and variants) vs. stock nnUNetTrainer on
MSD Hippocampus (../shared/data/msd_hippocampus), paired per batch, with a bootstrap confidence interval.

1. Converts the flat Hippocampus copy to ``Dataset104_Hippocampus`` (nnunet_ext.conversion) and runs
   ``nnUNetv2_plan_and_preprocess`` with nnU-Net's default plans (both skipped when already done).
2. For each configuration, builds every trainer in this process on the same plans, draws the batches
   once from nnU-Net's dataloader and times ``train_step`` of every trainer on the *same* batch, back
   to back, rotating who goes first from batch to batch (so drift of the machine and cache effects hit
   all alike). The figure is the median over batches of the per-batch ratio trainer / stock, with a
   95% bootstrap confidence interval (10000 resamples of the batches, percentile method). Target for
   the default nnUNetTrainerFD: upper end of the interval <= 1.05.

Memory allocator: by default the script runs with glibc's malloc keeping freed memory for reuse
(``--allocator caching``; PyTorch's CUDA allocator caches the same way on a GPU). With glibc's defaults
(``--allocator default``) every map above 32 MiB is fresh memory that the kernel faults in and zeroes:
on the 2-core benchmark machine that was half of a stock 2d step's time and most of its noise, and it
charges each extra buffer of a method twice (its own zeroing and slower network backward ops).

Writes ``benchmarks/results/fd_hippocampus_speed_<date>[_default_malloc].json`` and ``.md`` with the
command, date, machine and allocator. Quality comparisons live in
``benchmarks/bench_hippocampus_fd_quality.py`` (``nnunet-ext benchmark``).

    python benchmarks/bench_fd.py --workdir /tmp/bench_fd --batches 30
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import subprocess
import sys
import time
from pathlib import Path

from common import (REPO, add_allocator_argument, allocator_label, bootstrap_median_ci, command_line,
                    dataset_folder, ensure_allocator, machine, new_record_stem, setup_env, write_record)

#: bench_gms.py and gpu_check.py import these from here (kept for them; the other scripts import them from common)
__all__ = ["machine", "write_record", "new_record_stem"]
DATASET_ID = 104
STOCK = "nnUNetTrainer"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "msd_hippocampus"))
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "workdir" / "fd"))
    p.add_argument("--configs", default="2d,3d_fullres")
    p.add_argument("--trainers", default="nnUNetTrainerFD,nnUNetTrainerFD_allBlocks",
                   help="trainers compared with stock nnUNetTrainer")
    p.add_argument("--batches", type=int, default=30, help="timed batches per configuration (each timed for all)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=10000)
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    add_allocator_argument(p)
    return p.parse_args(argv)


def prepare(args, configs) -> str:
    from nnunet_ext.conversion.msd import convert_msd_flat
    from nnunet_ext.paths import console_script

    existing = dataset_folder(DATASET_ID)
    folder = str(existing) if existing else convert_msd_flat(args.source, DATASET_ID, raw_root=os.environ["nnUNet_raw"])
    name = Path(folder).name
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    missing = [c for c in configs if not (pre / f"nnUNetPlans_{c}").is_dir()]
    if missing:
        subprocess.run([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID),
                        "-c", *missing, "-npfp", "2", "-np", "2"], check=True)
    return name


def time_config(config: str, trainer_names, args) -> dict:
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.paths import ext_trainer_env

    os.environ.update(ext_trainer_env())
    os.environ["nnUNet_n_proc_DA"] = "0"  # batches drawn in this process (0 breaks planning, so set only here)
    names = [STOCK] + list(trainer_names)
    trainers = {}
    for name in names:
        torch.manual_seed(0)  # same initial weights for all
        t = get_trainer_from_args(str(DATASET_ID), config, args.fold, name, "nnUNetPlans", device=torch.device("cpu"))
        t.initialize()
        t.network.train()
        trainers[name] = t
    dl_tr, _ = trainers[STOCK].get_dataloaders()
    batches = [next(dl_tr) for _ in range(args.warmup + args.batches)]
    if hasattr(dl_tr, "_finish"):
        dl_tr._finish()
    times = {k: [] for k in names}
    t_start = time.time()
    for i, b in enumerate(batches):
        shift = i % len(names)
        order = names[shift:] + names[:shift]  # rotate who goes first
        for name in order:
            t0 = time.perf_counter()
            trainers[name].train_step(b)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)
        if i >= args.warmup:
            r = times[names[1]][-1] / times[STOCK][-1] if len(names) > 1 else 1.0
            print(f"  {config} batch {i - args.warmup + 1}/{args.batches}: stock {times[STOCK][-1]:.2f} s, "
                  f"{names[1] if len(names) > 1 else ''} / stock {r:.3f}  ({time.time() - t_start:.0f} s)", flush=True)
    stock = np.asarray(times[STOCK])
    out = {"config": config, "batch_size": trainers[STOCK].batch_size,
           "patch_size": list(trainers[STOCK].configuration_manager.patch_size),
           "median_seconds_per_iteration": {k: float(np.median(v)) for k, v in times.items()},
           "all_times": times, "ratios": {}}
    for name in trainer_names:
        per_batch = np.asarray(times[name]) / stock
        med, ci = bootstrap_median_ci(per_batch, args.bootstrap)
        out["ratios"][name] = {"median_per_batch_ratio": med, "ci95": ci,
                               "quartiles": [float(q) for q in np.percentile(per_batch, [25, 75])],
                               "ratio_of_medians": float(np.median(times[name]) / np.median(stock))}
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ensure_allocator(args, argv, __file__)
    if not Path(args.source).is_dir():
        sys.exit(f"Hippocampus source not found: {args.source} (expected images/ and labels/ of MSD Task04); "
                 f"pass --source")
    if args.batches < 2:
        sys.exit("--batches must be at least 2 (30 for the recorded figure)")
    workdir = Path(args.workdir).resolve()
    setup_env(workdir)
    configs = [c for c in args.configs.split(",") if c]
    trainer_names = [t for t in args.trainers.split(",") if t]
    name = prepare(args, configs)
    result = {"command": command_line(__file__, argv),
              "allocator": allocator_label(args),
              "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "dataset": name, "batches": args.batches, "warmup": args.warmup, "timing": []}
    for config in configs:
        result["timing"].append(time_config(config, trainer_names, args))
    lines = ["| config | batch x patch | trainer | stock s/it | trainer s/it | per-batch ratio: median "
             "| 95% CI (bootstrap) | quartiles | target (upper CI <= 1.05) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["timing"]:
        s = r["median_seconds_per_iteration"]
        for tr, v in r["ratios"].items():
            lo, hi = v["ci95"]
            target = ("met" if hi <= 1.05 else "not met") if tr == "nnUNetTrainerFD" else "-"
            lines.append(f"| {r['config']} | {r['batch_size']} x {r['patch_size']} | {tr} | {s[STOCK]:.2f} | "
                         f"{s[tr]:.2f} | {v['median_per_batch_ratio']:.3f} | [{lo:.3f}, {hi:.3f}] | "
                         f"[{v['quartiles'][0]:.3f}, {v['quartiles'][1]:.3f}] | {target} |")
    lines += ["", f"{args.batches} batches per configuration after {args.warmup} warm-up batches, nnU-Net's default "
              "plans, fold 0. Every batch is timed for every trainer back to back (rotating who goes first); the "
              "figure is the median over batches of the per-batch ratio trainer / stock, with a 95% percentile "
              f"bootstrap interval ({args.bootstrap} resamples of the batches)."]
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    stem = new_record_stem(res_dir / (f"fd_hippocampus_speed_{result['date'][:10]}"
                                      + ("_default_malloc" if args.allocator == "default" else "")))
    header = (f"Command: `{result['command']}`  \nDate: {result['date']}  \nMachine: {result['machine']}  \n"
              f"Allocator: {result['allocator']}\n\n")
    table = "\n".join(lines)
    print(table)
    write_record(stem, result, "# FD vs stock nnU-Net on MSD Hippocampus: time per training iteration\n\n"
                               f"{header}{table}\n")
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
