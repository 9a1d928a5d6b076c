"""STEGO's evaluation (docs/methods/stego.md): one confusion matrix accumulated over the whole evaluation set,
Hungarian matching of clusters to classes on the raw counts (scipy ``linear_sum_assignment``, maximised),
unsupervised pixel accuracy, mIoU (classes absent from both prediction and labels left out) and per-class Dice."""
from __future__ import annotations

from typing import Dict

import numpy as np


def confusion(pred: np.ndarray, label: np.ndarray, n_clusters: int, n_classes: int) -> np.ndarray:
    """Counts (n_clusters, n_classes) of (cluster, class) pairs; labels outside 0..n_classes-1 are ignored."""
    p, t = np.asarray(pred).ravel().astype(np.int64), np.asarray(label).ravel().astype(np.int64)
    ok = (t >= 0) & (t < n_classes) & (p >= 0) & (p < n_clusters)
    return np.bincount(p[ok] * n_classes + t[ok], minlength=n_clusters * n_classes).reshape(n_clusters, n_classes)


def hungarian(conf: np.ndarray) -> Dict[int, int]:
    """cluster -> class maximising the matched counts."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(conf, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols)}


def matched_scores(conf: np.ndarray) -> Dict[str, object]:
    """Accuracy, mIoU and per-class Dice / IoU after Hungarian matching of ``conf`` (clusters x classes)."""
    mapping = hungarian(conf)
    n_classes = conf.shape[1]
    m = np.zeros((n_classes, n_classes), dtype=np.int64)  # matched prediction (class) x truth
    for cl, c in mapping.items():
        m[c] += conf[cl]
    tp = np.diag(m).astype(float)
    fp, fn = m.sum(1) - tp, m.sum(0) - tp
    present = (m.sum(0) + m.sum(1)) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    return {"accuracy": float(tp.sum() / max(conf.sum(), 1)), "miou": float(np.nanmean(iou[present])),
            "iou": iou.tolist(), "dice": dice.tolist(), "mapping": mapping}
