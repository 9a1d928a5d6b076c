"""Benchmark: coarse-to-fine inference (``nnunet-ext predict-c2f``) vs stock ``nnUNetv2_predict -c 3d_fullres``
(issue #12), on volumes where the organs are a small part of the field of view.

Data (``--data``):

* ``synthetic`` (default): ``nnunet_ext.core.synthetic.generate_abdomen_dataset_3d``, a CT-like abdomen (air,
  fat, muscle, 3 organs packed in a ~45 x 50 x 50 mm block at a random place) of ``--shape`` voxels at
  ``--spacing`` mm; ``--train`` training and ``--test`` held-out cases;
* ``la2018``: ``../shared/data/la2018_h5`` converted with the project's ``la2018`` converter (its held-out list
  as test cases). These volumes are already cropped around the atrium (label ~10% of the volume), so little is
  left for coarse-to-fine to save.

Steps, all resumable (re-run the same command):

1. plans: ``nnunet-ext plan-small -c 3d_fullres -gpu_memory_target G`` (nnU-Net's planner at a small memory target,
   plans ``nnUNetPlans_small``), then ``nnunet-ext plan-c2f -p nnUNetPlans_small -gpu_memory_target G`` (same
   planner, same target) adds ``3d_coarse`` (``--coarse-size``) and ``3d_fine`` (20 mm margin);
2. training, per seed (``$nnUNet_ext_seed``): ``nnUNetv2_train D 3d_fullres 0``, ``... 3d_coarse 0``,
   ``... 3d_fine 0`` with ``nnUNetTrainer_c2fBench`` (stock nnU-Net, ``--epochs`` x 50 iterations, written into
   ``WORKDIR/trainers``), all on fold 0 of the training cases;
3. inference on the test cases, each tool run as a user would (one process for all cases, wall time from start to
   exit divided by the number of cases, so model loading counts for both; peak RAM = ``ru_maxrss`` of the tool's
   process tree from ``wait4``, the largest single process):
   ``nnUNetv2_predict -c 3d_fullres`` with nnU-Net's defaults (mirroring, step 0.5), the same with
   ``--disable_tta`` (to show how much of the gain is only mirroring), and ``nnunet-ext predict-c2f`` with its
   defaults (no mirroring, step 0.75; its per-case CSV gives read / coarse / fine / write and the network share);
4. ``nnunet-ext evaluate`` (Dice, NSD at 1 mm) of each against the reference; paired per-case differences
   (predict-c2f - stock, mean over organs per case, seeds averaged) with 95% bootstrap intervals.

Goal (issue #12): at least 5x faster than stock with Dice within 1 point, at least 70% of the wall time in the
networks. Results: ``benchmarks/results/c2f_<data>_<date>.{md,json}``.

    python benchmarks/bench_c2f.py --workdir /work/bench/c2f --gpu-memory-target 0.1 --epochs 10 --seeds 0 -device cpu
    python benchmarks/bench_c2f.py ... --repredict      # time the inference again (a quieter machine), same models

Timing: wall and CPU time (user + system of the tool's process tree) per case are both reported; on a shared
machine the wall-time ratio depends on the other load at each moment, the CPU-time ratio much less.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import REPO, SHARED, dataset_folder, machine, run, write_record
from common import setup_env as setup_nnunet_folders
from nnunet_ext.atomic_io import write_json_atomic
from nnunet_ext.paths import console_script, ext_trainer_env

DATASETS = {"synthetic": 611, "la2018": 612}
PLANS = "nnUNetPlans_small"
TRAINER = "nnUNetTrainer_c2fBench"
CONFIGS = ("3d_fullres", "3d_coarse", "3d_fine")
SCHEDULE = {"num_iterations_per_epoch": 50, "num_val_iterations_per_epoch": 5, "save_every": 1}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "workdir" / "c2f"))
    p.add_argument("--data", choices=sorted(DATASETS), default="synthetic")
    p.add_argument("--shape", type=int, nargs=3, default=[40, 128, 128], help="synthetic volume size (z y x)")
    p.add_argument("--spacing", type=float, nargs=3, default=[2.5, 1.5, 1.5], help="synthetic spacing (z y x) mm")
    p.add_argument("--train", type=int, default=20, help="synthetic training cases")
    p.add_argument("--test", type=int, default=8, help="synthetic test cases")
    p.add_argument("--gpu-memory-target", type=float, default=0.25, help="planner memory target (GB), both plans")
    p.add_argument("--coarse-size", type=int, default=48, help="plan-c2f --coarse-size (FLARE: 160 for 512^2 CT)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of 50 iterations per model")
    p.add_argument("--seeds", default="0")
    p.add_argument("-device", default="cpu")
    p.add_argument("--repredict", action="store_true",
                   help="predict and time again (keeps the trained models), e.g. on a machine that is quieter now")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    return p.parse_args(argv)


def prepare(args, workdir: Path) -> tuple:
    raw = Path(os.environ["nnUNet_raw"])
    did = DATASETS[args.data]
    if dataset_folder(did) is None:
        if args.data == "synthetic":
            from nnunet_ext.core.synthetic import generate_abdomen_dataset_3d
            generate_abdomen_dataset_3d(str(raw), did, name="AbdomenBench", num_train=args.train, num_test=args.test,
                                        shape=tuple(args.shape), spacing=tuple(args.spacing), seed=1234)
        else:
            run([console_script("nnunet-ext"), "convert", "la2018", "--source", SHARED / "data" / "la2018_h5",
                 "--id", did, "--holdout-test"])
    name = dataset_folder(did).name
    run([console_script("nnunet-ext"), "plan-small", "-d", did, "-gpu_memory_target", args.gpu_memory_target,
         "-overwrite_plans_name", PLANS, "-c", "3d_fullres"])
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    n_train = json.loads((raw / name / "dataset.json").read_text())["numTraining"]
    done = all(c in plans["configurations"] and len(list((pre / f"{PLANS}_{c}").glob("*.pkl"))) == n_train
               for c in ("3d_coarse", "3d_fine"))
    if not done:
        run([console_script("nnunet-ext"), "plan-c2f", "-d", did, "-p", PLANS, "-gpu_memory_target",
             args.gpu_memory_target, "--coarse-size", args.coarse_size, "-np", 2])
    return did, name


def train(args, workdir: Path, did: int, seed: int) -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.benchmark.variant import BenchMixin
    from nnunet_ext.core.schedule import ScheduleMixin, variant_source, write_variant_module
    from nnunet_ext.core.seeding import SeedMixin

    tdir = workdir / "trainers"
    src = variant_source(nnUNetTrainer, TRAINER, {"num_epochs": args.epochs, **SCHEDULE},
                         mixins=(BenchMixin, ScheduleMixin, SeedMixin), generated_by="benchmarks/bench_c2f.py",
                         doc="Stock nnU-Net with the benchmark's budget and seed.")
    write_variant_module(tdir / "c2f_bench_trainers.py", src)
    env = dict(ext_trainer_env([tdir]), nnUNet_results=str(workdir / f"results_seed{seed}"), nnUNet_ext_seed=str(seed))
    for c in CONFIGS:
        fold = Path(env["nnUNet_results"]) / dataset_folder(did).name / f"{TRAINER}__{PLANS}__{c}" / "fold_0"
        if (fold / "checkpoint_final.pth").is_file():
            continue
        cmd = [console_script("nnUNetv2_train"), did, c, 0, "-tr", TRAINER, "-p", PLANS, "-device", args.device]
        if (fold / "checkpoint_latest.pth").is_file():
            cmd.append("--c")
        run(cmd, env)


def timed(cmd, env) -> dict:
    """Run ``cmd``; wall time and the peak RSS of its process tree (largest single process, from ``wait4``)."""
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_ram_mb": usage.ru_maxrss / 1024.0,
            "returncode": proc.returncode}


def predict_and_evaluate(args, workdir: Path, did: int, name: str, seed: int) -> dict:
    raw = Path(os.environ["nnUNet_raw"]) / name
    images, labels = raw / "imagesTs", raw / "labelsTs"
    n = len(list(labels.glob("*.nii.gz")))
    results = workdir / f"results_seed{seed}"
    env = dict(ext_trainer_env([workdir / "trainers"]), nnUNet_results=str(results))
    out = {}
    tools = {
        "stock": [console_script("nnUNetv2_predict"), "-i", images, "-d", did, "-c", "3d_fullres", "-p", PLANS,
                  "-tr", TRAINER, "-f", 0, "-device", args.device],
        "stock_noTTA": [console_script("nnUNetv2_predict"), "-i", images, "-d", did, "-c", "3d_fullres", "-p",
                        PLANS, "-tr", TRAINER, "-f", 0, "-device", args.device, "--disable_tta"],
        "c2f": [console_script("nnunet-ext"), "predict-c2f", "-i", images, "-d", did, "-p", PLANS, "-tr", TRAINER,
                "-f", 0, "-device", args.device],
    }
    for tool, cmd in tools.items():
        pred = workdir / f"pred_seed{seed}_{tool}"
        meta = pred.with_name(pred.name + ".json")
        if args.repredict and meta.is_file():
            meta.unlink()
        if meta.is_file():
            out[tool] = json.loads(meta.read_text())
            continue
        if pred.exists():
            import shutil
            shutil.rmtree(pred)  # an interrupted run: its timing would be wrong, predict again
        r = timed(cmd + ["-o", pred], env)
        if r["returncode"] != 0:
            sys.exit(f"{tool} failed ({r['returncode']}); re-run to continue")
        r["per_case_s"] = r["wall_s"] / n
        r["cpu_per_case_s"] = r["cpu_s"] / n
        if tool == "c2f":
            rows = list(csv.DictReader(open(pred / "predict_c2f_cases.csv")))
            r["cases"] = {row["case"]: {k: row[k] for k in ("read_s", "coarse_s", "fine_s", "write_s", "total_s",
                                                            "network_s", "peak_ram_mb", "roi")} for row in rows}
            r["network_share"] = float(np.sum([float(x["network_s"]) for x in rows]) /
                                       np.sum([float(x["total_s"]) for x in rows]))
            r["case_mean_s"] = float(np.mean([float(x["total_s"]) for x in rows]))
        run([console_script("nnunet-ext"), "evaluate", "-gt", labels, "-pred", pred, "-d", did,
             "-o", pred.with_name(pred.name + "_eval")])
        r["per_case"] = per_case_metrics(pred.with_name(pred.name + "_eval") / "per_case.csv")
        write_json_atomic(meta, r, indent=1)
        out[tool] = r
    return out


def per_case_metrics(path: Path) -> dict:
    """``{case: {"dice": mean over organs, "nsd": ...}}`` from evaluate's long-form per_case.csv."""
    by_case = {}
    for row in csv.DictReader(open(path)):
        by_case.setdefault(row["case"], []).append(row)
    res = {}
    for case, rows in by_case.items():
        res[case] = {m: float(np.nanmean([float(r[m]) if r[m] not in ("", "nan") else np.nan for r in rows]))
                     for m in ("dice", "nsd")}
    return res


