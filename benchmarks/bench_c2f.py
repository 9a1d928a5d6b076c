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
   defaults (no mirroring, step 0.75, the softmax ROI; its per-case CSV gives read / coarse / fine / write, the
   network share, the ROI's share of the volume and the classes the coarse model missed) and with
   ``--roi-mode argmax`` (the ROI rule before issue 27); ``--skip-stock-tta`` leaves out the slow first one;
4. ``nnunet-ext evaluate`` (Dice, NSD at 1 mm) of each against the reference; paired per-case differences
   (predict-c2f - stock, mean over organs per case, seeds averaged) with 95% bootstrap intervals.

Weakened coarse models (issue 27), each predicted with both ROI rules, the fine model unchanged: what the softmax
ROI and the missing-organ check save when the coarse model misses organs (the report has Dice per organ and how many
cases were widened or fell back to the whole volume):

* ``--weak-coarse-epochs N``: a second coarse model trained ``N`` epochs (``nnUNetTrainer_c2fBenchWeakCoarse``;
  tools ``c2f_weak``, ``c2f_weak_argmax``); what a short budget does to a coarse model is up to the training;
* ``--drop-coarse-class L``: the trained coarse model with the output of class ``L`` removed (weights 0, bias
  -1000: never in its argmax, probability 0; no training), so it misses that organ in every case (tools
  ``c2f_drop``, ``c2f_drop_argmax``).

Goal (issue #12): at least 5x faster than stock with Dice within 1 point, at least 70% of the wall time in the
networks. Results: ``benchmarks/results/c2f_<data>_<date>.{md,json}``.

    python benchmarks/bench_c2f.py --workdir /work/bench/c2f --gpu-memory-target 0.1 --epochs 10 --seeds 0 -device cpu
    python benchmarks/bench_c2f.py ... --repredict      # time the inference again (a quieter machine), same models
    python benchmarks/bench_c2f.py --workdir /tmp/c2f_smoke --results /tmp/c2f_smoke/results --shape 24 64 64 \\
        --train 5 --test 2 --coarse-size 24 --epochs 2 --iterations 5 --weak-coarse-epochs 1 --drop-coarse-class 2 \\
        -device cpu  # smoke

Predictions are kept per tool (``WORKDIR/pred_seed<S>_<tool>.json``); a tool whose record comes from an older
version of the tool (``TOOL_VERSION``) is predicted again on the next run, the others are reused.

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
WEAK_TRAINER = "nnUNetTrainer_c2fBenchWeakCoarse"
CONFIGS = ("3d_fullres", "3d_coarse", "3d_fine")
SCHEDULE = {"num_val_iterations_per_epoch": 5, "save_every": 1}
#: a tool's prediction record is reused only when it was made by this version (2: predict-c2f's ROI of issue 27)
TOOL_VERSION = {"stock": 1, "stock_noTTA": 1, "c2f": 2, "c2f_argmax": 2, "c2f_weak": 2, "c2f_weak_argmax": 2,
                "c2f_drop": 2, "c2f_drop_argmax": 2}
TOOL_NAMES = {"stock": "nnUNetv2_predict -c 3d_fullres (defaults: mirroring, step 0.5)",
              "stock_noTTA": "nnUNetv2_predict -c 3d_fullres --disable_tta",
              "c2f": "nnunet-ext predict-c2f (defaults: softmax ROI)",
              "c2f_argmax": "nnunet-ext predict-c2f --roi-mode argmax (the ROI before)",
              "c2f_weak": "predict-c2f, weakened coarse model, softmax ROI",
              "c2f_weak_argmax": "predict-c2f, weakened coarse model, --roi-mode argmax",
              "c2f_drop": "predict-c2f, coarse model without one class, softmax ROI",
              "c2f_drop_argmax": "predict-c2f, coarse model without one class, --roi-mode argmax"}


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
    p.add_argument("--epochs", type=int, default=10, help="epochs per model")
    p.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    p.add_argument("--weak-coarse-epochs", type=int, default=0,
                   help="also train a weakened coarse model for this many epochs and predict with it (0: no)")
    p.add_argument("--drop-coarse-class", type=int, default=0, metavar="L",
                   help="also predict with the trained coarse model's output for class L removed (0: no)")
    p.add_argument("--skip-stock-tta", action="store_true",
                   help="leave out nnUNetv2_predict with mirroring (the slowest tool; the speed-up is then against "
                        "stock without mirroring)")
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
    done = done and "always_present_classes" in plans["configurations"]["3d_fine"].get("nnunet_ext", {})
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
    schedule = {"num_iterations_per_epoch": args.iterations, **SCHEDULE}
    src = variant_source(nnUNetTrainer, TRAINER, {"num_epochs": args.epochs, **schedule},
                         mixins=(BenchMixin, ScheduleMixin, SeedMixin), generated_by="benchmarks/bench_c2f.py",
                         doc="Stock nnU-Net with the benchmark's budget and seed.")
    write_variant_module(tdir / "c2f_bench_trainers.py", src)
    runs = [(TRAINER, c) for c in CONFIGS]
    if args.weak_coarse_epochs:
        src = variant_source(nnUNetTrainer, WEAK_TRAINER, {"num_epochs": args.weak_coarse_epochs, **schedule},
                             mixins=(BenchMixin, ScheduleMixin, SeedMixin), generated_by="benchmarks/bench_c2f.py",
                             doc="Stock nnU-Net with a shorter budget: a weakened coarse model (issue 27).")
        write_variant_module(tdir / "c2f_bench_weak_trainers.py", src)
        runs.append((WEAK_TRAINER, "3d_coarse"))
    env = dict(ext_trainer_env([tdir]), nnUNet_results=str(workdir / f"results_seed{seed}"), nnUNet_ext_seed=str(seed))
    for tr, c in runs:
        fold = Path(env["nnUNet_results"]) / dataset_folder(did).name / f"{tr}__{PLANS}__{c}" / "fold_0"
        if (fold / "checkpoint_final.pth").is_file():
            continue
        cmd = [console_script("nnUNetv2_train"), did, c, 0, "-tr", tr, "-p", PLANS, "-device", args.device]
        if (fold / "checkpoint_latest.pth").is_file():
            cmd.append("--c")
        run(cmd, env)
    if args.drop_coarse_class:
        drop_class(Path(env["nnUNet_results"]) / dataset_folder(did).name, args.drop_coarse_class)


def drop_trainer(label: int) -> str:
    return f"{TRAINER}Drop{label}"


def drop_class(results: Path, label: int) -> None:
    """The trained coarse model copied as ``drop_trainer(label)`` with class ``label``'s output removed (weights 0,
    bias -1000 in every output layer): it never predicts that class."""
    import shutil

    import torch

    folder = results / f"{drop_trainer(label)}__{PLANS}__3d_coarse"
    if folder.is_dir():
        return
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(results / f"{TRAINER}__{PLANS}__3d_coarse", tmp)
    ckpt_file = tmp / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    heads = [k for k in ckpt["network_weights"] if k.startswith("decoder.seg_layers.")]
    if not heads or not 0 < label < ckpt["network_weights"][heads[-1]].shape[0]:
        sys.exit(f"--drop-coarse-class {label}: not a class of the coarse model")
    for k in heads:
        w = ckpt["network_weights"][k]
        w[label] = -1000.0 if k.endswith("bias") else 0.0
    torch.save(ckpt, ckpt_file)
    tmp.rename(folder)


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
    c2f = [console_script("nnunet-ext"), "predict-c2f", "-i", images, "-d", did, "-p", PLANS, "-tr", TRAINER,
           "-f", 0, "-device", args.device]
    tools = {
        "stock": [console_script("nnUNetv2_predict"), "-i", images, "-d", did, "-c", "3d_fullres", "-p", PLANS,
                  "-tr", TRAINER, "-f", 0, "-device", args.device],
        "stock_noTTA": [console_script("nnUNetv2_predict"), "-i", images, "-d", did, "-c", "3d_fullres", "-p",
                        PLANS, "-tr", TRAINER, "-f", 0, "-device", args.device, "--disable_tta"],
        "c2f": c2f,
        "c2f_argmax": c2f + ["--roi-mode", "argmax"],
    }
    if args.skip_stock_tta:
        del tools["stock"]
    if args.weak_coarse_epochs:
        tools["c2f_weak"] = c2f + ["-tr_coarse", WEAK_TRAINER]
        tools["c2f_weak_argmax"] = c2f + ["-tr_coarse", WEAK_TRAINER, "--roi-mode", "argmax"]
    if args.drop_coarse_class:
        tools["c2f_drop"] = c2f + ["-tr_coarse", drop_trainer(args.drop_coarse_class)]
        tools["c2f_drop_argmax"] = tools["c2f_drop"] + ["--roi-mode", "argmax"]
    for tool, cmd in tools.items():
        pred = workdir / f"pred_seed{seed}_{tool}"
        meta = pred.with_name(pred.name + ".json")
        if args.repredict and meta.is_file():
            meta.unlink()
        if meta.is_file():
            rec = json.loads(meta.read_text())
            if rec.get("tool_version", 1) == TOOL_VERSION[tool]:
                out[tool] = rec
                continue
            print(f"{tool}: predicted by an older version of the tool, predicting again", flush=True)
            meta.unlink()
        if pred.exists():
            import shutil
            shutil.rmtree(pred)  # an interrupted run: its timing would be wrong, predict again
        r = timed(cmd + ["-o", pred], env)
        if r["returncode"] != 0:
            sys.exit(f"{tool} failed ({r['returncode']}); re-run to continue")
        r["per_case_s"] = r["wall_s"] / n
        r["cpu_per_case_s"] = r["cpu_s"] / n
        r["tool_version"] = TOOL_VERSION[tool]
        if tool.startswith("c2f"):
            rows = list(csv.DictReader(open(pred / "predict_c2f_cases.csv")))
            r["cases"] = {row["case"]: {k: row[k] for k in ("read_s", "coarse_s", "fine_s", "write_s", "total_s",
                                                            "network_s", "peak_ram_mb", "roi", "roi_mode",
                                                            "roi_margin_mm", "roi_fraction", "missing_classes",
                                                            "fallback")} for row in rows}
            r["network_share"] = float(np.sum([float(x["network_s"]) for x in rows]) /
                                       np.sum([float(x["total_s"]) for x in rows]))
            r["case_mean_s"] = float(np.mean([float(x["total_s"]) for x in rows]))
            r["roi_fraction"] = float(np.mean([float(x["roi_fraction"]) for x in rows]))
            r["cases_whole_volume"] = sum(1 for x in rows if not x["roi"])
            r["cases_missing_class"] = sum(1 for x in rows if x["missing_classes"])
        run([console_script("nnunet-ext"), "evaluate", "-gt", labels, "-pred", pred, "-d", did,
             "-o", pred.with_name(pred.name + "_eval")])
        r["per_case"] = per_case_metrics(pred.with_name(pred.name + "_eval") / "per_case.csv")
        write_json_atomic(meta, r, indent=1)
        out[tool] = r
    return out


def per_case_metrics(path: Path) -> dict:
    """``{case: {"dice": mean over organs, "nsd": ..., "organs": {name: Dice}}}`` from evaluate's long-form
    per_case.csv."""
    by_case = {}
    for row in csv.DictReader(open(path)):
        by_case.setdefault(row["case"], []).append(row)
    value = lambda r, m: float(r[m]) if r[m] not in ("", "nan") else np.nan  # noqa: E731
    res = {}
    for case, rows in by_case.items():
        res[case] = {m: float(np.nanmean([value(r, m) for r in rows])) for m in ("dice", "nsd")}
        res[case]["organs"] = {r["name"]: value(r, "dice") for r in rows}
    return res


def summarise(per_seed: dict) -> dict:
    from nnunet_ext.benchmark.stats import bootstrap_ci

    seeds = sorted(per_seed)
    tools = [t for t in TOOL_VERSION if all(t in per_seed[s] for s in seeds)]
    summary = {"tools": tools}
    for tool in tools:
        rs = [per_seed[s][tool] for s in seeds]
        cases = sorted(rs[0]["per_case"])
        dice = np.mean([[r["per_case"][c]["dice"] for c in cases] for r in rs], 0)
        nsd = np.mean([[r["per_case"][c]["nsd"] for c in cases] for r in rs], 0)
        organs = sorted({o for r in rs for c in cases for o in r["per_case"][c].get("organs", {})})
        summary[tool] = {"per_case_s": float(np.mean([r["per_case_s"] for r in rs])),
                         "cpu_per_case_s": float(np.mean([r["cpu_per_case_s"] for r in rs])),
                         "peak_ram_mb": float(np.max([r["peak_ram_mb"] for r in rs])),
                         "dice": float(np.mean(dice)), "nsd": float(np.mean(nsd)), "cases": cases,
                         "dice_per_case": dice.tolist(), "nsd_per_case": nsd.tolist(),
                         "dice_per_organ": {o: float(np.nanmean([r["per_case"][c]["organs"].get(o, np.nan)
                                                                 for r in rs for c in cases])) for o in organs}}
        if tool.startswith("c2f"):
            for k in ("network_share", "case_mean_s", "roi_fraction"):
                summary[tool][k] = float(np.mean([r[k] for r in rs]))
            for k in ("cases_whole_volume", "cases_missing_class"):
                summary[tool][k] = int(np.sum([r[k] for r in rs]))
            summary[tool]["case_runs"] = len(cases) * len(rs)
    pairs = [(a, b) for a in ("c2f", "c2f_weak", "c2f_drop") for b in ("stock", "stock_noTTA", f"{a}_argmax")]
    for a, b in pairs:
        if a not in tools or b not in tools:
            continue
        d = np.array(summary[a]["dice_per_case"]) - np.array(summary[b]["dice_per_case"])
        m = np.array(summary[a]["nsd_per_case"]) - np.array(summary[b]["nsd_per_case"])
        summary[f"{a}_minus_{b}"] = {"dice_points": [100 * v for v in bootstrap_ci(d)],
                                     "nsd_points": [100 * v for v in bootstrap_ci(m)],
                                     "speedup": summary[b]["per_case_s"] / summary[a]["per_case_s"],
                                     "cpu_speedup": summary[b]["cpu_per_case_s"] / summary[a]["cpu_per_case_s"]}
    return summary


def write_report(args, summary: dict, command: str, results_dir: Path) -> Path:
    from common import new_record_stem

    date = _dt.date.today().isoformat()
    base = new_record_stem(results_dir / f"c2f_{args.data}_{date}")
    s, tools = summary, summary["tools"]
    ref = "stock" if "stock" in tools else "stock_noTTA"
    budget = f"{args.epochs} x {args.iterations} iterations per model"
    if args.weak_coarse_epochs:
        budget += f" (weakened coarse model: {args.weak_coarse_epochs} x {args.iterations})"
    if args.drop_coarse_class:
        budget += f"; c2f_drop: the coarse model without class {args.drop_coarse_class}"
    lines = [f"# Coarse-to-fine inference vs stock nnU-Net ({args.data})", "",
             f"- date: {date}", f"- machine: {machine()}", f"- command: `{command}`",
             f"- seeds: {args.seeds}; budget: {budget} (stock nnUNetTrainer, {PLANS} at {args.gpu_memory_target} GB, "
             f"fold 0); test cases: {len(s[tools[0]]['cases'])}",
             "- wall time per case: one run of the tool over all test cases (start to exit, model loading included) "
             "/ number of cases; CPU s / case: user + system time of the tool's process tree (from wait4; less "
             "sensitive than wall time to other load on the machine); peak RAM: largest single process of the run "
             "(ru_maxrss)", "",
             f"| tool | wall s / case | CPU s / case | speed-up vs {ref} (wall, CPU) | peak RAM MB | Dice | NSD 1 mm |",
             "|---|---|---|---|---|---|---|"]
    for tool in tools:
        r = s[tool]
        sp = "" if tool == ref else (f"{s[ref]['per_case_s'] / r['per_case_s']:.2f}x, "
                                     f"{s[ref]['cpu_per_case_s'] / r['cpu_per_case_s']:.2f}x")
        lines.append(f"| {TOOL_NAMES[tool]} | {r['per_case_s']:.2f} | {r['cpu_per_case_s']:.2f} | {sp} | "
                     f"{r['peak_ram_mb']:.0f} | {r['dice']:.4f} | {r['nsd']:.4f} |")
    c2f_tools = [t for t in tools if t.startswith("c2f")]
    organs = sorted({o for t in tools for o in s[t]["dice_per_organ"]})
    lines += ["", "Region of interest (issue 27) and Dice per organ (mean over cases and seeds): ROI = the share of "
                  "the volume the fine model saw; widened = cases whose coarse prediction missed a class that every "
                  "training case has (softmax ROI: the larger margin; argmax ROI: only reported); whole = the fine "
                  "model on the whole volume.", "",
              "| tool | ROI share | widened | whole | " + " | ".join(organs) + " |",
              "|---|---|---|---|" + "---|" * len(organs)]
    for tool in tools:
        r = s[tool]
        roi = (f"{100 * r['roi_fraction']:.1f}% | {r['cases_missing_class']} / {r['case_runs']} | "
               f"{r['cases_whole_volume']} / {r['case_runs']}") if tool in c2f_tools else "100% | | "
        lines.append(f"| {tool} | {roi} | " + " | ".join(f"{r['dice_per_organ'].get(o, float('nan')):.3f}"
                                                        for o in organs) + " |")
    lines += ["", "Paired per case (mean over organs, seeds averaged), first minus second, points, "
                  "mean [95% bootstrap CI]:", "", "| pair | Dice | NSD |", "|---|---|---|"]
    for key in [k for k in s if "_minus_" in k]:
        d, n = s[key]["dice_points"], s[key]["nsd_points"]
        lines.append(f"| {key.replace('_minus_', ' - ')} | {d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] | "
                     f"{n[0]:+.2f} [{n[1]:+.2f}, {n[2]:+.2f}] |")
    vs = s[f"c2f_minus_{ref}"]
    sp, dp = min(vs["speedup"], vs["cpu_speedup"]), vs["dice_points"]
    share = s["c2f"]["network_share"]
    lines += ["", f"predict-c2f per case without model loading (its CSV): {s['c2f']['case_mean_s']:.2f} s, "
                  f"{100 * share:.0f}% of it in the networks.", "",
              f"Goals (issue #12): speed-up >= 5x vs {ref} (the smaller of wall and CPU): "
              + ("met" if sp >= 5 else "NOT met") + f" ({sp:.2f}x); "
              "Dice within 1 point: " + ("met" if dp[1] >= -1 and dp[2] <= 1 else
                                          ("met on the mean, the CI is wider" if abs(dp[0]) <= 1 else "NOT met"))
              + f" ({dp[0]:+.2f} [{dp[1]:+.2f}, {dp[2]:+.2f}]); >= 70% of the time in the networks: "
              + ("met" if share >= 0.7 else "NOT met") + f" ({100 * share:.0f}%)."]
    if ref != "stock":
        lines += ["", "Stock nnU-Net with mirroring was not run (--skip-stock-tta): the speed-up is against stock "
                      "without mirroring."]
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
