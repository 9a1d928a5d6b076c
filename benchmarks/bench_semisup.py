"""Benchmark: unlabelled images where the gap is real: MSD Hippocampus with 5 labelled cases (issue 27, section 5).

Data (``../shared/data/msd_hippocampus``, converted with ``nnunet-ext convert msd_flat`` to
``Dataset106_HippocampusSemi`` in WORKDIR, as ``bench_cps.py`` does):

* test set: fold 0 of nnU-Net's default split (52 cases), the FD / CPS benchmarks' (``--max-test-cases K``: the
  first K of them, for checks only);
* labelled: ``--labelled`` (5; 10 is the other setting the issue asks for) of fold 0's 208 training cases, drawn
  with ``--split-seed``; unlabelled: the other training cases, as images only in ``imagesUnlabeled`` (``u_<case>``);
* all 260 cases stay labelled in imagesTr (the upper bound trains on the 208 training cases with their labels);
  every run's training cases are fixed by a case list.

Routes (``--routes``, default all but cps_cutmix_uif), the same plans (``nnunet-ext plan-small``, 0.1 GB),
configuration, budget (``--iterations``) and seeds (``--seeds``) for all:

* ``stock``: ``nnUNetTrainer`` on the labelled cases (labelled only; the reference);
* ``cps``, ``cps_uif``, ``cps_cutmix`` (``cps_cutmix_uif``): ``nnUNetTrainerCPS``, ``nnUNetTrainerCPS_UIF``,
  ``nnUNetTrainerCPS_cutmix`` (``nnUNetTrainerCPS_cutmix_UIF``) on the labelled + unlabelled cases;
* ``pl1``: one pseudo-label round: round 0 = the seed's ``stock`` model, then stock nnU-Net on labelled + kept
  pseudo-labelled cases (``--pl-keep``);
* ``pl3``: ``--pl-rounds`` (3) rounds, from round 2 on with the stability filter (``--min-stability`` 0.9); its
  round 1 is ``pl1``'s. Both run through ``benchmarks/pseudo_label_rounds.py`` (every round trains the source's plans,
  resumable, records per round);
* ``upper``: ``nnUNetTrainer`` on all 208 training cases with their labels (the upper bound).

Trainings of ``stock``, ``cps*`` and ``upper`` are ``nnunet-ext benchmark`` runs (budget, seed, prediction of the
test cases, evaluation, records); every pseudo-label round trains the same ``nnUNetTrainer__bench`` variant with the
same budget and seed. Reported: the gap labelled-only -> upper bound in Dice points (a warning when it is below 5
points: then fewer labels are needed), Dice per class per route (mean over seeds), each route's paired difference
from ``stock`` and its **share of the gap** with a 95% CI (bootstrap over test cases: per case the route's and
the upper bound's differences from ``stock``, paired by case, class and seed, averaged over classes and seeds;
resampled cases, share = mean route difference / mean upper-bound difference), and the wall time per route.

Resumable across sessions: every finished run is recorded in ``--records`` (default
``benchmarks/results/records/semisup_hippocampus/L<labelled>/``: ``semi``, ``upper`` = ``nnunet-ext benchmark``
records, ``pl/seed<s>`` = the pseudo-label driver's rounds); commit it as runs finish, and a later session with an
empty WORKDIR restores them instead of re-running. Each call writes the report over all runs recorded so far
(``--report-only``: only that) to ``benchmarks/results/semisup_hippocampus_<date>.{md,json}`` (with
``_L<labelled>`` for other label counts; to WORKDIR/reports/ while routes of the default set or seeds are missing),
with the command, date and machine.

Cost (2 CPU cores, 2d, plans-small, 2000 iterations; per-iteration times of ``bench_cps.py``'s runs): per seed
stock 14 min, upper 14, CPS 49, CPS + UIF 42, CPS + CutMix ~50, pl1 ~19 (pseudo-labelling 203 cases, preprocessing,
training, evaluation; its round 0 is stock's model), pl3 ~38 more: ~3.8 h per seed, ~11.5 h for seeds 0-2, in
commands of at most ~3 h each (4-5 sessions of 3 hours; run the pl routes in the session of that seed's stock run,
else round 0 is trained again, +14 min):

    python benchmarks/bench_semisup.py --routes stock,upper,pl1,pl3 --seeds 0,1      # ~2.8 h
    python benchmarks/bench_semisup.py --routes stock,upper,pl1,pl3 --seeds 2        # ~1.4 h
    python benchmarks/bench_semisup.py --routes cps --seeds 0,1,2                    # ~2.5 h
    python benchmarks/bench_semisup.py --routes cps_uif --seeds 0,1,2                # ~2.1 h
    python benchmarks/bench_semisup.py --routes cps_cutmix --seeds 0,1,2             # ~2.5 h
    python benchmarks/bench_semisup.py --report-only

Like ``bench_fd.py``, the script runs with glibc's malloc caching freed memory (``--allocator``, see there).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

from common import (REPO, add_allocator_argument, allocator_label, command_line, dataset_folder, ensure_allocator,
                    fold0_cases, machine, new_record_stem, run, write_case_lists, write_record)
from common import setup_env as setup_nnunet_folders
from nnunet_ext.paths import console_script

DATASET_ID = 106
#: the pseudo-label rounds' datasets: PL_BASE_ID + 10 * seed + round
PL_BASE_ID = 600
PLANS = "nnUNetPlans_small"
GAP_MIN = 0.05  # the issue's: at least 5 Dice points between labelled only and the upper bound

#: route -> (label, kind, trainer or rounds, training cases)
ROUTES = {
    "stock": ("stock, labelled only", "benchmark", "nnUNetTrainer", "labelled"),
    "upper": ("stock, all training cases labelled (upper bound)", "benchmark", "nnUNetTrainer", "all_train"),
    "pl1": ("pseudo-label, 1 round", "rounds", 1, "labelled"),
    "pl3": ("pseudo-label, {n} rounds, stability >= {s}", "rounds", None, "labelled"),
    "cps": ("CPS", "benchmark", "nnUNetTrainerCPS", "labelled"),
    "cps_uif": ("CPS + UIF", "benchmark", "nnUNetTrainerCPS_UIF", "labelled"),
    "cps_cutmix": ("CPS + CutMix", "benchmark", "nnUNetTrainerCPS_cutmix", "labelled"),
    "cps_cutmix_uif": ("CPS + CutMix + UIF", "benchmark", "nnUNetTrainerCPS_cutmix_UIF", "labelled"),
}
DEFAULT_ROUTES = "stock,cps,cps_uif,cps_cutmix,pl1,pl3,upper"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "msd_hippocampus"))
    p.add_argument("--workdir", default=None, help="default: benchmarks/workdir/semisup_L<labelled>")
    p.add_argument("--routes", default=DEFAULT_ROUTES, help=f"comma-separated, of: {', '.join(ROUTES)}")
    add_allocator_argument(p)
    p.add_argument("--labelled", type=int, default=5, help="labelled training cases")
    p.add_argument("--split-seed", type=int, default=0, help="which training cases are labelled")
    p.add_argument("--max-test-cases", type=int, default=0, help="the first K test cases only (checks; 0 = all 52)")
    p.add_argument("--gpu-memory-target", type=float, default=0.1, help="GB, for plan-small")
    p.add_argument("-c", "--configuration", default="2d")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--iterations-per-epoch", type=int, default=250)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--pl-keep", default="0.95", help="pseudo-label --keep")
    p.add_argument("--pl-rounds", type=int, default=3, help="rounds of the pl3 route")
    p.add_argument("--min-stability", type=float, default=0.9, help="pl3's stability filter (from round 2 on)")
    p.add_argument("-device", dest="device", choices=["cpu", "cuda"], default=None)
    p.add_argument("-np", dest="num_processes", type=int, default=2, help="processes for preprocessing, prediction")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--records", default=str(REPO / "benchmarks" / "results" / "records" / "semisup_hippocampus"),
                   help="finished runs' results (a few kB each, no models) in <records>/L<labelled>/, committed as "
                        "they come; a later session restores them instead of re-running ('' = off)")
    p.add_argument("--report-only", action="store_true", help="run nothing: the report of the runs recorded so far")
    a = p.parse_args(argv)
    a.routes = [r.strip() for r in a.routes.split(",") if r.strip()]
    unknown = [r for r in a.routes if r not in ROUTES]
    if unknown:
        p.error(f"--routes: unknown {', '.join(unknown)}; known: {', '.join(ROUTES)}")
    a.seeds = [int(s) for s in str(a.seeds).split(",") if s.strip()]
    if any(not 0 <= s <= 9 for s in a.seeds):
        p.error("--seeds: 0..9 (the pseudo-label datasets are numbered by seed)")
    if not 1 <= a.labelled < 208:
        p.error("--labelled: 1..207")
    if not 1 <= a.pl_rounds <= 9:
        p.error("--pl-rounds: 1..9")
    a.workdir = a.workdir or str(REPO / "benchmarks" / "workdir" / f"semisup_L{a.labelled}")
    a.records_dir = Path(a.records).resolve() / f"L{a.labelled}" if a.records else None
    return a


def route_label(route: str, args) -> str:
    return ROUTES[route][0].format(n=args.pl_rounds, s=args.min_stability)


# ------------------------------------------------------------------------------------------------ data
def split(args, workdir: Path) -> dict:
    """The case lists (labelled / unlabelled / all training / test), from the source's labels (the converted dataset
    keeps the case ids), in WORKDIR/split/."""
    import numpy as np

    train, test = (sorted(c) for c in fold0_cases(Path(args.source) / "labels", ".nii.gz"))
    if len(train) + len(test) != 260:
        sys.exit(f"{args.source}/labels holds {len(train) + len(test)} cases, not MSD Hippocampus's 260")
    if args.max_test_cases:
        test = test[:args.max_test_cases]
    rng = np.random.default_rng(args.split_seed)
    labelled = sorted(rng.choice(train, size=args.labelled, replace=False).tolist())
    unlabelled = [c for c in train if c not in labelled]
    old = workdir / "split" / "labelled.txt"
    if old.is_file() and old.read_text().split() != labelled:
        sys.exit(f"{workdir} holds a split with other labelled cases (--labelled / --split-seed changed): use another "
                 f"--workdir")
    lists = write_case_lists(workdir / "split", {"labelled": labelled, "all_train": train, "test": test,
                                                 "unlabelled": unlabelled})
    return {"lists": lists, "unlabelled": unlabelled,
            "sizes": {"labelled": len(labelled), "unlabelled": len(unlabelled), "all_train": len(train),
                      "test": len(test)}}


def prepare(args, workdir: Path, info: dict) -> None:
    """Convert, put the unlabelled cases into imagesUnlabeled, plan-small and preprocess; for CPS routes also the
    unlabelled images. Every step is skipped when done."""
    from nnunet_ext.paths import link_or_copy

    if dataset_folder(DATASET_ID) is None:
        run([console_script("nnunet-ext"), "convert", "msd_flat", "--source", args.source, "--id", DATASET_ID,
             "--name", "HippocampusSemi"])
    folder = dataset_folder(DATASET_ID)
    un_dir = folder / "imagesUnlabeled"
    un_dir.mkdir(exist_ok=True)
    for c in info["unlabelled"]:  # renamed: the same images are labelled cases of the upper bound's run
        link_or_copy(folder / "imagesTr" / f"{c}_0000.nii.gz", un_dir / f"u_{c}_0000.nii.gz")
    run([console_script("nnunet-ext"), "plan-small", "-d", DATASET_ID, "-gpu_memory_target", args.gpu_memory_target,
         "-overwrite_plans_name", PLANS, "-c", args.configuration, "-np", args.num_processes])
    if any(str(ROUTES[r][2]).startswith("nnUNetTrainerCPS") for r in args.routes):
        run([console_script("nnunet-ext"), "preprocess-unlabeled", "-d", DATASET_ID, "-c", args.configuration, "-p",
             PLANS, "-np", args.num_processes])
    s = info["sizes"]
    print(f"split: {s['labelled']} labelled / {s['unlabelled']} unlabelled training cases, {s['test']} test cases")


# ------------------------------------------------------------------------------------------------ runs
def bench_out(workdir: Path, route: str) -> Path:
    return workdir / ("bench_upper" if ROUTES[route][3] == "all_train" else "bench_semi")


def bench_records(args, route: str) -> Optional[Path]:
    if args.records_dir is None:
        return None
    return args.records_dir / ("upper" if ROUTES[route][3] == "all_train" else "semi")


def run_benchmark_route(args, info: dict, workdir: Path, route: str, seed: int) -> None:
    _, _, trainer, cases = ROUTES[route]
    cmd = [console_script("nnunet-ext"), "benchmark", "-d", DATASET_ID, "-c", args.configuration, "-p", PLANS,
           "-tr", trainer, "--seeds", seed, "--iterations", args.iterations, "--iterations-per-epoch",
           args.iterations_per_epoch, "--train-list", info["lists"][cases], "--test-list", info["lists"]["test"],
           "-o", bench_out(workdir, route), "-device", args.device, "-np", args.num_processes]
    rec = bench_records(args, route)
    if rec is not None:
        cmd += ["--records", rec]
    run(cmd)


def stock_model(workdir: Path, seed: int, configuration: str) -> Optional[Path]:
    """The fold folder of the seed's ``stock`` model in the benchmark's work folder, if it was trained here."""
    out = workdir / "bench_semi"
    proto = out / "protocol.json"
    if not proto.is_file():
        return None
    p = json.loads(proto.read_text())
    fold = out / "runs" / f"seed{seed}" / p["dataset_name"] / f"nnUNetTrainer__bench__{PLANS}__{configuration}" / \
        f"fold_{p['fold']}"
    return fold if (fold / "checkpoint_final.pth").is_file() else None


def rounds_config(args, info: dict, workdir: Path, seed: int, rounds: int):
    import pseudo_label_rounds as plr

    return plr.RoundsConfig(
        dataset=str(DATASET_ID), configuration=args.configuration, plans=PLANS, round_plans=PLANS,
        target_ids=[PL_BASE_ID + 10 * seed + r for r in range(1, rounds + 1)],
        workdir=str(workdir / "pl" / f"seed{seed}"),
        rounds=rounds, trainer="nnUNetTrainer", iterations=args.iterations,
        iterations_per_epoch=args.iterations_per_epoch, seed=seed, keep=str(args.pl_keep),
        min_stability=args.min_stability, pseudo_label_tta=False, tta=False, train_list=str(info["lists"]["labelled"]),
        test_list=str(info["lists"]["test"]), target_name_prefix=f"HippocampusSemiS{seed}PL",
        records=str(args.records_dir / "pl" / f"seed{seed}") if args.records_dir else None, device=args.device,
        num_processes=args.num_processes)


def run_rounds_route(args, info: dict, workdir: Path, seed: int, rounds: int) -> None:
    """The pseudo-label driver for one seed: round 0 = the seed's stock model where it was trained here."""
    import pseudo_label_rounds as plr

    cfg = rounds_config(args, info, workdir, seed, rounds)
    model = stock_model(workdir, seed, args.configuration)
    if model is not None:
        cfg.round0_model = str(model)
    try:
        plr.run_rounds(cfg)
    except plr.UserError as e:
        sys.exit(f"pseudo_label_rounds: error: {e}")
    except plr.RunFailed as e:
        sys.exit(f"pseudo_label_rounds: {e}\nre-run the same command to continue")


