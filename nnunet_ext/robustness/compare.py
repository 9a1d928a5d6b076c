"""Trainers compared under each corruption, over several seeds: paired per-case differences with a bootstrap CI.

Input: the rows of ``robustness_per_case.csv`` (``nnunet-ext robustness``) of one or more seeds, each row with a
``seed`` key added. For every corruption (``clean`` = the unmodified images) and trainer:

* Dice: the mean over seeds, the corruption's severities >= 1 (clean: severity 0), cases and classes;
* the difference to the reference trainer, paired by (case, class, seed, severity), averaged per case, with the
  mean over cases and its 95% percentile bootstrap interval (cases resampled;
  :func:`nnunet_ext.benchmark.stats.bootstrap_ci`), the same statistics as ``nnunet-ext benchmark``'s.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

CLEAN = "clean"


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def compare_under_corruptions(rows: List[dict], trainers: Sequence[str], metric: str = "dice",
                              reference: Optional[str] = None) -> Dict[str, Dict[str, dict]]:
    """``{corruption: {trainer: {"mean", "delta": {"mean", "ci_low", "ci_high", "n_cases"} or None}}}``."""
    from nnunet_ext.benchmark.stats import bootstrap_ci, finite_mean, paired_case_differences

    ref = reference or trainers[0]
    seen = list(dict.fromkeys(r["corruption"] for r in rows))
    corruptions = [c for c in seen if c == CLEAN] + [c for c in seen if c != CLEAN]
    out: Dict[str, Dict[str, dict]] = {}
    for c in corruptions:
        sel = [dict(r, seed=f"{r['seed']}/{r['severity']}") for r in rows
               if r["corruption"] == c and (int(r["severity"]) == 0) == (c == CLEAN)]
        out[c] = {}
        for t in trainers:
            entry = {"mean": finite_mean(_f(r[metric]) for r in sel if r["trainer"] == t), "delta": None}
            if t != ref:
                d = paired_case_differences(sel, t, ref, metric)
                mean, lo, hi = bootstrap_ci(list(d.values()))
                entry["delta"] = {"mean": mean, "ci_low": lo, "ci_high": hi, "n_cases": len(d)}
            out[c][t] = entry
    return out


def comparison_markdown(cmp: Dict[str, Dict[str, dict]], metric: str = "Dice") -> str:
    """One row per corruption: each trainer's mean, and each non-reference trainer's difference [95% CI]."""
    if not cmp:
        return ""
    trainers = list(next(iter(cmp.values())))
    others = [t for t in trainers if next(iter(cmp.values()))[t]["delta"] is not None]
    head = ["corruption"] + [f"{t} {metric}" for t in trainers] + [f"Δ{metric} {t} [95% CI]" for t in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, per in cmp.items():
        cells = [c] + [f"{per[t]['mean']:.4f}" for t in trainers]
        for t in others:
            d = per[t]["delta"]
            cells.append(f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" if d and d["n_cases"]
                         else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
