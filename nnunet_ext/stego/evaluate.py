"""``nnunet-ext stego-evaluate``: STEGO's metrics of a prediction folder (docs/methods/stego.md).

One confusion matrix (predicted cluster or label x reference label) is accumulated over every pixel of every
case, clusters are matched to labels by the Hungarian algorithm on the raw counts, and the unsupervised pixel
accuracy, mIoU (classes absent from both prediction and reference left out) and per-class Dice and IoU are
reported. Predictions already in label space (a STEGO model whose mapping was set at validation) match
themselves; cluster-space predictions (images-only training) are matched here. Files are read with nnU-Net's
readers (any format nnU-Net reads), pairs must have the same shape; a reference folder of placeholder labels
(images-only dataset) is refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from nnunet_ext.atomic_io import write_json_atomic
from nnunet_ext.core.labels import check_real_labels
from nnunet_ext.evaluation.evaluate import (EvaluationError, infer_file_ending, list_cases, load_dataset_json,
                                            read_segmentation, reader_class)
from nnunet_ext.stego.metrics import confusion, matched_scores


def _dataset_json_near(gt_dir: Path) -> Optional[dict]:
    """dataset.json of a raw dataset whose labelsTr/labelsTs folder is ``gt_dir`` (or of nnU-Net's
    preprocessed folder, for ``gt_segmentations``)."""
    f = gt_dir.parent / "dataset.json"
    return json.loads(f.read_text()) if f.is_file() else None


def evaluate_clusters(gt_dir, pred_dir, dataset_json=None, n_clusters: Optional[int] = None,
                      out_file=None, only_predicted: bool = False, progress: bool = False) -> dict:
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for what, d in (("reference folder", gt_dir), ("prediction folder", pred_dir)):
        if not d.is_dir():
            raise EvaluationError(f"{what} {d} does not exist or is not a folder")
    dj = load_dataset_json(dataset_json) if dataset_json is not None else _dataset_json_near(gt_dir)
    if dj is not None:
        check_real_labels(dj, f"stego-evaluate {gt_dir}")
    ending = (dj or {}).get("file_ending") or infer_file_ending(gt_dir)
    refs, preds = list_cases(gt_dir, ending), list_cases(pred_dir, ending)
    if only_predicted:
        refs = {c: p for c, p in refs.items() if c in preds}
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise EvaluationError(f"{len(missing)} reference case(s) have no prediction in {pred_dir} (e.g. "
                              f"{', '.join(missing[:5])})")
    if not refs:
        raise EvaluationError(f"no cases to evaluate in {gt_dir} (file ending {ending})")
    reader = reader_class(dj, ending, next(iter(refs.values())))()
    pairs = []
    for case in sorted(refs):
        ref = read_segmentation(reader, refs[case])[0]
        pred = read_segmentation(reader, preds[case])[0]
        if ref.shape != pred.shape:
            raise EvaluationError(f"{preds[case]}: shape {pred.shape} differs from the reference {refs[case]} "
                                  f"{ref.shape}")
        pairs.append((pred, ref))
    n_classes = len([v for k, v in (dj or {}).get("labels", {}).items() if k != "ignore"]) or \
        int(max(r.max() for _, r in pairs)) + 1
    k = max(n_clusters or 0, n_classes, int(max(p.max() for p, _ in pairs)) + 1)
    conf = sum(confusion(p, r, k, n_classes) for p, r in pairs)
    scores = matched_scores(conf)
    result = {"cases": len(pairs), "n_clusters": k, "n_classes": n_classes, **scores,
              "mapping": {str(a): b for a, b in scores["mapping"].items()}, "confusion": conf.tolist(),
              "reference": str(gt_dir), "prediction": str(pred_dir)}
    if out_file is not None:
        write_json_atomic(out_file, result)
    return result


def format_result(res: dict, names=None) -> str:
    lines = [f"{res['cases']} cases, {res['n_clusters']} clusters -> {res['n_classes']} classes (Hungarian)",
             f"pixel accuracy {res['accuracy']:.4f}   mIoU {res['miou']:.4f}", "", "class  IoU     Dice"]
    for c, (iou, dice) in enumerate(zip(res["iou"], res["dice"])):
        name = names.get(c, str(c)) if names else str(c)
        lines.append(f"{name:6s} {iou:.4f}  {dice:.4f}" if np.isfinite(iou) else f"{name:6s} -       -")
    return "\n".join(lines)
