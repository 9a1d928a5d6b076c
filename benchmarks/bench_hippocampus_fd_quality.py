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
import csv
import gzip
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from bench_fd import write_record
from nnunet_ext.atomic_io import replace_atomic

REPO = Path(__file__).resolve().parent.parent
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


def _bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def run(cmd, env=None) -> None:
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    rc = subprocess.call([str(c) for c in cmd], env=env)
    if rc != 0:
        sys.exit(f"failed (exit code {rc}): {' '.join(map(str, cmd))}\nre-run the same command to continue")


def converted_and_planned_2d(ds_id: int, converter: str, source: Path, plans: str = "nnUNetPlans") -> tuple:
    """Convert ``source`` with ``nnunet-ext convert CONVERTER`` to DatasetXXX in $nnUNet_raw and run nnU-Net's
    2d planning and preprocessing, each step skipped when done. Returns (dataset name, preprocessed folder,
    plans file)."""
    raw = Path(os.environ["nnUNet_raw"])
    if not list(raw.glob(f"Dataset{ds_id:03d}_*")):
        run([_bin("nnunet-ext"), "convert", converter, "--source", source, "--id", ds_id])
    name = next(raw.glob(f"Dataset{ds_id:03d}_*")).name
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    plans_file = pre / f"{plans}.json"
    if not plans_file.is_file() or not list((pre / f"{plans}_2d").glob("*.b2nd")):
        run([_bin("nnUNetv2_plan_and_preprocess"), "-d", ds_id, "-c", "2d", "-np", 2])
    return name, pre, plans_file


def setup_env(workdir: Path) -> None:
    for k, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        os.environ[k] = str(workdir / sub)
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", "2")


def prepare(args, workdir: Path) -> str:
    raw = Path(os.environ["nnUNet_raw"])
    existing = sorted(raw.glob(f"Dataset{DATASET_ID:03d}_*"))
    if not existing:
        run([_bin("nnunet-ext"), "convert", "msd_flat", "--source", args.source, "--id", DATASET_ID])
        existing = sorted(raw.glob(f"Dataset{DATASET_ID:03d}_*"))
    name = existing[0].name
    if args.plans == "nnUNetPlans_small":
        run([_bin("nnunet-ext"), "plan-small", "-d", DATASET_ID, "-gpu_memory_target", args.gpu_memory_target,
             "-overwrite_plans_name", args.plans, "-c", args.configuration])
    elif not (Path(os.environ["nnUNet_preprocessed"]) / name / f"{args.plans}.json").is_file():
        sys.exit(f"plans {args.plans} not found in {os.environ['nnUNet_preprocessed']}/{name}: plan and preprocess "
                 f"first (e.g. nnUNetv2_plan_and_preprocess -d {DATASET_ID} -c {args.configuration}), or use "
                 f"--plans nnUNetPlans_small")
    return name


def write_split(workdir: Path, name: str) -> tuple:
    """Fold 0 of nnU-Net's default split (208 / 52 cases), as case lists in WORKDIR/split/."""
    from nnunet_ext.benchmark.protocol import default_splits

    labels = Path(os.environ["nnUNet_raw"]) / name / "labelsTr"
    ids = sorted(p.name[: -len(".nii.gz")] for p in labels.glob("*.nii.gz"))
    fold0 = default_splits(ids)[0]
    d = workdir / "split"
    d.mkdir(exist_ok=True)
    train, test = d / "train.txt", d / "test.txt"
    train.write_text("\n".join(fold0["train"]) + "\n")
    test.write_text("\n".join(fold0["val"]) + "\n")
    print(f"split: {len(fold0['train'])} training / {len(fold0['val'])} test cases "
          f"(fold 0 of nnU-Net's default 5-fold split), {d}")
    return train, test


