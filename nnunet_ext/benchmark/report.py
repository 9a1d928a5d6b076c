"""The benchmark's results: OUT/benchmark.json, OUT/benchmark.md, OUT/per_case.csv, OUT/boxplot.png."""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from nnunet_ext.atomic_io import replace_atomic, save_figure_atomic, write_json_atomic, write_text_atomic
from nnunet_ext.benchmark.stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_ci, finite_mean, mean_sd,
                                        paired_case_differences)

METRICS = ("dice", "nsd", "hd95")
METRIC_NAMES = {"dice": "Dice", "nsd": "NSD", "hd95": "HD95"}
ROW_KEYS = ("trainer", "seed", "case", "class", "name", "dice", "nsd", "hd95", "vol_ref", "vol_pred", "vol_diff")


def _num(v) -> Optional[float]:
    """A JSON-safe float (None for missing / nan / inf)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _f(v) -> float:
    return math.nan if v is None else float(v)


def collect_rows(result: dict, trainer: str, seed: int) -> List[dict]:
    """The per-case rows of an ``evaluate_folders`` result, tagged with trainer and seed (JSON-safe)."""
    rows = []
    for r in result["per_case"]:
        row = {"trainer": trainer, "seed": int(seed), "case": str(r["case"]), "class": str(r["class"]),
               "name": str(r.get("name", r["class"]))}
        for k in ("dice", "nsd", "hd95", "vol_ref", "vol_pred", "vol_diff"):
            row[k] = _num(r.get(k))
        rows.append(row)
    return rows


def machine(device: Optional[str] = None) -> str:
    """The machine a figure was measured on, in one line: CPU, cores, the GPU (on ``cuda``), torch, its CPU
    threads and the device (``None``: cuda where available, else cpu). The one description every record uses."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = ""
    if device == "cuda" and torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name(0)}"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"device {device}")


def summarise(rows: List[dict], trainers: List[str], seeds: List[int]) -> dict:
    """Per trainer: per class and overall mean +- sd over seeds; paired differences vs the first trainer."""
    classes: Dict[str, str] = {}
    for r in rows:
        classes.setdefault(r["class"], r["name"])
    ref = trainers[0]
    out = {"classes": classes, "reference": ref, "trainers": {}}
    for t in trainers:
        per_class, per_seed_overall = {}, {m: {} for m in METRICS}
        for c in classes:
            entry = {}
            for m in METRICS:
                per_seed = {}
                for s in seeds:
                    vals = [_f(r[m]) for r in rows if r["trainer"] == t and r["seed"] == s and r["class"] == c]
                    if vals:
                        per_seed[s] = finite_mean(vals)
                mean, sd, n = mean_sd(per_seed.values())
                n_nonfinite = sum(1 for r in rows if r["trainer"] == t and r["class"] == c and r[m] is None)
                entry[m] = {"mean": _num(mean), "sd": _num(sd), "n_seeds": n,
                            "per_seed": {str(k): _num(v) for k, v in per_seed.items()},
                            "n_cases_not_finite": n_nonfinite}
                for s, v in per_seed.items():
                    per_seed_overall[m].setdefault(s, []).append(v)
            per_class[c] = {"name": classes[c], **entry}
        overall = {}
        for m in METRICS:
            seed_means = {s: finite_mean(v) for s, v in per_seed_overall[m].items()}
            mean, sd, n = mean_sd(seed_means.values())
            overall[m] = {"mean": _num(mean), "sd": _num(sd), "n_seeds": n,
                          "per_seed": {str(k): _num(v) for k, v in seed_means.items()}}
        out["trainers"][t] = {"per_class": per_class, "overall": overall}
        if t != ref:
            diffs = {}
            for c in list(classes) + [None]:
                key = "all" if c is None else c
                diffs[key] = {}
                for m in METRICS:
                    d = paired_case_differences(rows, t, ref, m, cls=c)
                    mean, lo, hi = bootstrap_ci(list(d.values()))
                    diffs[key][m] = {"mean": _num(mean), "ci_low": _num(lo), "ci_high": _num(hi), "n_cases": len(d)}
            out["trainers"][t]["paired_vs_reference"] = diffs
    return out


