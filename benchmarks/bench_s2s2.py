"""Benchmark: S2S2 speed on MSD Hippocampus (issue #9): iteration-time ratio S2S2 / stock in one run, and the
training-free (GIN) stack generator's throughput.

1. Converts ``../shared/data/msd_hippocampus`` to ``Dataset106_HippocampusS2S2`` in WORKDIR, makes small-budget
   plans (``nnunet-ext plan-small``) and the GIN stack (``nnunet-ext s2s2-generate -k K``), unless done.
2. Builds ``nnUNetTrainer`` and ``nnUNetTrainerS2S2`` on the same plans, draws the paired batches once from the
   S2S2 loader (real image + one copy as extra channels) and times ``train_step`` of both on the same batch
   (stock gets the real channels only), back to back, rotating who goes first. Figure: the median of the
   per-batch ratio S2S2 / stock with a 95% bootstrap interval. Target: at most 2.1 (two passes are inherent).
3. GIN throughput: copies per second of 1-channel 64x64 and 256x256 images (slices), single process.

Writes ``benchmarks/results/s2s2_hippocampus_speed_<date>.{md,json}`` with the command, date and machine.

    python benchmarks/bench_s2s2.py --workdir /tmp/bench_s2s2 --batches 30
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

from common import REPO, bootstrap_median_ci, command_line, dataset_folder, machine, new_record_stem, run, write_record
from common import setup_env as setup_nnunet_folders
from nnunet_ext.paths import console_script


DATASET_ID = 106
PLANS = "nnUNetPlans_small"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "msd_hippocampus"))
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "workdir" / "s2s2"))
    p.add_argument("-c", "--configuration", default="2d")
    p.add_argument("-k", type=int, default=2, help="copies per case in the stack (timing does not depend on K)")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=10000)
    p.add_argument("--gin-images", type=int, default=200, help="images per size for the GIN throughput")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    return p.parse_args(argv)


def prepare(args) -> None:
    if dataset_folder(DATASET_ID) is None:
        run([console_script("nnunet-ext"), "convert", "msd_flat", "--source", args.source, "--id", DATASET_ID,
             "--name", "HippocampusS2S2"])
    run([console_script("nnunet-ext"), "plan-small", "-d", DATASET_ID, "-overwrite_plans_name", PLANS,
         "-c", args.configuration])
    run([console_script("nnunet-ext"), "s2s2-generate", "-d", DATASET_ID, "-c", args.configuration, "-p", PLANS,
         "-k", args.k, "-q"])


def time_steps(args) -> dict:
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.paths import ext_trainer_env

    os.environ.update(ext_trainer_env())
    os.environ["nnUNet_n_proc_DA"] = "0"
    trainers = {}
    for name in ("nnUNetTrainer", "nnUNetTrainerS2S2"):
        torch.manual_seed(0)
        t = get_trainer_from_args(str(DATASET_ID), args.configuration, 0, name, PLANS, device=torch.device("cpu"))
        t.initialize()
        t.network.train()
        trainers[name] = t
    s2s2 = trainers["nnUNetTrainerS2S2"]
    dl, _ = s2s2.get_dataloaders()
    batches = [next(dl) for _ in range(args.warmup + args.batches)]
    if hasattr(dl, "_finish"):
        dl._finish()
    c = s2s2.num_input_channels
    times = {k: [] for k in trainers}
    names = list(trainers)
    for i, b in enumerate(batches):
        real = {"data": b["data"][:, :c], "target": b["target"], "keys": b["keys"]}
        for name in names[i % 2:] + names[:i % 2]:
            t0 = time.perf_counter()
            trainers[name].train_step(b if name == "nnUNetTrainerS2S2" else real)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        if i >= args.warmup:
            print(f"  batch {i - args.warmup + 1}/{args.batches}: stock {times['nnUNetTrainer'][-1]:.2f} s, S2S2 "
                  f"{times['nnUNetTrainerS2S2'][-1]:.2f} s", flush=True)
    ratios = np.asarray(times["nnUNetTrainerS2S2"]) / np.asarray(times["nnUNetTrainer"])
    med, ci = bootstrap_median_ci(ratios, args.bootstrap)
    stock = trainers["nnUNetTrainer"]
    return {"batch_size": stock.batch_size, "patch_size": list(stock.configuration_manager.patch_size),
            "median_seconds": {k: float(np.median(v)) for k, v in times.items()},
            "ratio": {"median_per_batch": med, "ci95": ci,
                      "quartiles": [float(q) for q in np.percentile(ratios, [25, 75])]}, "all_times": times}


def gin_throughput(n: int) -> dict:
    import numpy as np

    from nnunet_ext.s2s2.gin import GINGenerator

    gen, out = GINGenerator(), {}
    rng = np.random.default_rng(0)
    for size in (64, 256):
        data = rng.standard_normal((1, n, size, size)).astype(np.float32)  # n slices of one case
        gen.copy(data[:, :2], "warmup", 0)
        t0 = time.perf_counter()
        gen.copy(data, "case", 0)
        out[f"{size}x{size}"] = n / (time.perf_counter() - t0)
    return out


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.source).is_dir():
        sys.exit(f"Hippocampus source not found: {args.source}; pass --source")
    workdir = Path(args.workdir).resolve()
    setup_nnunet_folders(workdir)
    prepare(args)
    r = time_steps(args)
    gin = gin_throughput(args.gin_images)
    date = _dt.datetime.now().isoformat(timespec="seconds")
    command = command_line(__file__, argv)
    v = r["ratio"]
    lines = ["| config | batch x patch | stock s/it | S2S2 s/it | per-batch ratio: median | 95% CI | quartiles | "
             "target (<= 2.1) |", "|---|---|---|---|---|---|---|---|",
             f"| {args.configuration} | {r['batch_size']} x {r['patch_size']} | "
             f"{r['median_seconds']['nnUNetTrainer']:.2f} | {r['median_seconds']['nnUNetTrainerS2S2']:.2f} | "
             f"{v['median_per_batch']:.3f} | [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] | "
             f"[{v['quartiles'][0]:.3f}, {v['quartiles'][1]:.3f}] | {'met' if v['ci95'][1] <= 2.1 else 'not met'} |",
             "", "GIN stack generator (CPU, one process): " +
             ", ".join(f"{k}: {s:.0f} images/s" for k, s in gin.items()), "",
             f"{args.batches} paired batches after {args.warmup} warm-up batches, plans {PLANS}; stock trains on the "
             "real channels of the same batches."]
    md = "\n".join(lines)
    print(md)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    stem = new_record_stem(res / f"s2s2_hippocampus_speed_{date[:10]}")
    write_record(stem, {"command": command, "date": date, "machine": machine(), "timing": r,
                        "gin_images_per_second": gin},
                 f"# S2S2 vs stock nnU-Net on MSD Hippocampus: time per training iteration\n\n"
                 f"Command: `{command}`  \nDate: {date}  \nMachine: {machine()}\n\n{md}\n")
    print(f"wrote {stem}.md/.json")


if __name__ == "__main__":
    main()
