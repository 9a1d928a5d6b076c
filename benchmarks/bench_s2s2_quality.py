"""Benchmark: S2S2 quality (issue #9): stock vs S2S2 on the training-free stack vs S2S2 on the diffusion stack,
same budget, split and seeds; clean Dice and Dice under each corruption.

Goal: S2S2 at least as good as stock on clean data and better under corruption.

Datasets (2d, converted, planned with ``nnunet-ext plan-small`` and preprocessed in WORKDIR):

* ``kvasir`` (default): Kvasir-SEG 256 x 256 (``../shared/data/kvasir_seg_256``), polyp vs background, RGB;
* ``hippocampus``: MSD Hippocampus (``../shared/data/msd_hippocampus``), 2 classes, trained on 2D slices.

Steps (each resumable: re-running the same command continues where it stopped):

1. convert, plan-small (``--plans``, ``--gpu-memory-target``), the split: fold 0 of nnU-Net's default 5-fold split
   (``splits_final.json`` written as nnU-Net would), test cases cut to ``--max-test-cases``;
2. the stacks, ``--generators`` (default ``gin``): ``nnunet-ext s2s2-generate -k K --generator gin``; for
   ``diffusion``: ``nnunet-ext s2s2-tune -f 0 --steps --tune-steps`` on fold 0's training cases, then
   ``s2s2-generate --generator diffusion -f 0`` (on a CPU this takes days: run it on a GPU);
3. seed by seed: ``nnunet-ext benchmark -tr nnUNetTrainer,nnUNetTrainerS2S2_<generator>... --seeds s`` and
   ``nnunet-ext robustness`` on that seed's models (the same corruptions for every trainer);
4. the report over all seeds: Dice per class (mean ± sd over seeds), paired per-case differences against stock with
   95% bootstrap CIs, the time-per-iteration ratio (``nnunet-ext benchmark``), and per corruption the paired
   per-case Dice difference over seeds and severities with a 95% bootstrap CI
   (``nnunet_ext.robustness.compare``).

Across sessions: every finished run's results and each seed's robustness tables are kept in ``--records``
(default ``benchmarks/results/records/s2s2_<dataset>/``, a few kB per run, no models); commit them as they come,
and a later session with an empty workdir restores them instead of re-running. The stacks and the tuned generator
are regenerated (GIN: seconds; diffusion: tune again, or keep the workdir).

Writes ``benchmarks/results/s2s2_quality_<dataset>_<date>.{md,json}`` with the exact command, date and machine.

    python benchmarks/bench_s2s2_quality.py --dataset hippocampus --iterations 2000 --seeds 0,1,2 -device cpu
    python benchmarks/bench_s2s2_quality.py --dataset kvasir --generators gin,diffusion --tune-steps 20000 -device cuda
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
from pathlib import Path

from common import (REPO, SOURCES, command_line, dataset_folder, machine, robustness_of_seed, robustness_over_seeds,
                    run, setup_env, write_case_lists, write_record)
from nnunet_ext.atomic_io import write_json_atomic
from nnunet_ext.paths import console_script

DATASETS = {"kvasir": (141, *SOURCES["kvasir"]), "hippocampus": (142, *SOURCES["hippocampus"])}  # (id, *source)
STOCK = "nnUNetTrainer"
GOAL = "S2S2 at least as good as stock on clean data and better under corruption"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="kvasir")
    p.add_argument("--workdir", default=None, help="default: benchmarks/workdir/s2s2_<dataset>")
    p.add_argument("--generators", default="gin", help="stacks compared, comma-separated: gin, diffusion")
    p.add_argument("-k", dest="copies", type=int, default=4, help="copies per case in each stack (the paper: 16)")
    p.add_argument("--tune-steps", type=int, default=20000, help="diffusion: s2s2-tune steps")
    p.add_argument("--iterations", type=int, default=2000, help="training iterations per run (the budget)")
    p.add_argument("--iterations-per-epoch", type=int, default=250)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("-c", dest="configuration", default="2d")
    p.add_argument("--plans", default="nnUNetPlans_small")
    p.add_argument("--gpu-memory-target", type=float, default=0.1, help="GB, for plan-small")
    p.add_argument("--max-test-cases", type=int, default=60, help="only the first N test cases of fold 0 (0 = all)")
    p.add_argument("--robustness-args", default="--disable-tta --no-progress",
                   help="extra arguments for nnunet-ext robustness (one string)")
    p.add_argument("--no-robustness", action="store_true")
    p.add_argument("-device", dest="device", choices=["cpu", "cuda", "mps"], default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--records", default=None, help="finished runs' results and robustness tables, committed as they "
                                                   "come (default benchmarks/results/records/s2s2_<dataset>; '' = off)")
    return p.parse_args(argv)


def prepare(args) -> dict:
    """Convert and plan-small (skipped when done); fold 0 of nnU-Net's default split as train / test lists."""
    from nnunet_ext.benchmark.protocol import default_splits

    ds_id, converter, source, fe = DATASETS[args.dataset]
    if not source.is_dir():
        sys.exit(f"{args.dataset}: source {source} not found (../shared/data); nothing to benchmark")
    if dataset_folder(ds_id) is None:
        run([console_script("nnunet-ext"), "convert", converter, "--source", source, "--id", ds_id])
    raw = dataset_folder(ds_id)
    name = raw.name
    run([console_script("nnunet-ext"), "plan-small", "-d", ds_id, "-gpu_memory_target", args.gpu_memory_target,
         "-overwrite_plans_name", args.plans, "-c", args.configuration])
    ids = sorted(p.name[: -len(fe)] for p in (raw / "labelsTr").glob(f"*{fe}"))
    splits = [{"train": list(map(str, s["train"])), "val": list(map(str, s["val"]))} for s in default_splits(ids)]
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    if not (pre / "splits_final.json").is_file():  # what nnUNetv2_train would write; s2s2-tune -f 0 reads it
        write_json_atomic(pre / "splits_final.json", splits)
    train, test = splits[0]["train"], splits[0]["val"]
    if args.max_test_cases:
        test = test[: args.max_test_cases]
    lists = write_case_lists(Path(os.environ["nnUNet_raw"]).parent / "split", {"train": train, "test": test})
    print(f"split: {len(train)} training / {len(test)} test cases (fold 0 of nnU-Net's default split)")
    return {"id": ds_id, "name": name, "lists": lists}


