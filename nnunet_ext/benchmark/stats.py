"""Statistics of the benchmark: mean and sd over seeds, paired per-case differences, bootstrap CIs."""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

BOOTSTRAP_SEED = 20240917
BOOTSTRAP_RESAMPLES = 10000


def bootstrap_ci(values: Sequence[float], n_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95,
                 seed: int = BOOTSTRAP_SEED, max_chunk_elements: int = 20_000_000) -> Tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its percentile bootstrap confidence interval.

    Resamples the values (cases) with replacement ``n_resamples`` times with a fixed seed, vectorised in
    numpy (in chunks of at most ``max_chunk_elements`` drawn indices). Non-finite values are dropped first;
    no finite value gives ``(nan, nan, nan)``, one gives ``(v, v, v)``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    per_chunk = max(1, max_chunk_elements // n)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, per_chunk):
        stop = min(n_resamples, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


def mean_sd(values: Iterable[float]) -> Tuple[float, float, int]:
    """``(mean, sd, n)`` of the finite values; sd with ddof=1 (0 for a single value, nan for none)."""
    x = np.asarray(list(values), dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0, int(x.size)


def finite_mean(values: Iterable[float]) -> float:
    x = np.asarray(list(values), dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def paired_case_differences(rows: List[dict], trainer: str, reference: str, metric: str,
                            cls: Optional[str] = None) -> Dict[str, float]:
    """Per-case difference ``trainer - reference`` of ``metric``, paired by (case, class, seed), then
    averaged over seeds (and over classes when ``cls`` is None). Returns ``{case: difference}``.

    A (case, class, seed) where either value is not finite, or where one trainer lacks it, is left out.
    ``rows`` are per-case rows with keys ``trainer``, ``seed``, ``case``, ``class`` and the metric.
    """
    def table(tr):
        out = {}
        for r in rows:
            if r["trainer"] == tr and (cls is None or str(r["class"]) == str(cls)):
                out[(r["case"], str(r["class"]), r["seed"])] = _f(r.get(metric))
        return out

    a, b = table(trainer), table(reference)
    per_case: Dict[str, List[float]] = {}
    for key, va in a.items():
        vb = b.get(key)
        if vb is None or not (math.isfinite(va) and math.isfinite(vb)):
            continue
        per_case.setdefault(key[0], []).append(va - vb)
    return {case: float(np.mean(v)) for case, v in per_case.items()}


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
