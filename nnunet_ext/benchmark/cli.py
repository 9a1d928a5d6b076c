"""``nnunet-ext benchmark`` and ``nnunet-ext plan-small``. Imported when ``nnunet-ext`` starts: keep imports light."""
from __future__ import annotations

import argparse
import shlex
import sys

BENCH_DESCRIPTION = """\
Train N trainers x S seeds on one dataset, configuration and split with the same budget in iterations,
predict the held-out test cases (the fold's validation cases) with nnUNetv2_predict, score them (Dice, NSD,
HD95) and compare: mean ± sd over seeds per class, paired per-case differences against the first trainer with
a 95% bootstrap CI, and the time per iteration ratio. Writes OUT/benchmark.md, benchmark.json, per_case.csv,
boxplot.png. Re-run the same command to continue an interrupted benchmark (finished runs are kept).

Each (trainer, seed) is nnUNetv2_train of a generated variant <Trainer>__bench (OUT/trainers/: the budget and
the seed) with nnUNet_results=OUT/runs/seed<s>/. Seeding: initial weights and, with in-process data loading
(the default on CPU; --data-workers 0), the batches depend only on the seed, so every trainer starts from the
same weights and sees the same batches (see nnunet_ext/core/seeding.py for what nnU-Net leaves open).
"""

BENCH_EPILOG = """\
split:
  -f F                       fold F of $nnUNet_preprocessed/DatasetXXX/splits_final.json (default 0; the file is
                             written with nnU-Net's own default 5-fold split if it does not exist yet)
  --train-list/--test-list   case ids (one per line, cases of imagesTr): appended to splits_final.json as a new
                             fold (existing folds unchanged, original kept as splits_final.json.orig; an identical
                             fold is reused); the fold index is printed and recorded

config file (--config FILE): a JSON object with the same settings, e.g.
  {"dataset": 4, "configuration": "2d", "plans": "nnUNetPlans_small", "trainers": ["nnUNetTrainer", "nnUNetTrainerFD"],
   "seeds": [0, 1, 2], "iterations": 1500, "fold": 0, "output": "bench_out", "device": "cpu"}
  options given on the command line override the file; relative paths are relative to the file.

small CPU budgets: make small plans first (nnunet-ext plan-small -d D), then -p nnUNetPlans_small.

example:
  nnunet-ext benchmark -d 4 -c 2d -p nnUNetPlans_small -tr nnUNetTrainer,nnUNetTrainerFD --seeds 0,1,2 \\
      --iterations 1500 -f 0 -o bench_hippocampus -device cpu
"""

PLAN_DESCRIPTION = """\
nnU-Net plans for a small compute budget: nnU-Net's planner with a lower GPU memory target and its own plans
name (smaller batches, then smaller patches), then nnU-Net's preprocessing for them:

  nnUNetv2_extract_fingerprint -d D                 (if there is no fingerprint yet)
  nnUNetv2_plan_experiment -d D -gpu_memory_target G -overwrite_plans_name NAME
  nnUNetv2_preprocess -d D -plans_name NAME -c CONFIGS

The plans are ordinary nnU-Net plans: use them with -p NAME (nnUNetv2_train, nnUNetv2_predict, nnunet-ext
benchmark). Your default plans are not touched. Re-running skips what is done.
"""


def _csv(s: str):
    return [v.strip() for v in str(s).split(",") if v.strip()]