def make_stacks(args, info: dict, generators: list) -> None:
    """The S2S2 stacks (s2s2-generate skips finished cases; s2s2-tune is skipped when its model exists)."""
    for g in generators:
        if g == "diffusion":
            model = (Path(os.environ["nnUNet_results"]) / info["name"] /
                     f"s2s2_generator__diffusion__{args.plans}__{args.configuration}" / "fold_0")
            if not (model / "unet").is_dir():
                tune = [console_script("nnunet-ext"), "s2s2-tune", "-d", info["id"], "-c", args.configuration, "-f", 0,
                        "-p", args.plans, "--steps", args.tune_steps, "-device", args.device]
                if (model / "checkpoint.pt").is_file():
                    tune.append("--resume")
                run(tune)
        cmd = [console_script("nnunet-ext"), "s2s2-generate", "-d", info["id"], "-c", args.configuration,
               "-p", args.plans, "-k", args.copies, "--generator", g, "-device", args.device]
        if g == "diffusion":
            cmd += ["-f", 0]
        run(cmd)


def main(argv=None):
    args = parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    bad = [g for g in generators if g not in ("gin", "diffusion")]
    if bad:
        sys.exit(f"--generators: unknown {', '.join(bad)} (gin, diffusion)")
    workdir = Path(args.workdir or REPO / "benchmarks" / "workdir" / f"s2s2_{args.dataset}").resolve()
    setup_env(workdir)
    if args.records is None:
        args.records = str(REPO / "benchmarks" / "results" / "records" / f"s2s2_{args.dataset}")
    records = Path(args.records).resolve() if args.records else None
    info = prepare(args)
    make_stacks(args, info, generators)
    trainers = [STOCK] + [f"nnUNetTrainerS2S2_{g}" for g in generators]
    args.trainers = ",".join(trainers)  # for robustness_of_seed
    out = workdir / "benchmark"

    def bench_cmd(seeds: str) -> list:
        cmd = [console_script("nnunet-ext"), "benchmark", "-d", info["id"], "-c", args.configuration, "-p", args.plans,
               "-tr", args.trainers, "--seeds", seeds, "--iterations", args.iterations,
               "--iterations-per-epoch", min(args.iterations_per_epoch, args.iterations),
               "--train-list", info["lists"]["train"], "--test-list", info["lists"]["test"], "-o", out,
               "-device", args.device]
        return cmd + (["--records", records] if records is not None else [])

    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    robustness = {}
    for s in seeds:  # one seed at a time: its robustness runs while its models exist
        run(bench_cmd(s))
        if not args.no_robustness:
            robustness[s] = robustness_of_seed(args, out, workdir, s, records, dataset=info["id"])
    final_cmd = bench_cmd(",".join(seeds))
    run(final_cmd)
    bench = json.loads((out / "benchmark.json").read_text())
    rob_cmp, rob_md = robustness_over_seeds(robustness, trainers)

    date = _dt.datetime.now().isoformat(timespec="seconds")
    command = command_line(__file__, argv)
    result = {"command": command, "date": date, "machine": machine(args.device), "dataset": args.dataset,
              "goal": GOAL, "generators": generators, "copies": args.copies,
              "tune_steps": args.tune_steps if "diffusion" in generators else None,
              "benchmark_command": "nnunet-ext " + " ".join(shlex.quote(str(c)) for c in final_cmd[1:]),
              "benchmark": bench, "robustness": robustness, "robustness_over_seeds": rob_cmp}
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    stem = res_dir / f"s2s2_quality_{args.dataset}_{date[:10]}"
    body = (out / "benchmark.md").read_text().split("\n", 1)[1].replace("\n## ", "\n### ")
    lines = [f"# S2S2 vs stock nnU-Net on {args.dataset}: clean and corrupted Dice, several seeds", "",
             f"Command: `{command}`  ", f"Date: {date}  ", f"Machine: {result['machine']}", "",
             f"Goal: {GOAL}. Stacks: {', '.join(generators)}, {args.copies} copies per case"
             + (f"; diffusion generator tuned {args.tune_steps} steps" if "diffusion" in generators else "") + ".",
             "", f"Benchmark: `{result['benchmark_command']}`", "", "## Benchmark", "", body.strip(), ""]
    if rob_md:
        lines += ["## Robustness over seeds", "", rob_md, ""]
    write_record(stem, result, "\n".join(lines), default=str)
    print("\n".join(lines))
    print(f"wrote {stem}.md / .json")


if __name__ == "__main__":
    main()