def robustness_of_seed(args, out: Path, workdir: Path, seed: str, records, dataset=DATASET_ID) -> dict:
    """``nnunet-ext robustness`` on the seed's models of the benchmark in ``out`` (resumable), its tables kept in
    RECORDS/robustness/seed<s>/. Uses ``args.trainers``, ``args.configuration``, ``args.plans``, ``args.device``
    and ``args.robustness_args``. Recorded tables are used as they are (a later session has no models)."""
    rec = records / "robustness" / f"seed{seed}" if records is not None else None
    rob_out = workdir / "robustness" / f"seed{seed}"
    if rec is not None and (rec / "robustness.md").is_file():
        print(f"robustness of seed {seed}: recorded in {rec} (kept)")
        return {"folder": str(rec), "markdown": (rec / "robustness.md").read_text(),
                "per_case": str(rec / "robustness_per_case.csv.gz")}
    from nnunet_ext.paths import ext_trainer_env
    bench = json.loads((out / "benchmark.json").read_text())
    fold, name = bench["protocol"]["fold"], bench["protocol"]["dataset_name"]
    variants = [t.strip() + "__bench" for t in args.trainers.split(",") if t.strip()]
    seed_dir = out / "runs" / f"seed{seed}"
    missing = [v for v in variants if not (seed_dir / name / f"{v}__{args.plans}__{args.configuration}" /
                                           f"fold_{fold}" / "checkpoint_final.pth").is_file()]
    if missing:
        print(f"robustness of seed {seed}: skipped, no models of {', '.join(missing)} in {seed_dir} (runs restored "
              f"from records) and no recorded tables in {rec}")
        return {"folder": None, "markdown": None}
    env = ext_trainer_env([out / "trainers"])
    env["nnUNet_results"] = str(seed_dir)
    run([_bin("nnunet-ext"), "robustness", "-d", dataset, "-c", args.configuration, "-tr", ",".join(variants),
         "-f", fold, "-p", args.plans, "-o", rob_out, "-device", args.device,
         *shlex.split(args.robustness_args)], env=env)
    md = rob_out / "robustness.md"
    if rec is not None:
        rec.mkdir(parents=True, exist_ok=True)
        # robustness.md last: it marks the record complete; the per-case table compressed (~10x smaller)
        for f, dst in (("robustness.csv", "robustness.csv"), ("robustness.png", "robustness.png"),
                       ("robustness_per_case.csv", "robustness_per_case.csv.gz"), ("robustness.md", "robustness.md")):
            if (rob_out / f).is_file():
                data = (rob_out / f).read_bytes()
                data = gzip.compress(data, mtime=0) if dst.endswith(".gz") else data
                replace_atomic(rec / dst, lambda tmp, data=data: Path(tmp).write_bytes(data))
    return {"folder": str(rob_out), "markdown": md.read_text() if md.is_file() else None,
            "per_case": str(rob_out / "robustness_per_case.csv")}


def robustness_over_seeds(robustness: dict, trainers: list) -> tuple:
    """Per corruption, over all seeds with tables: Dice per trainer and the paired per-case difference against the
    first trainer with a 95% bootstrap CI (:mod:`nnunet_ext.robustness.compare`). Returns (result, markdown)."""
    from nnunet_ext.robustness.compare import compare_under_corruptions, comparison_markdown
    rows, seeds = [], []
    for s, r in robustness.items():
        path = Path(r.get("per_case") or "")
        if not path.is_file():
            continue
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        variants = {t + "__bench": t for t in trainers}
        rows += [dict(q, seed=s, trainer=variants.get(q["trainer"], q["trainer"]))
                 for q in csv.DictReader(io.StringIO(text))]
        seeds.append(s)
    if not rows:
        return None, ""
    cmp = compare_under_corruptions(rows, trainers)
    md = (f"Mean foreground Dice per corruption over seeds {', '.join(seeds)}, severities >= 1 (clean: the unmodified "
          f"test images), cases and classes; difference against {trainers[0]} paired by case, class, seed and "
          f"severity, averaged per case, mean over cases with a 95% bootstrap CI (cases resampled).\n\n"
          + comparison_markdown(cmp))
    return {"seeds": seeds, "per_corruption": cmp}, md


def machine(device: str) -> str:
    from nnunet_ext.benchmark.report import machine as m
    return m(device)


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
        cmd = [_bin("nnunet-ext"), "benchmark", "-d", DATASET_ID, "-c", args.configuration, "-p", args.plans,
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
            robustness[s] = robustness_of_seed(args, out, workdir, s, records)
    run(bench_cmd(",".join(seeds)))  # the report over all seeds (every run kept or restored from the records)
    bench = json.loads((out / "benchmark.json").read_text())
    final_cmd = bench_cmd(",".join(seeds))

    date = _dt.datetime.now().isoformat(timespec="seconds")
    command = "python " + " ".join([os.path.relpath(__file__, REPO)] +
                                   [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])])
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
