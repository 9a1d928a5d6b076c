"""Benchmark: semi-supervised nnU-Net on MSD Hippocampus with few labels (issue #8).

Data (``../shared/data/msd_hippocampus``, converted to ``Dataset105_HippocampusSemi`` in WORKDIR):

* test set: fold 0 of nnU-Net's default split (52 cases), the same as the FD benchmark's;
* labelled: ``--labelled`` (20) of fold 0's 208 training cases, drawn with ``--split-seed``;
* unlabelled: the other 188 training cases, as images only in ``imagesUnlabeled`` (named ``u_<case>``);
* all 260 cases stay labelled in imagesTr so that the upper bound (stock on all 208 training cases) uses the
  same preprocessing; every run's training cases are fixed by ``--train-list`` (nnunet-ext benchmark).

Two parts (``--part speed``, ``--part quality``, default both):

**speed**: time per training iteration of ``nnUNetTrainerCPS`` against *two stock trainers* doing the same
work: each stock trainer takes one step on a batch of 2B labelled patches, CPS takes one step of both
networks on B labelled + B unlabelled patches (B = the plans' batch size). All batches are drawn once and every
trainer is timed on the same batches, back to back, rotating who goes first; the figure is the median of the
per-batch ratio CPS / (stock 1 + stock 2) with a 95% bootstrap interval. Goal: at most 1.05.

**quality** (resumable; re-run the same command): with ``nnunet-ext benchmark`` (same budget, split, seeds):
1. ``nnUNetTrainer`` (labelled only), ``nnUNetTrainerCPS``, ``nnUNetTrainerCPS_UIF`` on the labelled cases;
2. the pseudo-label route: ``nnunet-ext pseudo-label`` with each seed's labelled-only stock model, then stock
   ``nnUNetTrainer`` on labelled + kept pseudo-labelled cases (a new raw dataset per seed);
3. the upper bound: ``nnUNetTrainer`` on all 208 training cases with their labels.
Reported: Dice per class (mean +- sd over seeds) and the share of the gap labelled-only -> upper bound that each
method closes (goal: at least half).

The quality part goes seed by seed and keeps every finished run's results in ``--records`` (default
``benchmarks/results/records/cps_hippocampus/``, a few kB per run, no models): commit it as runs finish, and a
later session with an empty workdir restores them instead of re-running (about 5 CPU hours in all on 2 cores).

Writes ``benchmarks/results/cps_hippocampus_<part>_<date>.{md,json}`` with the command, date and machine.

    python benchmarks/bench_cps.py --workdir /tmp/bench_cps --part speed --batches 30

Like ``bench_fd.py``, the script runs with glibc's malloc caching freed memory (``--allocator``, see there).
    python benchmarks/bench_cps.py --workdir /tmp/bench_cps --part quality --iterations 2000 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

from common import (REPO, add_allocator_argument, allocator_label, bootstrap_median_ci, dataset_folder,
                    ensure_allocator, fold0_cases, machine, new_record_stem, run, write_record)
from common import setup_env as setup_nnunet_folders
from nnunet_ext.paths import console_script


DATASET_ID = 105
PL_BASE_ID = 150  # pseudo-labelled datasets: 150 + seed
PLANS = "nnUNetPlans_small"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "msd_hippocampus"))
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "workdir" / "cps"))
    p.add_argument("--part", choices=["speed", "quality", "both"], default="both")
    add_allocator_argument(p)
    p.add_argument("--labelled", type=int, default=20, help="labelled training cases")
    p.add_argument("--split-seed", type=int, default=0, help="which training cases are labelled")
    p.add_argument("--gpu-memory-target", type=float, default=0.1, help="GB, for plan-small")
    # speed
    p.add_argument("--configs", default="2d,3d_fullres", help="configurations timed (speed)")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=10000)
    # quality
    p.add_argument("-c", "--configuration", default="2d", help="configuration trained (quality)")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--iterations-per-epoch", type=int, default=250)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--pl-keep", default="0.95", help="pseudo-label --keep")
    p.add_argument("-device", dest="device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--records", default=str(REPO / "benchmarks" / "results" / "records" / "cps_hippocampus"),
                   help="quality: finished runs' results (a few kB each, no models), committed as they come; a later "
                        "session restores them instead of re-running ('' = off)")
    return p.parse_args(argv)


def setup_env(workdir: Path) -> None:
    setup_nnunet_folders(workdir)
    from nnunet_ext.paths import ext_trainer_env
    os.environ.update(ext_trainer_env())


def prepare(args, workdir: Path, configs) -> dict:
    """Convert, split (labelled / unlabelled / test), plan-small and preprocess (labelled and unlabelled)."""
    import numpy as np

    from nnunet_ext.paths import link_or_copy

    if dataset_folder(DATASET_ID) is None:
        run([console_script("nnunet-ext"), "convert", "msd_flat", "--source", args.source, "--id", DATASET_ID,
             "--name", "HippocampusSemi"])
    folder = dataset_folder(DATASET_ID)
    train, test = (sorted(c) for c in fold0_cases(folder / "labelsTr", ".nii.gz"))
    rng = np.random.default_rng(args.split_seed)
    labelled = sorted(rng.choice(train, size=args.labelled, replace=False).tolist())
    unlabelled = [c for c in train if c not in labelled]
    un_dir = folder / "imagesUnlabeled"
    un_dir.mkdir(exist_ok=True)
    for c in unlabelled:  # renamed: the same images are labelled cases of the upper-bound run
        link_or_copy(folder / "imagesTr" / f"{c}_0000.nii.gz", un_dir / f"u_{c}_0000.nii.gz")
    split_dir = workdir / "split"
    split_dir.mkdir(exist_ok=True)
    lists = {"labelled": labelled, "all_train": train, "test": test, "unlabelled": unlabelled}
    for k, v in lists.items():
        (split_dir / f"{k}.txt").write_text("\n".join(v) + "\n")
    for c in configs:
        run([console_script("nnunet-ext"), "plan-small", "-d", DATASET_ID, "-gpu_memory_target", args.gpu_memory_target,
             "-overwrite_plans_name", PLANS, "-c", c])
    run([console_script("nnunet-ext"), "preprocess-unlabeled", "-d", DATASET_ID, "-c", *configs, "-p", PLANS])
    print(f"split: {len(labelled)} labelled / {len(unlabelled)} unlabelled training cases, {len(test)} test cases")
    return {"name": folder.name, "lists": {k: split_dir / f"{k}.txt" for k in lists}, "sizes":
            {k: len(v) for k, v in lists.items()}}


# ------------------------------------------------------------------------------------------------- speed
def time_config(config: str, args) -> dict:
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    os.environ["nnUNet_n_proc_DA"] = "0"  # batches drawn in this process
    dev = torch.device("cuda" if args.device == "cuda" else "cpu")
    trainers = {}
    for i, name in enumerate(("stock_1", "stock_2", "cps")):
        torch.manual_seed(i)
        cls = "nnUNetTrainerCPS" if name == "cps" else "nnUNetTrainer"
        t = get_trainer_from_args(str(DATASET_ID), config, 0, cls, PLANS, device=dev)
        t.initialize()
        t.network.train()
        trainers[name] = t
    stock = trainers["stock_1"]
    cps = trainers["cps"]
    dl_tr, _ = stock.get_dataloaders()
    dl_un = cps.make_unlabeled_loader(cps.all_unlabeled_identifiers())
    n = args.warmup + args.batches
    labelled = [next(dl_tr) for _ in range(2 * n)]
    unlabelled = [next(dl_un) for _ in range(n)]
    for dl in (dl_tr, dl_un):
        if hasattr(dl, "_finish"):
            dl._finish()

    def cat(b1, b2):
        t = [torch.cat((x, y)) for x, y in zip(b1["target"], b2["target"])] if isinstance(b1["target"], list) \
            else torch.cat((b1["target"], b2["target"]))
        return {"data": torch.cat((b1["data"], b2["data"])), "target": t, "keys": list(b1["keys"]) + list(b2["keys"])}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = {"stock_1": [], "stock_2": [], "cps": []}
    order0 = list(times)
    t_start = time.time()
    for i in range(n):
        double = cat(labelled[2 * i], labelled[2 * i + 1])  # 2B labelled patches for each stock trainer
        cps.dataloader_unlabeled = iter([unlabelled[i]])
        order = order0[i % 3:] + order0[:i % 3]
        for name in order:
            sync()
            t0 = time.perf_counter()
            trainers[name].train_step(double if name != "cps" else labelled[2 * i])
            sync()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        if i >= args.warmup:
            two = times["stock_1"][-1] + times["stock_2"][-1]
            print(f"  {config} batch {i - args.warmup + 1}/{args.batches}: two stock {two:.2f} s, CPS "
                  f"{times['cps'][-1]:.2f} s, ratio {times['cps'][-1] / two:.3f} ({time.time() - t_start:.0f} s)",
                  flush=True)
    two = np.asarray(times["stock_1"]) + np.asarray(times["stock_2"])
    ratios = np.asarray(times["cps"]) / two
    med, ci = bootstrap_median_ci(ratios, args.bootstrap)
    return {"config": config, "batch_size": stock.batch_size,
            "patch_size": list(stock.configuration_manager.patch_size),
            "median_seconds": {"two_stock": float(np.median(two)), "cps": float(np.median(times["cps"]))},
            "ratio": {"median_per_batch": med, "ci95": ci,
                      "quartiles": [float(q) for q in np.percentile(ratios, [25, 75])]},
            "all_times": times}


def speed(args, info: dict, configs) -> dict:
    result = {"timing": [time_config(c, args) for c in configs]}
    lines = ["| config | B x patch | two stock trainers (2B labelled each) s/it | CPS (B labelled + B unlabelled) s/it "
             "| per-batch ratio: median | 95% CI | quartiles | goal (<= 1.05) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["timing"]:
        v = r["ratio"]
        lines.append(f"| {r['config']} | {r['batch_size']} x {r['patch_size']} | "
                     f"{r['median_seconds']['two_stock']:.2f} "
                     f"| {r['median_seconds']['cps']:.2f} | {v['median_per_batch']:.3f} | [{v['ci95'][0]:.3f}, "
                     f"{v['ci95'][1]:.3f}] | [{v['quartiles'][0]:.3f}, {v['quartiles'][1]:.3f}] | "
                     f"{'met' if v['ci95'][1] <= 1.05 else 'not met'} |")
    lines += ["", f"{args.batches} batches per configuration after {args.warmup} warm-up batches, plans {PLANS}. "
              "Every batch is timed for all three back to back, rotating who goes first."]
    result["markdown"] = "\n".join(lines)
    return result


# ----------------------------------------------------------------------------------------------- quality
SEMI = "nnUNetTrainer,nnUNetTrainerCPS,nnUNetTrainerCPS_UIF"


def bench(args, dataset, trainers, train_list, test_list, out: Path, records=None, env=None) -> dict:
    cmd = [console_script("nnunet-ext"), "benchmark", "-d", dataset, "-c", args.configuration, "-p", PLANS,
           "-tr", trainers, "--seeds", args.seeds, "--iterations", args.iterations,
           "--iterations-per-epoch", args.iterations_per_epoch, "--train-list", train_list, "--test-list", test_list,
           "-o", out, "-device", args.device]
    if records is not None:
        cmd += ["--records", records]
    run(cmd, env)
    return json.loads((out / "benchmark.json").read_text())


def class_means(summary: dict, trainer: str) -> dict:
    """{class name: mean Dice over seeds} of one trainer (a benchmark's per-class summary)."""
    per_class = summary["trainers"][trainer]["per_class"]
    return {e["name"]: e["dice"]["mean"] for e in per_class.values()}


def _recorded_summary(records: Path, seed: str, trainer: str):
    """The benchmark summary of one recorded run (``nnunet-ext benchmark --records``), or None if not recorded."""
    from nnunet_ext.benchmark.records import RunRecords
    from nnunet_ext.benchmark.report import summarise
    rec = RunRecords(records)
    if not rec.has(int(seed), trainer):
        return None
    rows = json.loads((rec.run_dir(int(seed), trainer) / "benchmark_rows.json").read_text())
    return summarise(rows, [trainer], [int(seed)])


def pseudo_label_route(args, s: str, lists: dict, workdir: Path, records) -> dict:
    """Stock nnUNetTrainer on labelled + pseudo-labelled cases (seed s); returns its benchmark summary.

    The pseudo-labels come from seed s's labelled-only stock model of ``bench_semi``. A recorded route is read
    from the records (a later session has neither that model nor the pseudo-labelled dataset); if the route is
    not recorded and the model is gone (its run was restored from the records), the model is trained again with
    the same seed in ``bench_semi_model`` (same initial weights and batches)."""
    from nnunet_ext.paths import ext_trainer_env

    pl_rec = records / f"pl_seed{s}" if records is not None else None
    if pl_rec is not None:
        summ = _recorded_summary(pl_rec, s, "nnUNetTrainer")
        if summ is not None:
            print(f"pseudo-label route, seed {s}: recorded in {pl_rec} (kept)")
            return summ
    one = argparse.Namespace(**{**vars(args), "seeds": s})
    target = PL_BASE_ID + int(s)
    if dataset_folder(target) is None:
        semi_out = workdir / "bench_semi"
        proto = json.loads((semi_out / "protocol.json").read_text())
        model = (semi_out / "runs" / f"seed{s}" / proto["dataset_name"] /
                 f"nnUNetTrainer__bench__{PLANS}__{args.configuration}" / f"fold_{proto['fold']}")
        if not (model / "checkpoint_final.pth").is_file():
            semi_out = workdir / "bench_semi_model"
            bench(one, DATASET_ID, "nnUNetTrainer", lists["labelled"], lists["test"], semi_out)
        env = ext_trainer_env([semi_out / "trainers"])
        env["nnUNet_results"] = str(semi_out / "runs" / f"seed{s}")
        run([console_script("nnunet-ext"), "pseudo-label", "-d", DATASET_ID, "-c", args.configuration, "-p", PLANS,
             "-tr", "nnUNetTrainer__bench", "-f", proto["fold"], "--target-id", target, "--target-name",
             f"HippocampusPLseed{s}", "--keep", args.pl_keep, "--disable-tta", "-device", args.device], env)
    new = dataset_folder(target)
    kept = [c for c, r in json.loads((new / "pseudo_labels.json").read_text())["cases"].items() if r["kept"]]
    train_pl = workdir / "split" / f"labelled_plus_pseudo_seed{s}.txt"
    train_pl.write_text("\n".join(Path(lists["labelled"]).read_text().split() + kept) + "\n")
    run([console_script("nnunet-ext"), "plan-small", "-d", target, "-gpu_memory_target", args.gpu_memory_target,
         "-overwrite_plans_name", PLANS, "-c", args.configuration])
    return bench(one, target, "nnUNetTrainer", train_pl, lists["test"], workdir / f"bench_pl_seed{s}",
                 pl_rec)["summary"]


def quality(args, info: dict, workdir: Path) -> dict:
    """Seed by seed (each seed's pseudo-label route needs that seed's labelled-only model, and every finished
    run is recorded as it comes), then the reports over all seeds."""
    lists = info["lists"]
    records = Path(args.records).resolve() if args.records else None
    rec = (lambda name: records / name) if records is not None else (lambda name: None)
    pl_results = {}
    for s in [x.strip() for x in args.seeds.split(",") if x.strip()]:
        one = argparse.Namespace(**{**vars(args), "seeds": s})
        bench(one, DATASET_ID, "nnUNetTrainer", lists["labelled"], lists["test"], workdir / "bench_semi", rec("semi"))
        pl_results[s] = pseudo_label_route(args, s, lists, workdir, records)
        bench(one, DATASET_ID, SEMI, lists["labelled"], lists["test"], workdir / "bench_semi", rec("semi"))
        bench(one, DATASET_ID, "nnUNetTrainer", lists["all_train"], lists["test"], workdir / "bench_upper",
              rec("upper"))
    semi = bench(args, DATASET_ID, SEMI, lists["labelled"], lists["test"], workdir / "bench_semi", rec("semi"))
    upper = bench(args, DATASET_ID, "nnUNetTrainer", lists["all_train"], lists["test"], workdir / "bench_upper",
                  rec("upper"))
    return {"semi": semi, "upper": upper, "pseudo_label": pl_results}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ensure_allocator(args, argv, __file__)
    if not Path(args.source).is_dir():
        sys.exit(f"Hippocampus source not found: {args.source}; pass --source")
    workdir = Path(args.workdir).resolve()
    setup_env(workdir)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    parts = ["speed", "quality"] if args.part == "both" else [args.part]
    configs = [c for c in args.configs.split(",") if c] if "speed" in parts else []
    if "quality" in parts and args.configuration not in configs:
        configs.append(args.configuration)
    info = prepare(args, workdir, configs)
    date = _dt.datetime.now().isoformat(timespec="seconds")
    command = "python " + " ".join([os.path.relpath(__file__, REPO)] +
                                   [shlex.quote(a) for a in argv])
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    header = f"Command: `{command}`  \nDate: {date}  \nMachine: {machine()}  \nAllocator: {allocator_label(args)}\n\n"
    if "speed" in parts:
        r = speed(args, info, [c for c in args.configs.split(",") if c])
        stem = new_record_stem(res_dir / f"cps_hippocampus_speed_{date[:10]}")
        write_record(stem, {"command": command, "date": date, "machine": machine(),
                            "allocator": allocator_label(args), **r},
                     "# CPS vs two stock nnU-Net trainers on MSD Hippocampus: time per "
                     f"training iteration\n\n{header}{r['markdown']}\n")
        print(r["markdown"])
        print(f"wrote {stem}.md/.json")
    if "quality" in parts:
        q = quality(args, info, workdir)
        md = quality_markdown(q, info)
        stem = res_dir / f"cps_hippocampus_quality_{date[:10]}"
        write_record(stem, {"command": command, "date": date, "machine": machine(), "split": info["sizes"], **q},
                     f"# Semi-supervised nnU-Net on MSD Hippocampus ({info['sizes']['labelled']}"
                     f" labelled cases)\n\n{header}{md}\n", default=str)
        print(md)
        print(f"wrote {stem}.md/.json")


def quality_markdown(q: dict, info: dict) -> str:
    """Dice per class for each route and the share of the labelled-only -> fully-labelled gap it closes."""
    import numpy as np

    rows = {"stock, labelled only": class_means(q["semi"]["summary"], "nnUNetTrainer"),
            "CPS": class_means(q["semi"]["summary"], "nnUNetTrainerCPS"),
            "CPS + UIF": class_means(q["semi"]["summary"], "nnUNetTrainerCPS_UIF")}
    pl = [class_means(r, "nnUNetTrainer") for r in q["pseudo_label"].values()]
    if pl:
        rows["pseudo-label route"] = {k: float(np.mean([p[k] for p in pl])) for k in pl[0]}
    rows["stock, all labelled (upper bound)"] = class_means(q["upper"]["summary"], "nnUNetTrainer")
    classes = list(rows["stock, labelled only"])
    lo, hi = rows["stock, labelled only"], rows["stock, all labelled (upper bound)"]
    lines = ["| route | " + " | ".join(f"Dice {c}" for c in classes) + " | share of the gap closed (mean of classes) |",
             "|---|" + "---|" * (len(classes) + 1)]
    for name, m in rows.items():
        gap = np.mean([(m[c] - lo[c]) / (hi[c] - lo[c]) if hi[c] != lo[c] else np.nan for c in classes])
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.3f}" for c in classes) + f" | {gap:.2f} |")
    lines += ["", "Paired per-case difference from stock on the labelled cases (same test cases and seeds; mean of "
              "classes, 95% bootstrap CI over cases) and the share of the gap it stands for:", "",
              "| route | ΔDice [95% CI] | share of the gap [95% CI] |", "|---|---|---|"]
    gap_all = np.mean([hi[c] - lo[c] for c in classes])
    for name, tr in (("CPS", "nnUNetTrainerCPS"), ("CPS + UIF", "nnUNetTrainerCPS_UIF")):
        d = q["semi"]["summary"]["trainers"][tr]["paired_vs_reference"]["all"]["dice"]
        lines.append(f"| {name} | {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | "
                     f"{d['mean'] / gap_all:.2f} [{d['ci_low'] / gap_all:.2f}, {d['ci_high'] / gap_all:.2f}] |")
    s = info["sizes"]
    lines += ["", f"{s['labelled']} labelled / {s['unlabelled']} unlabelled training cases, {s['test']} test cases "
              "(fold 0 of nnU-Net's default split); Dice = mean over seeds of the mean over test cases. "
              "Paired per-case "
              "differences with bootstrap CIs are in each benchmark's benchmark.md (bench_semi, bench_upper, "
              "bench_pl_seed*)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
