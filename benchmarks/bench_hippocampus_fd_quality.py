"""Benchmark: nnUNetTrainerFD vs. stock nnUNetTrainer on MSD Hippocampus, several seeds, same budget.

The real comparison (the short single-seed runs of ``bench_fd.py`` say nothing about FD's effect).
Every step is resumable: re-running the same command continues where it stopped.

1. Converts ``../shared/data/msd_hippocampus`` (flat MSD Task04 copy) to ``Dataset004_Hippocampus`` in
   ``WORKDIR/raw`` (``nnunet-ext convert msd_flat``), unless done.
2. Makes small-budget plans with ``nnunet-ext plan-small`` (nnU-Net's planner, GPU memory target
   ``--gpu-memory-target``, plans ``nnUNetPlans_small``), unless done. ``--plans nnUNetPlans`` uses nnU-Net's
   default plans instead (planned with nnUNetv2_plan_and_preprocess; for a GPU).
3. Fixes the split: nnU-Net's own default 5-fold split of the 260 cases (KFold, seed 12345), fold 0 =
   208 training / 52 test cases, written as ``WORKDIR/split/{train,test}.txt`` and given to the benchmark as
   ``--train-list/--test-list`` (it finds them as fold 0 of splits_final.json).
4. ``nnunet-ext benchmark -tr nnUNetTrainer,nnUNetTrainerFD --seeds 0,1,2 --iterations N ...`` into
   ``WORKDIR/benchmark``: per class Dice / NSD / HD95 mean ± sd over seeds, paired per-case differences
   with 95% bootstrap CIs, the time-per-iteration ratio, a box plot.
5. ``nnunet-ext robustness`` on the same models (the first seed's by default; ``--robustness-seeds``),
   unless ``--no-robustness``. Steps 4 and 5 go one seed at a time, so each seed's robustness runs while its
   models exist.
   Resuming across sessions: every finished run's results and each seed's robustness tables are copied to
   ``--records`` (default ``benchmarks/results/records/fd_hippocampus/``, a few kB per run, no models; commit
   it as runs finish). A later session, with an empty workdir, restores them instead of re-running.
6. Writes ``benchmarks/results/fd_hippocampus_benchmark_<date>.{md,json}`` with the exact command, date and
   machine, the benchmark's tables and the robustness table.

    python benchmarks/bench_hippocampus_fd_quality.py --workdir /tmp/hippo_fd --iterations 1500 -device cpu
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
from pathlib import Path

from common import (REPO, command_line, converted_and_planned_2d, dataset_folder, fold0_cases, machine,
                    robustness_of_seed, robustness_over_seeds, run, setup_env, write_case_lists, write_record)
from nnunet_ext.paths import console_script

#: bench_gms.py imports these from here (kept for it; the other scripts import them from common)
_bin = console_script
__all__ = ["_bin", "converted_and_planned_2d", "run", "setup_env"]

DATASET_ID = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "msd_hippocampus"),
                   help="flat MSD Hippocampus copy (images/, labels/)")
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "workdir" / "hippocampus_fd"),
                   help="nnU-Net folders (raw, preprocessed) and the benchmark's output")
    p.add_argument("--iterations", type=int, default=1500, help="training iterations per run (the budget)")
    p.add_argument("--iterations-per-epoch", type=int, default=250)
    p.add_argument("--val-iterations", type=int, default=None, help="default: the benchmark's (iterations/epoch / 5)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--trainers", default="nnUNetTrainer,nnUNetTrainerFD", help="the first one is the reference")
    p.add_argument("-c", "--configuration", default="2d")
    p.add_argument("--plans", default="nnUNetPlans_small",
                   help="nnUNetPlans_small: made here with plan-small; any other name must exist already")
    p.add_argument("--gpu-memory-target", type=float, default=0.1, help="GB, for plan-small")
    p.add_argument("-device", dest="device", choices=["cpu", "cuda", "mps"], default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--tta", action="store_true", help="predict with test-time mirroring")
    p.add_argument("--no-robustness", action="store_true", help="skip nnunet-ext robustness")
    p.add_argument("--robustness-seeds", default=None, help="seeds whose models robustness evaluates "
                                                            "(default: the first seed)")
    p.add_argument("--robustness-args", default="--disable-tta",
                   help="extra arguments for nnunet-ext robustness (one string)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--records", default=str(REPO / "benchmarks" / "results" / "records" / "fd_hippocampus"),
                   help="finished runs' results and robustness tables (a few kB each, no models), committed as they "
                        "come: a later session restores them instead of re-running ('' = off)")
    return p.parse_args(argv)


def prepare(args, workdir: Path) -> str:
    if dataset_folder(DATASET_ID) is None:
        run([console_script("nnunet-ext"), "convert", "msd_flat", "--source", args.source, "--id", DATASET_ID])
    name = dataset_folder(DATASET_ID).name
    if args.plans == "nnUNetPlans_small":
        run([console_script("nnunet-ext"), "plan-small", "-d", DATASET_ID, "-gpu_memory_target", args.gpu_memory_target,
             "-overwrite_plans_name", args.plans, "-c", args.configuration])
    elif not (Path(os.environ["nnUNet_preprocessed"]) / name / f"{args.plans}.json").is_file():
        sys.exit(f"plans {args.plans} not found in {os.environ['nnUNet_preprocessed']}/{name}: plan and preprocess "
                 f"first (e.g. nnUNetv2_plan_and_preprocess -d {DATASET_ID} -c {args.configuration}), or use "
                 f"--plans nnUNetPlans_small")
    return name


def write_split(workdir: Path, name: str) -> tuple:
    """Fold 0 of nnU-Net's default split (208 / 52 cases), as case lists in WORKDIR/split/."""
    train, test = fold0_cases(Path(os.environ["nnUNet_raw"]) / name / "labelsTr", ".nii.gz")
    lists = write_case_lists(workdir / "split", {"train": train, "test": test})
    print(f"split: {len(train)} training / {len(test)} test cases (fold 0 of nnU-Net's default 5-fold split), "
          f"{workdir / 'split'}")
    return lists["train"], lists["test"]


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.source).is_dir():
        sys.exit(f"Hippocampus source not found: {args.source} (expected images/ and labels/ of MSD Task04); "
                 f"pass --source")
    workdir = Path(args.workdir).resolve()
    setup_env(workdir)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    name = prepare(args, workdir)
    train, test = write_split(workdir, name)
    out = workdir / "benchmark"
    records = Path(args.records).resolve() if args.records else None

    def bench_cmd(seeds: str) -> list:
        cmd = [console_script("nnunet-ext"), "benchmark", "-d", DATASET_ID, "-c", args.configuration, "-p", args.plans,
               "-tr", args.trainers, "--seeds", seeds, "--iterations", args.iterations,
               "--iterations-per-epoch", args.iterations_per_epoch, "--train-list", train, "--test-list", test,
               "-o", out, "-device", args.device]
        if args.val_iterations:
            cmd += ["--val-iterations", args.val_iterations]
        if args.tta:
            cmd.append("--tta")
        if records is not None:
            cmd += ["--records", records]
        return cmd

    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    rob_seeds = [s.strip() for s in (args.robustness_seeds or seeds[0]).split(",") if s.strip()]
    robustness = {}
    for s in seeds:  # one seed at a time: its robustness runs while its models exist
        run(bench_cmd(s))
        if not args.no_robustness and s in rob_seeds:
            robustness[s] = robustness_of_seed(args, out, workdir, s, records, DATASET_ID)
    run(bench_cmd(",".join(seeds)))  # the report over all seeds (every run kept or restored from the records)
    bench = json.loads((out / "benchmark.json").read_text())
    final_cmd = bench_cmd(",".join(seeds))

    date = _dt.datetime.now().isoformat(timespec="seconds")
    command = command_line(__file__, argv)
    trainer_list = [t.strip() for t in args.trainers.split(",") if t.strip()]
    rob_cmp, rob_cmp_md = robustness_over_seeds(robustness, trainer_list)
    result = {"command": command, "date": date, "machine": machine(args.device), "workdir": str(workdir),
              "benchmark_command": "nnunet-ext " + " ".join(shlex.quote(str(c)) for c in final_cmd[1:]),
              "benchmark": bench, "robustness": robustness, "robustness_over_seeds": rob_cmp}
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    stem = res_dir / f"fd_hippocampus_benchmark_{date[:10]}"
    bench_md = (out / "benchmark.md").read_text()
    # the benchmark's own header names the command it was given; ours goes on top
    body = bench_md.split("\n", 1)[1].replace("\n## ", "\n### ")
    lines = ["# FD vs stock nnU-Net on MSD Hippocampus: multi-seed benchmark", "",
             f"Command: `{command}`  ", f"Date: {date}  ", f"Machine: {result['machine']}", "",
             f"Benchmark: `{result['benchmark_command']}`", "", "## Benchmark", "", body.strip(), ""]
    if rob_cmp_md:
        lines += ["## Robustness over seeds", "", rob_cmp_md, ""]
    for s, r in robustness.items():
        if r["markdown"]:
            rob = r["markdown"].strip().replace("\n## ", "\n### ")
            lines += [f"## Robustness (models of seed {s})", "", rob, ""]
    write_record(stem, result, "\n".join(lines))
    print(f"wrote {stem}.md / .json")


if __name__ == "__main__":
    main()