def summarise(per_seed: dict) -> dict:
    from nnunet_ext.benchmark.stats import bootstrap_ci

    seeds = sorted(per_seed)
    tools = ("stock", "stock_noTTA", "c2f")
    summary = {}
    for tool in tools:
        rs = [per_seed[s][tool] for s in seeds]
        cases = sorted(rs[0]["per_case"])
        dice = np.mean([[r["per_case"][c]["dice"] for c in cases] for r in rs], 0)
        nsd = np.mean([[r["per_case"][c]["nsd"] for c in cases] for r in rs], 0)
        summary[tool] = {"per_case_s": float(np.mean([r["per_case_s"] for r in rs])),
                         "cpu_per_case_s": float(np.mean([r["cpu_per_case_s"] for r in rs])),
                         "peak_ram_mb": float(np.max([r["peak_ram_mb"] for r in rs])),
                         "dice": float(np.mean(dice)), "nsd": float(np.mean(nsd)), "cases": cases,
                         "dice_per_case": dice.tolist(), "nsd_per_case": nsd.tolist()}
        if tool == "c2f":
            summary[tool]["network_share"] = float(np.mean([r["network_share"] for r in rs]))
            summary[tool]["case_mean_s"] = float(np.mean([r["case_mean_s"] for r in rs]))
    for tool in ("stock", "stock_noTTA"):
        d = np.array(summary["c2f"]["dice_per_case"]) - np.array(summary[tool]["dice_per_case"])
        m = np.array(summary["c2f"]["nsd_per_case"]) - np.array(summary[tool]["nsd_per_case"])
        summary[f"c2f_minus_{tool}"] = {"dice_points": [100 * v for v in bootstrap_ci(d)],
                                        "nsd_points": [100 * v for v in bootstrap_ci(m)],
                                        "speedup": summary[tool]["per_case_s"] / summary["c2f"]["per_case_s"],
                                        "cpu_speedup": summary[tool]["cpu_per_case_s"] /
                                        summary["c2f"]["cpu_per_case_s"]}
    return summary


