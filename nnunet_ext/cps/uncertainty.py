"""Uncertainty of pseudo-labels, and the selection of the most certain unlabelled cases (UIF).

No UIF code or criterion was ever published (docs/methods/cps.md); these are the definitions used here.

**UIF score of an unlabelled case** (``nnUNetTrainerCPS_UIF``; lower = more certain). The two networks
predict ``patches_per_case`` patches of the preprocessed case at fixed positions (nnU-Net's sliding-window
tile grid with step 0.5, tiles spread evenly over it; the same positions every time the case is scored).
With ``p = (softmax(A) + softmax(B)) / 2`` per voxel::

    entropy      = mean over voxels of  H(p) / log(C)        in [0, 1]  (the score used for ranking)
    disagreement = share of voxels where argmax A != argmax B  in [0, 1]  (recorded beside it)

Voxels are those inside the image (the padding of tiles larger than the image is left out). The
``uif_keep`` cases with the lowest entropy are kept (a count, or a fraction of the scored cases).

**Pseudo-label uncertainty** (``nnunet-ext pseudo-label``): from the class probabilities of nnU-Net's
predictor, the mean normalised entropy over the voxels predicted as foreground, dilated by one voxel (so that
the boundary counts), or over the whole image when nothing is predicted; an empty prediction is never kept.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from nnunet_ext.atomic_io import save_figure_atomic, write_json_atomic
from nnunet_ext.core.labels import class_argmax


def normalised_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy of class probabilities along ``dim`` divided by log(C): 0 (one-hot) .. 1 (uniform)."""
    c = probs.shape[dim]
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(dim) / math.log(c)


def pair_uncertainty(logits_a: torch.Tensor, logits_b: torch.Tensor,
                     valid: torch.Tensor | None = None) -> Dict[str, float]:
    """``{"entropy", "disagreement"}`` of two networks' logits (b, C, ...) over the ``valid`` voxels (b, ...)."""
    pa, pb = torch.softmax(logits_a.float(), 1), torch.softmax(logits_b.float(), 1)
    ent = normalised_entropy((pa + pb) / 2)
    dis = (class_argmax(pa, 1) != class_argmax(pb, 1)).float()
    if valid is None:
        return {"entropy": float(ent.mean()), "disagreement": float(dis.mean())}
    v = valid.float()
    n = v.sum().clamp_min(1)
    return {"entropy": float((ent * v).sum() / n), "disagreement": float((dis * v).sum() / n)}


def keep_count(keep: float, n: int) -> int:
    """``keep`` as a number of cases out of ``n``: a fraction (0, 1] of ``n`` (at least 1), or a count > 1."""
    if keep <= 0:
        raise ValueError(f"keep must be > 0, got {keep}")
    k = int(math.ceil(keep * n)) if keep <= 1 else int(keep)
    return max(1, min(n, k)) if n else 0


def select_most_certain(scores: Dict[str, float], keep: float) -> List[str]:
    """The ``keep`` cases with the lowest score (ties broken by case name, so the selection is deterministic)."""
    ranked = sorted(scores, key=lambda c: (scores[c], c))
    return sorted(ranked[:keep_count(keep, len(ranked))])


def tile_positions(shape: Sequence[int], patch_size: Sequence[int], count: int) -> List[Tuple[int, ...]]:
    """Up to ``count`` lower corners from nnU-Net's sliding-window tile grid (step 0.5), evenly spread."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    size = [max(s, p) for s, p in zip(shape, patch_size)]
    steps = compute_steps_for_sliding_window(tuple(size), tuple(patch_size), 0.5)
    grid = [tuple(int(v) for v in c) for c in np.array(np.meshgrid(*steps, indexing="ij")).reshape(len(steps), -1).T]
    if len(grid) <= count:
        return grid
    idx = np.unique(np.round(np.linspace(0, len(grid) - 1, count)).astype(int))
    return [grid[i] for i in idx]


def case_patches(data, patch_size: Sequence[int], count: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(patches (k, c, *patch), valid (k, *patch))`` of a preprocessed case ``data`` (c, z, y, x).

    A 2D patch size takes 2D patches from the slices (first spatial axis), as nnU-Net's 2D loader does.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    patch = tuple(int(p) for p in patch_size)
    two_d = len(patch) == 2
    patch3 = (1, *patch) if two_d else patch
    shape = tuple(int(s) for s in data.shape[1:])
    patches, valid = [], []
    for lo in tile_positions(shape, patch3, count):
        bbox = [[lo[d], lo[d] + patch3[d]] for d in range(3)]
        x = crop_and_pad_nd(data, bbox, 0)
        v = np.zeros(patch3, dtype=bool)
        inside = tuple(slice(0, max(0, min(shape[d] - lo[d], patch3[d]))) for d in range(3))
        v[inside] = True
        patches.append(np.asarray(x[:, 0] if two_d else x, dtype=np.float32))
        valid.append(v[0] if two_d else v)
    return torch.from_numpy(np.stack(patches)), torch.from_numpy(np.stack(valid))


@torch.no_grad()
def score_cases(pair, dataset, identifiers: Sequence[str], patch_size, patches_per_case: int, device,
                progress=None) -> Dict[str, Dict[str, float]]:
    """UIF scores (see the module doc) of ``identifiers`` from an ``UnlabeledDataset``."""
    from nnunetv2.utilities.helpers import dummy_context

    was_training = pair.training
    pair.eval()
    scores = {}
    try:
        for case in identifiers:
            data, _, _, _ = dataset.load_case(case)
            x, valid = case_patches(data, patch_size, patches_per_case)
            x = x.to(device)
            ctx = torch.autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context()
            with ctx:
                out_a, out_b = pair.forward_both(x)
            if isinstance(out_a, (list, tuple)):
                out_a, out_b = out_a[0], out_b[0]
            scores[case] = pair_uncertainty(out_a, out_b, valid.to(device))
            if progress is not None:
                progress.update()
    finally:
        pair.train(was_training)
    return scores


def write_selection(folder, epoch: int, scores: Dict[str, Dict[str, float]], selected: List[str], keep: float) -> Path:
    """Write ``uif/scores_epoch{E}.json``, ``uif/selection.json`` and ``uif/histogram_epoch{E}.png`` (atomically)."""
    folder = Path(folder) / "uif"
    folder.mkdir(parents=True, exist_ok=True)
    entropy = {c: s["entropy"] for c, s in scores.items()}
    threshold = max(entropy[c] for c in selected) if selected else float("nan")
    record = {"epoch": epoch, "criterion": "mean normalised entropy of the averaged softmax of both networks "
                                            "(lower = more certain); see nnunet_ext/cps/uncertainty.py",
              "keep": keep, "num_scored": len(scores), "num_kept": len(selected), "threshold": threshold,
              "selected": selected}
    write_json_atomic(folder / f"scores_epoch{epoch:04d}.json", {"scores": scores, **record})
    write_json_atomic(folder / "selection.json", record)
    plot_histogram(entropy, threshold, folder / f"histogram_epoch{epoch:04d}.png",
                   f"UIF at epoch {epoch}: {len(selected)} of {len(scores)} kept")
    return folder


def plot_histogram(values: Dict[str, float], threshold: float, path, title: str) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(list(values.values()), bins=min(50, max(5, len(values) // 4)), color="0.6")
    if np.isfinite(threshold):
        ax.axvline(threshold, color="r", ls="--", label=f"kept <= {threshold:.4f}")
        ax.legend()
    ax.set_xlabel("uncertainty (mean normalised entropy)")
    ax.set_ylabel("cases")
    ax.set_title(title)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)

