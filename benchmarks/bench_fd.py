"""Benchmark: nnUNetTrainerFD vs. stock nnUNetTrainer on MSD Hippocampus (../shared/data/msd_hippocampus).

1. Converts the flat Hippocampus copy to ``Dataset104_Hippocampus`` (nnunet_ext.conversion) and runs
   ``nnUNetv2_plan_and_preprocess`` (both skipped when already done in the work folder).
2. Speed: builds both trainers in this process on the same plans, draws a set of batches once
   from nnU-Net's dataloader and times ``train_step`` on the *same* batches, alternating stock / FD
   blocks so that drift of the machine hits both equally. Reports the median seconds per iteration,
   their ratio FD / stock (target: <= 1.10) and the quartiles of the per-batch ratios.
3. Quality (``--quality-epochs > 0``): trains both with ``nnUNetv2_train`` on fold 0 with the same short
   schedule (generated ``*_bench`` variants) and reports nnU-Net's final validation Dice on the
   fold-0 held-out cases (``summary.json``).

Writes ``benchmarks/results/fd_hippocampus_{speed,quality}_<date>.json`` and ``.md`` with the command,
date and machine.

    python benchmarks/bench_fd.py --workdir /tmp/bench_fd --timing-iterations 6 --quality-epochs 5
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASET_ID = 104


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "msd_hippocampus"))
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "workdir" / "fd"))
    p.add_argument("--configs", default="3d_fullres,2d")
    p.add_argument("--timing-iterations", type=int, default=6,
                   help="timed iterations per trainer and config (0: skip the speed comparison)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per trainer first")
    p.add_argument("--quality-epochs", type=int, default=0, help="0: skip the quality comparison")
    p.add_argument("--quality-iterations", type=int, default=25)
    p.add_argument("--quality-config", default="3d_fullres")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    return p.parse_args(argv)


def setup_env(workdir: Path):
    for k, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        os.environ[k] = str(workdir / sub)
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", "2")


def prepare(args, workdir: Path) -> str:
    from nnunet_ext.conversion.msd import convert_msd_flat

    raw = Path(os.environ["nnUNet_raw"])
    existing = list(raw.glob(f"Dataset{DATASET_ID:03d}_*"))
    folder = str(existing[0]) if existing else convert_msd_flat(args.source, DATASET_ID, raw_root=str(raw))
    name = Path(folder).name
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    configs = [c for c in args.configs.split(",") if c]
    if args.quality_epochs:
        configs = list(dict.fromkeys(configs + [args.quality_config]))
    missing = [c for c in configs if not (pre / f"nnUNetPlans_{c}").is_dir()]
    if missing:
        subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID),
                        "-c", *missing, "-npfp", "2", "-np", "2"], check=True)
    return name


def time_config(config: str, args) -> dict:
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.paths import ext_trainer_env

    os.environ.update(ext_trainer_env())
    os.environ["nnUNet_n_proc_DA"] = "0"  # batches drawn in this process (0 breaks planning, so set only here)
    trainers = {}
    for name in ("nnUNetTrainer", "nnUNetTrainerFD"):
        t = get_trainer_from_args(str(DATASET_ID), config, args.fold, name, "nnUNetPlans", device=torch.device("cpu"))
        t.initialize()
        trainers[name] = t
    stock = trainers["nnUNetTrainer"]
    dl_tr, _ = stock.get_dataloaders()
    n = args.warmup + args.timing_iterations
    batches = [next(dl_tr) for _ in range(n)]
    for obj in (dl_tr,):
        if hasattr(obj, "_finish"):
            obj._finish()
    for t in trainers.values():
        t.network.train()
    times = {k: [] for k in trainers}
    for i, b in enumerate(batches):
        order = list(trainers) if i % 2 == 0 else list(trainers)[::-1]  # alternate who goes first
        for name in order:
            t0 = time.perf_counter()
            trainers[name].train_step(b)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)
    med = {k: float(np.median(v)) for k, v in times.items()}
    paired = np.asarray(times["nnUNetTrainerFD"]) / np.asarray(times["nnUNetTrainer"])
    return {"config": config, "batch_size": stock.batch_size,
            "patch_size": list(stock.configuration_manager.patch_size),
            "seconds_per_iteration": med, "all_times": times,
            "ratio_fd_over_stock": med["nnUNetTrainerFD"] / med["nnUNetTrainer"],
            # the same batch timed back to back: a second estimate, and its spread shows the machine's noise
            "paired_ratio_quartiles": [float(q) for q in np.percentile(paired, [25, 50, 75])]}


def quality(args, name: str) -> dict:
    from nnunet_ext.core.schedule import schedule_variant_source
    from nnunet_ext.paths import ext_trainer_env

    workdir = Path(args.workdir)
    tdir = workdir / "bench_trainers"
    tdir.mkdir(exist_ok=True)
    sched = {"num_epochs": args.quality_epochs, "num_iterations_per_epoch": args.quality_iterations,
             "num_val_iterations_per_epoch": 10}
    bases = {"nnUNetTrainer": "nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnUNetTrainerFD": "nnunet_ext.fd.trainer"}
    env = ext_trainer_env([tdir])
    env["nnUNet_n_proc_DA"] = "1"
    out = {}
    for base, mod in bases.items():
        variant = f"{base}_bench"
        (tdir / f"bench_{base}.py").write_text(schedule_variant_source(mod, base, variant, sched))
        fold_dir = Path(os.environ["nnUNet_results"]) / name / f"{variant}__nnUNetPlans__{args.quality_config}" / \
            f"fold_{args.fold}"
        t0 = time.time()
        if not (fold_dir / "validation" / "summary.json").is_file():
            cmd = [str(Path(sys.executable).parent / "nnUNetv2_train"), str(DATASET_ID), args.quality_config,
                   str(args.fold), "-tr", variant, "-device", "cpu"]
            if (fold_dir / "checkpoint_latest.pth").is_file():
                cmd.append("--c")
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
        out[base] = {"dice_per_class": {k: v["Dice"] for k, v in summary["mean"].items()},
                     "foreground_dice": summary["foreground_mean"]["Dice"],
                     "n_validation_cases": len(summary["metric_per_case"]), "wall_s": time.time() - t0}
    return {"config": args.quality_config, "fold": args.fold, "schedule": sched, "trainers": out}


def machine() -> str:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, CPU"


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.source).is_dir():
        sys.exit(f"Hippocampus source not found: {args.source} (expected images/ and labels/ of MSD Task04); "
                 f"pass --source")
    workdir = Path(args.workdir).resolve()
    setup_env(workdir)
    name = prepare(args, workdir)
    result = {"command": "python " + " ".join([os.path.relpath(__file__, REPO)] + (argv or sys.argv[1:])),
              "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "dataset": name, "timing": [], "quality": None}
    for config in [c for c in args.configs.split(",") if c] if args.timing_iterations > 0 else []:
        r = time_config(config, args)
        result["timing"].append(r)
        print(f"{config}: stock {r['seconds_per_iteration']['nnUNetTrainer']:.3f} s/it, "
              f"FD {r['seconds_per_iteration']['nnUNetTrainerFD']:.3f} s/it, ratio {r['ratio_fd_over_stock']:.3f}")
    if args.quality_epochs:
        result["quality"] = quality(args, name)
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    header = f"Command: `{result['command']}`  \nDate: {result['date']}  \nMachine: {result['machine']}\n\n"
    if result["timing"]:
        lines = ["| config | batch x patch | stock s/it | FD s/it | FD / stock (target <= 1.10) "
                 "| per-batch FD / stock: median [quartiles] |", "|---|---|---|---|---|---|"]
        for r in result["timing"]:
            s = r["seconds_per_iteration"]
            q25, q50, q75 = r["paired_ratio_quartiles"]
            lines.append(f"| {r['config']} | {r['batch_size']} x {r['patch_size']} | {s['nnUNetTrainer']:.3f} | "
                         f"{s['nnUNetTrainerFD']:.3f} | {r['ratio_fd_over_stock']:.3f} | {q50:.3f} [{q25:.3f}, {q75:.3f}] |")
        lines += ["", f"Median seconds over {args.timing_iterations} batches after {args.warmup} warm-up batches; "
                  "FD / stock is the ratio of the medians. Each batch is timed for both trainers back to back "
                  "(alternating who goes first); the last column is the distribution of those per-batch ratios."]
        _write(res_dir / f"fd_hippocampus_speed_{result['date'][:10]}", "FD vs stock nnU-Net on MSD Hippocampus: "
               "time per training iteration", header, "\n".join(lines), {k: v for k, v in result.items() if k != "quality"})
    if result["quality"]:
        q = result["quality"]
        lines = [f"{q['config']}, fold {q['fold']}, {q['schedule']['num_epochs']} epochs x "
                 f"{q['schedule']['num_iterations_per_epoch']} iterations each, nnU-Net's final validation Dice on "
                 f"the {next(iter(q['trainers'].values()))['n_validation_cases']} held-out fold-{q['fold']} cases", "",
                 "| trainer | Dice per class | foreground Dice | wall [s] |", "|---|---|---|---|"]
        for tr, v in q["trainers"].items():
            per = ", ".join(f"{k}: {d:.4f}" for k, d in v["dice_per_class"].items())
            lines.append(f"| {tr} | {per} | {v['foreground_dice']:.4f} | {v['wall_s']:.0f} |")
        _write(res_dir / f"fd_hippocampus_quality_{result['date'][:10]}", "FD vs stock nnU-Net on MSD Hippocampus: "
               "short-budget Dice", header, "\n".join(lines), {k: v for k, v in result.items() if k != "timing"})


def _write(stem: Path, title: str, header: str, table: str, payload: dict) -> None:
    print(table)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    stem.with_suffix(".md").write_text(f"# {title}\n\n{header}{table}\n")
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