# ------------------------------------------------------------------------------------------------ results
def _benchmark_run(args, workdir: Path, route: str, seed: int) -> Optional[dict]:
    """``{"rows", "train_wall_s"}`` of a benchmark route's run (records first, then the work folder), or None."""
    trainer = ROUTES[route][2]
    places = []
    rec = bench_records(args, route)
    if rec is not None:
        places.append((rec / f"seed{seed}" / trainer / "benchmark_rows.json", rec / f"seed{seed}" / trainer /
                       "state.json"))
    out = bench_out(workdir, route) / "runs" / f"seed{seed}"
    places.append((out / "eval" / trainer / "benchmark_rows.json", out / "state" / f"{trainer}.json"))
    for rows, state in places:
        if rows.is_file():
            st = json.loads(state.read_text()) if state.is_file() else {}
            return {"rows": json.loads(rows.read_text()), "train_wall_s": st.get("train_wall_s")}
    return None


def _round_files(args, workdir: Path, seed: int, r: int):
    """Round r's record and rows of the seed's pseudo-label chain (records first, then the work folder)."""
    rec_dir = args.records_dir / "pl" / f"seed{seed}" if args.records_dir else None
    if rec_dir is not None and (rec_dir / f"round{r}.json").is_file():
        rows = rec_dir / f"round{r}_rows.json.gz"
        return (json.loads((rec_dir / f"round{r}.json").read_text()),
                json.loads(gzip.decompress(rows.read_bytes())) if rows.is_file() else None)
    work = workdir / "pl" / f"seed{seed}"
    if (work / "state" / f"round{r}_record.json").is_file():
        rows = work / "eval" / f"round{r}" / "rows.json"
        walls = {s: (json.loads((work / "state" / f"round{r}_{s}.json").read_text()).get("wall_s")
                     if (work / "state" / f"round{r}_{s}.json").is_file() else None)
                 for s in ("pseudo_label", "plans", "train", "evaluate")}
        return {"round": r, "wall_s": walls}, json.loads(rows.read_text()) if rows.is_file() else None
    return None, None