def timing_summary(out_dir: Path, trainers: List[str], seeds: List[int]) -> dict:
    """s/iteration per trainer and seed, and the ratio to the first trainer in the same seed."""
    tm = {}
    for t in trainers:
        for s in seeds:
            p = out_dir / "runs" / f"seed{s}" / "timing" / f"{t}.json"
            if p.is_file():
                tm[(t, s)] = json.loads(p.read_text())
    ref = trainers[0]
    res = {}
    for t in trainers:
        per_seed = {s: tm[(t, s)]["s_per_iteration"] for s in seeds if (t, s) in tm}
        ratios = {s: per_seed[s] / tm[(ref, s)]["s_per_iteration"] for s in per_seed
                  if (ref, s) in tm and tm[(ref, s)]["s_per_iteration"] > 0}
        walls = [tm[(t, s)].get("train_wall_s") for s in seeds if (t, s) in tm]
        res[t] = {"s_per_iteration": _num(np.median(list(per_seed.values()))) if per_seed else None,
                  "s_per_iteration_per_seed": {str(s): _num(v) for s, v in per_seed.items()},
                  "ratio_vs_reference": _num(np.median(list(ratios.values()))) if ratios else None,
                  "ratio_per_seed": {str(s): _num(v) for s, v in ratios.items()},
                  "train_wall_s_per_seed": {str(s): _num(tm[(t, s)].get("train_wall_s"))
                                            for s in seeds if (t, s) in tm},
                  "train_wall_s_total": _num(sum(w for w in walls if w)) if walls else None,
                  "median_epoch_time_per_seed": {str(s): _num(tm[(t, s)]["median_epoch_time"]) for s in seeds
                                                 if (t, s) in tm}}
    return res


def _pm(e: dict, digits: int = 3) -> str:
    if e.get("mean") is None:
        return "n/a"
    sd = e.get("sd") if e.get("n_seeds", 2) > 1 else None  # one seed: no sd to show
    return f"{e['mean']:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{e['mean']:.{digits}f}"


def _ci(e: dict, digits: int = 3) -> str:
    if e.get("mean") is None:
        return "n/a"
    return f"{e['mean']:+.{digits}f} [{e['ci_low']:+.{digits}f}, {e['ci_high']:+.{digits}f}]"


def markdown(result: dict) -> str:
    p, summ, timing = result["protocol"], result["summary"], result["timing"]
    trainers, ref = result["trainers"], summ["reference"]
    tol = p["tolerance"]
    lines = [f"# nnunet-ext benchmark: {p['dataset_name']} {p['configuration']}", "",
             f"Command: `{result['command']}`  ",
             f"Date: {result['date']}  ",
             f"Machine: {result['machine']}", "",
             f"Protocol: plans `{p['plans']}`, fold {p['fold']} ({len(p['train_cases'])} training / "
             f"{len(p['test_cases'])} test cases; {result['split_note']}); budget {p['num_epochs']} epochs x "
             f"{p['iterations_per_epoch']} iterations = {p['num_epochs'] * p['iterations_per_epoch']} iterations "
             f"per run, {p['val_iterations']} validation iterations per epoch; "
             f"seeds {', '.join(map(str, result['seeds']))}; "
             f"test-time mirroring {'on' if p['tta'] else 'off'}; NSD tolerance {tol:g} mm.", "",
             "## Per class: mean ± sd over seeds", "",
             f"Each seed's value is the mean over the {len(p['test_cases'])} test cases (HD95: over the cases where it "
             f"is finite); the sd is over seeds.", "",
             "| trainer | class | Dice | NSD | HD95 |", "|---|---|---|---|---|"]
    for t in trainers:
        st = summ["trainers"][t]
        for c, e in st["per_class"].items():
            lines.append(f"| {t} | {e['name']} | {_pm(e['dice'])} | {_pm(e['nsd'])} | {_pm(e['hd95'], 2)} |")
        o = st["overall"]
        lines.append(f"| {t} | mean of classes | {_pm(o['dice'])} | {_pm(o['nsd'])} | {_pm(o['hd95'], 2)} |")
    if len(trainers) > 1:
        lines += ["", f"## Paired per-case difference vs {ref}", "",
                  f"Difference trainer - {ref} for the same case and seed, averaged over seeds; mean over cases with a "
                  f"95% bootstrap confidence interval (cases resampled, {BOOTSTRAP_RESAMPLES} resamples, seed "
                  f"{BOOTSTRAP_SEED}). Dice/NSD: higher is better; HD95: lower is better.", "",
                  "| trainer | class | ΔDice [95% CI] | ΔNSD [95% CI] | ΔHD95 [95% CI] | cases |",
                  "|---|---|---|---|---|---|"]
        for t in trainers[1:]:
            d = summ["trainers"][t]["paired_vs_reference"]
            for c, e in d.items():
                label = "mean of classes" if c == "all" else summ["classes"][c]
                lines.append(f"| {t} | {label} | {_ci(e['dice'])} | {_ci(e['nsd'])} | {_ci(e['hd95'], 2)} | "
                             f"{e['dice']['n_cases']} |")
    lines += ["", "## Time per training iteration", "",
              "Median epoch time (nnU-Net's logged epoch start/end timestamps; includes validation iterations and "
              "checkpointing) / iterations per epoch; median over seeds. Ratio: per seed against "
              f"{ref} in the same benchmark, median over seeds.", "",
              "| trainer | s / iteration | ratio vs " + ref + " | training wall time (all seeds) |",
              "|---|---|---|---|"]
    for t in trainers:
        tm = timing.get(t, {})
        spi = tm.get("s_per_iteration")
        ratio = tm.get("ratio_vs_reference")
        wall = tm.get("train_wall_s_total")
        lines.append(f"| {t} | {spi:.3f} | {ratio:.3f} | {_dt.timedelta(seconds=int(wall)) if wall else 'n/a'} |"
                     if spi is not None and ratio is not None else f"| {t} | n/a | n/a | n/a |")
    lines += ["", "Files: `per_case.csv` (every trainer, seed, case and class), `benchmark.json`, `boxplot.png`; runs "
              "under `runs/seed<s>/` (models, logs, predictions, evaluations).", ""]
    return "\n".join(lines)