def _seeds(s: str):
    try:
        return [int(v) for v in _csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {s!r}") from None


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # unset options stay unset, so that --config values are not overridden by defaults
    p.add_argument("--config", dest="config_file", default=None, help="JSON file with the settings")
    p.add_argument("-d", dest="dataset", default=S, help="dataset id or name (DatasetXXX_Name)")
    p.add_argument("-c", dest="configuration", default=S, help="nnU-Net configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", dest="trainers", type=_csv, default=S,
                   help="trainers, comma-separated; the first one is the reference")
    p.add_argument("--seeds", type=_seeds, default=S, help="seeds, comma-separated (default: 0)")
    p.add_argument("--iterations", type=int, default=S, help="training iterations per run (the budget, required)")
    p.add_argument("--iterations-per-epoch", dest="iterations_per_epoch", type=int, default=S,
                   help="iterations per epoch (default: min(250, iterations), nnU-Net's 250); "
                        "epochs = ceil(iterations / this)")
    p.add_argument("--val-iterations", dest="val_iterations", type=int, default=S,
                   help="validation iterations per epoch (default: nnU-Net's ratio, iterations per epoch / 5)")
    p.add_argument("-p", dest="plans", default=S, help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-f", dest="fold", type=int, default=S, help="fold of splits_final.json (default: 0)")
    p.add_argument("--train-list", dest="train_list", default=S, help="file with the training case ids")
    p.add_argument("--test-list", dest="test_list", default=S, help="file with the test case ids")
    p.add_argument("-o", dest="output", default=S, help="output folder (default: ./nnunet_ext_benchmark)")
    p.add_argument("-device", dest="device", choices=["cpu", "cuda", "mps"], default=S,
                   help="cpu, cuda or mps (default: cuda if available, else cpu)")
    p.add_argument("--tta", dest="tta", action="store_true", default=S,
                   help="predict with nnU-Net's mirroring test-time augmentation (default: off, faster)")
    p.add_argument("-np", dest="num_processes", type=int, default=S,
                   help="processes for prediction and evaluation (default: $nnUNet_def_n_proc or 2; 1: "
                        "nnU-Net's sequential prediction, no worker processes)")
    p.add_argument("--data-workers", dest="data_workers", type=int, default=S,
                   help="nnUNet_n_proc_DA for training (default: $nnUNet_n_proc_DA if set, else 0 on CPU "
                        "(deterministic batches), nnU-Net's default otherwise)")
    p.add_argument("--tolerance", type=float, default=S, help="NSD tolerance in mm (default 1.0)")
    p.add_argument("--records", default=S, metavar="DIR",
                   help="keep each finished run's results (per-case metrics, timing; a few kB, no models) in DIR and "
                        "restore runs recorded there instead of re-running them, also into a new -o folder: commit "
                        "DIR to continue a long benchmark in another session or on another machine")
    p.add_argument("-q", "--quiet", dest="quiet", action="store_true", default=S, help="no progress output")


def make_config(args):
    from nnunet_ext.benchmark.protocol import BenchmarkConfig, load_config_file

    settings = load_config_file(args.config_file) if args.config_file else {}
    for k in BenchmarkConfig.keys():
        if hasattr(args, k):
            settings[k] = getattr(args, k)
    if "dataset" in settings:
        settings["dataset"] = str(settings["dataset"])
    return BenchmarkConfig(**settings)


def cmd_benchmark(args) -> int:
    from nnunet_ext.benchmark.protocol import RunFailed, run_benchmark
    command = "nnunet-ext " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] \
        else None
    # BenchmarkError / EvaluationError are UserErrors: nnunet_ext.cli.main prints them as one line (exit 2)
    try:
        run_benchmark(make_config(args), command=command)
    except RunFailed as e:
        print(f"nnunet-ext benchmark: {e}", file=sys.stderr)
        print("finished runs are kept: re-run the same command to continue", file=sys.stderr)
        return 1
    return 0


def add_plan_small_arguments(p: argparse.ArgumentParser) -> None:
    from_doc = "0.1"  # nnunet_ext.benchmark.plans.DEFAULT_TARGET_GB, not imported here (startup stays light)
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    p.add_argument("-gpu_memory_target", dest="gpu_memory_target", type=float, default=float(from_doc),
                   help=f"GPU memory target in GB for nnU-Net's planner (default {from_doc}; nnU-Net's default is 8)")
    p.add_argument("-overwrite_plans_name", dest="plans_name", default="nnUNetPlans_small",
                   help="name of the new plans (default nnUNetPlans_small)")
    p.add_argument("-c", dest="configurations", nargs="+", default=["2d"],
                   help="configurations to preprocess (default: 2d)")
    p.add_argument("-pl", dest="planner", default=None, help="nnU-Net experiment planner class (default: nnU-Net's)")
    p.add_argument("-np", dest="num_processes", type=int, default=2, help="processes (default 2)")
    p.add_argument("--overwrite", action="store_true", help="plan and preprocess again")
    p.add_argument("--time", dest="time_iterations", type=int, default=0, metavar="K",
                   help="afterwards, time K training iterations per configuration (nnUNetTrainer, in-process data "
                        "loading) and estimate the time of a run")
    p.add_argument("--budget", type=int, default=1500,
                   help="iterations for the run-time estimate of --time (default 1500)")
    p.add_argument("-device", dest="device", choices=["cpu", "cuda", "mps"], default="cpu",
                   help="device for --time (default cpu)")


def cmd_plan_small(args) -> int:
    from nnunet_ext.benchmark.plans import plan_small, time_in_subprocess
    try:
        res = plan_small(args.dataset, args.gpu_memory_target, args.plans_name, tuple(args.configurations),
                         args.num_processes, args.planner, args.overwrite)
    except RuntimeError as e:
        print(f"nnunet-ext plan-small: {e}", file=sys.stderr)
        return 1
    print(f"{res['dataset']}: plans {res['plans']} (GPU memory target {res['gpu_memory_target']:g} GB)")
    for c, v in res["configurations"].items():
        line = f"  {c:12s} batch {v['batch_size']:4d} x patch {v['patch_size']}, {v['n_stages']} stages"
        if args.time_iterations > 0:
            try:
                t = time_in_subprocess(res["dataset"], c, res["plans"], args.time_iterations, args.device)
            except RuntimeError as e:
                print(f"nnunet-ext plan-small: {e}", file=sys.stderr)
                return 1
            est = t["s_per_iteration"] * args.budget / 60
            line += (f": {t['s_per_iteration']:.3f} s/iteration on {args.device} ({t['threads']} threads, median of "
                     f"{args.time_iterations}); {args.budget} iterations ~ {est:.0f} min + validation")
        print(line)
    print(f"use: -p {res['plans']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("benchmark", help="fair multi-seed comparison of trainers (same budget, split, seeds)",
                              description=BENCH_DESCRIPTION, epilog=BENCH_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_arguments(p)
    p.set_defaults(func=cmd_benchmark)

    p = subparsers.add_parser("plan-small", help="nnU-Net plans with a small memory target (short CPU budgets)",
                              description=PLAN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_small_arguments(p)
    p.set_defaults(func=cmd_plan_small)