def _rounds_run(args, workdir: Path, route: str, seed: int) -> Optional[dict]:
    n = 1 if route == "pl1" else args.pl_rounds
    recs = [_round_files(args, workdir, seed, r) for r in range(1, n + 1)]
    if any(rec is None for rec, _ in recs) or recs[-1][1] is None:
        return None
    wall = sum(v or 0 for rec, _ in recs for k, v in (rec.get("wall_s") or {}).items())
    return {"rows": recs[-1][1], "train_wall_s": wall, "rounds": [rec for rec, _ in recs]}


def collect(args, workdir: Path, routes: List[str]) -> Dict[str, Dict[int, dict]]:
    """{route: {seed: {"rows", "train_wall_s"}}} of every finished run (rows relabelled with the route)."""
    found: Dict[str, Dict[int, dict]] = {}
    for route in routes:
        for s in args.seeds:
            res = _benchmark_run(args, workdir, route, s) if ROUTES[route][1] == "benchmark" else \
                _rounds_run(args, workdir, route, s)
            if res is not None:
                res["rows"] = [dict(r, trainer=route, seed=int(s)) for r in res["rows"]]
                found.setdefault(route, {})[int(s)] = res
    return found


def share_of_gap(route_diff: Dict[str, float], gap_diff: Dict[str, float]) -> dict:
    """Share of the gap a route closes with its 95% bootstrap CI: per test case the route's and the upper bound's
    differences from labelled only (both paired by case, class and seed); cases resampled with replacement, share
    = mean route difference / mean upper-bound difference (the same resampled cases for both)."""
    import numpy as np

    from nnunet_ext.benchmark.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

    cases = sorted(set(route_diff) & set(gap_diff))
    d = np.asarray([route_diff[c] for c in cases])
    g = np.asarray([gap_diff[c] for c in cases])
    if not cases or g.mean() == 0:
        return {"share": None, "ci_low": None, "ci_high": None, "n_cases": len(cases)}
    idx = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(cases), size=(BOOTSTRAP_RESAMPLES, len(cases)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = d[idx].mean(axis=1) / g[idx].mean(axis=1)
    lo, hi = np.nanquantile(ratios, [0.025, 0.975])
    return {"share": float(d.mean() / g.mean()), "ci_low": float(lo), "ci_high": float(hi), "n_cases": len(cases)}


def analyse(args, found: Dict[str, Dict[int, dict]]) -> dict:
    """Dice per class per route, the gap, each route's paired difference from stock and share of the gap."""
    import numpy as np

    from nnunet_ext.benchmark.report import summarise
    from nnunet_ext.benchmark.stats import bootstrap_ci, paired_case_differences

    res = {"routes": {}, "gap": None}
    for route, runs in found.items():
        rows = [r for v in runs.values() for r in v["rows"]]
        seeds = sorted(runs)
        s = summarise(rows, [route], seeds)["trainers"][route]
        walls = [v["train_wall_s"] for v in runs.values() if v.get("train_wall_s")]
        res["routes"][route] = {
            "label": route_label(route, args), "seeds": seeds,
            "dice_per_class": {e["name"]: e["dice"]["mean"] for e in s["per_class"].values()},
            "dice_per_class_sd": {e["name"]: e["dice"]["sd"] for e in s["per_class"].values()},
            "dice": s["overall"]["dice"]["mean"], "dice_sd": s["overall"]["dice"]["sd"],
            "wall_s_per_seed": float(np.mean(walls)) if walls else None, "wall_s_total": float(sum(walls)) or None}
        if ROUTES[route][1] == "rounds":
            res["routes"][route]["rounds"] = {s_: v["rounds"] for s_, v in runs.items()}
    if "stock" not in found or "upper" not in found:
        res["note"] = "the gap needs both stock (labelled only) and upper (all labelled): not all of them have run"
        return res
    for route in found:
        if route == "stock":
            continue
        seeds = sorted(set(found[route]) & set(found["stock"]) & set(found["upper"]))
        if not seeds:
            continue
        rows = [r for name in (route, "stock", "upper") for s in seeds for r in found[name][s]["rows"]]
        d = paired_case_differences(rows, route, "stock", "dice")
        g = paired_case_differences(rows, "upper", "stock", "dice")
        mean, lo, hi = bootstrap_ci(list(d.values()))
        entry = res["routes"][route]
        entry["paired_vs_stock"] = {"seeds": seeds, "dice": {"mean": mean, "ci_low": lo, "ci_high": hi,
                                                              "n_cases": len(d)}}
        entry["share_of_gap"] = {**share_of_gap(d, g), "seeds": seeds}
        if route == "upper":
            res["gap"] = {"dice": mean, "ci_low": lo, "ci_high": hi, "seeds": seeds, "below_minimum": mean < GAP_MIN}
    return res


def _hms(s) -> str:
    return str(_dt.timedelta(seconds=int(s))) if s else "-"


def markdown(args, info: dict, res: dict) -> str:
    order = [r for r in ROUTES if r in res["routes"]]
    lines = []
    gap = res.get("gap")
    if gap is not None and gap["below_minimum"]:
        lines += [f"> **WARNING: the gap labelled only -> upper bound is {100 * gap['dice']:.1f} Dice points "
                  f"(95% CI {100 * gap['ci_low']:.1f} to {100 * gap['ci_high']:.1f}), below {100 * GAP_MIN:.0f}: too "
                  f"small to tell methods apart. Use fewer labelled cases (--labelled).**", ""]
    if gap is not None:
        lines += [f"Gap labelled only ({info['sizes']['labelled']} cases) -> upper bound ({info['sizes']['all_train']} "
                  f"cases): **{100 * gap['dice']:+.1f} Dice points** [95% CI {100 * gap['ci_low']:+.1f}, "
                  f"{100 * gap['ci_high']:+.1f}] (mean of classes, paired per case, seeds "
                  f"{', '.join(map(str, gap['seeds']))}).", ""]
    elif res.get("note"):
        lines += [f"Gap: {res['note']}.", ""]
    classes = list(next(iter(res["routes"].values()))["dice_per_class"]) if res["routes"] else []
    lines += ["| route | seeds | " + " | ".join(f"Dice {c}" for c in classes) + " | Dice (mean of classes) | "
              "ΔDice vs labelled only [95% CI] | share of the gap [95% CI] | wall time per seed | "
              "wall time, all seeds |",
              "|---|---|" + "---|" * len(classes) + "---|---|---|---|---|"]
    for route in order:
        e = res["routes"][route]
        pv, sh = e.get("paired_vs_stock"), e.get("share_of_gap")
        delta = (f"{pv['dice']['mean']:+.4f} [{pv['dice']['ci_low']:+.4f}, {pv['dice']['ci_high']:+.4f}]"
                 if pv else "-")
        share = (f"**{sh['share']:.2f}** [{sh['ci_low']:.2f}, {sh['ci_high']:.2f}]"
                 if sh and sh.get("share") is not None else ("0 (reference)" if route == "stock" else "-"))
        lines.append(f"| {e['label']} | {', '.join(map(str, e['seeds']))} | "
                     + " | ".join(f"{e['dice_per_class'].get(c, float('nan')):.3f}" for c in classes)
                     + f" | {e['dice']:.4f} | {delta} | {share} | {_hms(e['wall_s_per_seed'])} | "
                       f"{_hms(e['wall_s_total'])} |")
    best = max((r for r in order if r not in ("stock", "upper") and (res["routes"][r].get("share_of_gap") or {})
                .get("share") is not None), key=lambda r: res["routes"][r]["share_of_gap"]["share"], default=None)
    if best is not None and gap is not None and gap["below_minimum"]:
        lines += ["", "Shares of the gap are not meaningful: the gap is below the minimum (see the warning)."]
    elif best is not None:
        sh = res["routes"][best]["share_of_gap"]
        lines += ["", f"Best route: {res['routes'][best]['label']}, {sh['share']:.2f} of the gap (goal: at least half; "
                      f"{'met' if sh['share'] >= 0.5 else 'not met'}; lower CI bound {sh['ci_low']:.2f})."]
    for route in ("pl1", "pl3"):
        if route in res["routes"] and res["routes"][route].get("rounds"):
            lines += ["", f"{res['routes'][route]['label']}, per round (mean over seeds; kept of the predicted, "
                          f"stability = Dice with the previous round's pseudo-label):", "",
                      "| round | kept / predicted | stability median | below --min-stability | Dice (test) |",
                      "|---|---|---|---|---|"]
            per_seed = res["routes"][route]["rounds"]
            n = min(len(v) for v in per_seed.values())
            for i in range(n):
                recs = [v[i] for v in per_seed.values()]
                pls = [x.get("pseudo_labels") or {} for x in recs]

                def mean(vals):
                    vals = [v for v in vals if v is not None]
                    return sum(vals) / len(vals) if vals else None
                kept, pred = mean([p.get("kept") for p in pls]), mean([p.get("predicted") for p in pls])
                stab = mean([(p.get("stability") or {}).get("median") for p in pls])
                below = mean([p.get("below_min_stability") for p in pls])
                dice = mean([(x.get("evaluation") or {}).get("dice_mean_of_classes") for x in recs])
                lines.append(f"| {recs[0].get('round', i + 1)} | "
                             f"{'-' if kept is None else f'{kept:.0f} / {pred:.0f}'} | "
                             f"{'-' if stab is None else f'{stab:.3f}'} | {'-' if below is None else f'{below:.0f}'} | "
                             f"{'-' if dice is None else f'{dice:.4f}'} |")
    s = info["sizes"]
    lines += ["", f"{s['labelled']} labelled / {s['unlabelled']} unlabelled training cases, {s['test']} test cases "
              f"(fold 0 of nnU-Net's default split), split seed {args.split_seed}; {args.configuration}, plans {PLANS} "
              f"(plan-small {args.gpu_memory_target:g} GB), {args.iterations} iterations per run "
              f"({args.iterations_per_epoch} per epoch); pseudo-labels: --keep {args.pl_keep}, no test-time mirroring. "
              "Dice: mean over seeds of the mean over test cases. ΔDice: paired by case, class and seed, mean over "
              "cases with a 95% bootstrap CI (cases resampled). Share of the gap: mean route difference / mean "
              "upper-bound difference from labelled only, over the seeds where all three ran, with a 95% bootstrap "
              "CI over test cases. Wall time: training (pseudo-label routes: pseudo-labelling, preprocessing, "
              "training and evaluation of their rounds; their round 0 is the stock run)."]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.report_only:
        ensure_allocator(args, argv, __file__)
    if not Path(args.source).is_dir():
        sys.exit(f"Hippocampus source not found: {args.source}; pass --source")
    workdir = Path(args.workdir).resolve()
    setup_nnunet_folders(workdir)
    from nnunet_ext.paths import ext_trainer_env
    os.environ.update(ext_trainer_env())
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    info = split(args, workdir)
    if not args.report_only:
        prepare(args, workdir, info)
    date = _dt.datetime.now().isoformat(timespec="seconds")
    if not args.report_only:
        want = [r for r in ROUTES if r in args.routes]  # stock before the pseudo-label routes (their round 0)
        for s in args.seeds:
            for route in want:
                print(f"=== seed {s}, route {route}: {route_label(route, args)}", flush=True)
                if ROUTES[route][1] == "benchmark":
                    run_benchmark_route(args, info, workdir, route, s)
                elif route == "pl1" and "pl3" in want:
                    continue  # pl3's round 1 is pl1
                else:
                    run_rounds_route(args, info, workdir, s, 1 if route == "pl1" else args.pl_rounds)
    found = collect(args, workdir, list(ROUTES))
    res = analyse(args, found)
    md = markdown(args, info, res)
    command = command_line(__file__, argv)
    complete = all(r in found and set(args.seeds) <= set(found[r]) for r in DEFAULT_ROUTES.split(","))
    # the results folder gets the report once every route has run (or when asked for it); before, the work folder
    res_dir = Path(args.results) if complete or args.report_only else workdir / "reports"
    res_dir.mkdir(parents=True, exist_ok=True)
    tag = "" if args.labelled == 5 else f"_L{args.labelled}"
    stem = new_record_stem(res_dir / f"semisup_hippocampus{tag}_{date[:10]}")
    header = (f"Command: `{command}`  \nDate: {date}  \nMachine: {machine(args.device)}  \n"
              f"Allocator: {allocator_label(args)}\n\n")
    write_record(stem, {"command": command, "date": date, "machine": machine(args.device), "split": info["sizes"],
                        "settings": {k: v for k, v in vars(args).items() if k not in ("records_dir",)}, **res},
                 f"# Unlabelled images on MSD Hippocampus, {info['sizes']['labelled']} labelled cases: "
                 f"labelled only, CPS, CPS + UIF, CPS + CutMix, pseudo-labels, upper bound\n\n{header}{md}\n",
                 default=str)
    print(md)
    print(f"wrote {stem}.md/.json")


if __name__ == "__main__":
    main()