def boxplot(path: Path, rows: List[dict], trainers: List[str], classes: Dict[str, str], n_seeds: int) -> None:
    """Per class, a box of per-case Dice (mean over seeds) per trainer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 1.2 + 1.3 * len(trainers)) * n, 4.2), squeeze=False)
    for ax, (c, name) in zip(axes[0], classes.items()):
        data = []
        for t in trainers:
            per_case: Dict[str, List[float]] = {}
            for r in rows:
                if r["trainer"] == t and r["class"] == c and r["dice"] is not None:
                    per_case.setdefault(r["case"], []).append(r["dice"])
            data.append([float(np.mean(v)) for v in per_case.values()])
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(trainers) + 1))
        ax.set_xticklabels(trainers, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{name} (class {c})")
        ax.set_ylabel("Dice per test case" + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)


def write_csv(path: Path, rows: List[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(ROW_KEYS))
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in ROW_KEYS})
    replace_atomic(path, write)


def build_report(out: Path, cfg, protocol: dict, device: str, command: Optional[str], split_note: str) -> dict:
    """Aggregate the runs of ``cfg.trainers`` x ``cfg.seeds`` and write the four output files."""
    trainers, seeds = list(cfg.trainers), list(cfg.seeds)
    rows: List[dict] = []
    for s in seeds:
        for t in trainers:
            p = out / "runs" / f"seed{s}" / "eval" / t / "benchmark_rows.json"
            rows.extend(json.loads(p.read_text()))
    summary = summarise(rows, trainers, seeds)
    timing = timing_summary(out, trainers, seeds)
    result = {"command": command or "(python API)", "date": _dt.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(device), "protocol": protocol, "split_note": split_note,
              "trainers": trainers, "seeds": seeds, "summary": summary, "timing": timing,
              "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "confidence": 0.95},
              "files": {k: str(out / f) for k, f in (("markdown", "benchmark.md"), ("per_case", "per_case.csv"),
                                                    ("boxplot", "boxplot.png"))}}
    write_csv(out / "per_case.csv", rows)
    boxplot(out / "boxplot.png", rows, trainers, summary["classes"], len(seeds))
    md = markdown(result)
    write_text_atomic(out / "benchmark.md", md)
    write_json_atomic(out / "benchmark.json", result)
    if not getattr(cfg, "quiet", False):
        print()
        print(md)
    return result