def write_report(args, summary: dict, command: str, results_dir: Path) -> Path:
    date = _dt.date.today().isoformat()
    base = results_dir / f"c2f_{args.data}_{date}"
    s = summary
    lines = [f"# Coarse-to-fine inference vs stock nnU-Net ({args.data})", "",
             f"- date: {date}", f"- machine: {machine()}", f"- command: `{command}`",
             f"- seeds: {args.seeds}; budget: {args.epochs} x 50 iterations per model (stock nnUNetTrainer, "
             f"{PLANS} at {args.gpu_memory_target} GB, fold 0); test cases: {len(s['stock']['cases'])}",
             "- wall time per case: one run of the tool over all test cases (start to exit, model loading included) "
             "/ number of cases; CPU s / case: user + system time of the tool's process tree (from wait4; less "
             "sensitive than wall time to other load on the machine); peak RAM: largest single process of the run "
             "(ru_maxrss)", "",
             "| tool | wall s / case | CPU s / case | speed-up (wall, CPU) | peak RAM MB | Dice | NSD 1 mm |",
             "|---|---|---|---|---|---|---|"]
    names = {"stock": "nnUNetv2_predict -c 3d_fullres (defaults: mirroring, step 0.5)",
             "stock_noTTA": "nnUNetv2_predict -c 3d_fullres --disable_tta", "c2f": "nnunet-ext predict-c2f (defaults)"}
    for tool in ("stock", "stock_noTTA", "c2f"):
        r = s[tool]
        sp = "" if tool == "c2f" else (f"{s[f'c2f_minus_{tool}']['speedup']:.2f}x, "
                                       f"{s[f'c2f_minus_{tool}']['cpu_speedup']:.2f}x")
        lines.append(f"| {names[tool]} | {r['per_case_s']:.2f} | {r['cpu_per_case_s']:.2f} | {sp} | "
                     f"{r['peak_ram_mb']:.0f} | {r['dice']:.4f} | {r['nsd']:.4f} |")
    lines += ["", "Paired per case (mean over organs, seeds averaged), predict-c2f minus the other, points, "
                  "mean [95% bootstrap CI]:", "",
              "| vs | Dice | NSD |", "|---|---|---|"]
    for tool in ("stock", "stock_noTTA"):
        d, n = s[f"c2f_minus_{tool}"]["dice_points"], s[f"c2f_minus_{tool}"]["nsd_points"]
        lines.append(f"| {tool} | {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] | {n[0]:+.2f} [{n[1]:+.2f}, {n[2]:+.2f}] |")
    sp, dp = min(s["c2f_minus_stock"]["speedup"], s["c2f_minus_stock"]["cpu_speedup"]), \
        s["c2f_minus_stock"]["dice_points"]
    share = s["c2f"]["network_share"]
    lines += ["", f"predict-c2f per case without model loading (its CSV): {s['c2f']['case_mean_s']:.2f} s, "
                  f"{100 * share:.0f}% of it in the networks.", "",
              "Goals (issue #12): speed-up >= 5x vs stock (the smaller of wall and CPU): "
              + ("met" if sp >= 5 else "NOT met") + f" ({sp:.2f}x); "
              "Dice within 1 point: " + ("met" if dp[1] >= -1 and dp[2] <= 1 else
                                          ("met on the mean, the CI is wider" if abs(dp[0]) <= 1 else "NOT met"))
              + f" ({dp[0]:+.2f} [{dp[1]:+.2f}, {dp[2]:+.2f}]); >= 70% of the time in the networks: "
              + ("met" if share >= 0.7 else "NOT met") + f" ({100 * share:.0f}%)."]
    if len(args.seeds.split(",")) == 1:
        lines += ["", "One training seed: a smoke test of the quality claim, not a measurement of it."]
    write_record(base, {"date": date, "machine": machine(), "command": command, "args": vars(args), "summary": summary},
                 "\n".join(lines) + "\n", indent=1)
    print("\n".join(lines))
    return base


def main(argv=None):
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.data == "la2018" and not (SHARED / "data" / "la2018_h5").is_dir():
        sys.exit(f"{SHARED / 'data' / 'la2018_h5'} not found: use --data synthetic")
    setup_nnunet_folders(workdir)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    command = "python benchmarks/bench_c2f.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    did, name = prepare(args, workdir)
    per_seed = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        train(args, workdir, did, seed)
        per_seed[seed] = predict_and_evaluate(args, workdir, did, name, seed)
    summary = summarise(per_seed)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    write_report(args, summary, command, results)


if __name__ == "__main__":
    main()
