"""The demo's report: a console table, ``report.md`` and overlay PNGs (image, reference, predictions)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 0.6, 1.0)}


def _epoch_time(r: Dict) -> str:
    """Median seconds per epoch with the quartiles (the spread shows how noisy the machine was)."""
    iqr = r.get("epoch_time_iqr_s")
    return f"{r['epoch_time_s']:.1f}" + (f" [{iqr[0]:.1f}, {iqr[1]:.1f}]" if iqr else "")


def format_table(trainers: List[str], results: Dict) -> str:
    """Dice per class, mean, train time and time ratio against the first (reference) trainer."""
    first = results["trainers"][trainers[0]]
    classes = list(first["dice"])
    head = ["trainer"] + [f"Dice {c}" for c in classes] + ["mean Dice", "train time [s]", "s/epoch", "time ratio"]
    rows = []
    for tr in trainers:
        r = results["trainers"][tr]
        rows.append([tr] + [f"{r['dice'][c]:.4f}" for c in classes] +
                    [f"{np.mean(list(r['dice'].values())):.4f}", f"{r['train_time_s']:.0f}",
                     _epoch_time(r), f"{r['epoch_time_s'] / first['epoch_time_s']:.2f}x"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def _overlay(ax, img, seg, title):
    ax.imshow(img, cmap="gray", interpolation="nearest")
    rgba = np.zeros(seg.shape + (4,))
    for c, col in COLOURS.items():
        rgba[seg == c] = (*col, 0.45)
    ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def overlay_png(image: np.ndarray, ref: np.ndarray, preds: Dict[str, np.ndarray], path: Path, case: str) -> None:
    """One row: image, reference, each prediction; on the axial slice (axis 0) with the most foreground."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((ref > 0).reshape(ref.shape[0], -1).sum(1)))
    n = 2 + len(preds)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), dpi=100)
    axes[0].imshow(image[z], cmap="gray")
    axes[0].set_title(f"{case} z={z}", fontsize=9)
    axes[0].axis("off")
    _overlay(axes[1], image[z], ref[z], "reference")
    for ax, (name, p) in zip(axes[2:], preds.items()):
        _overlay(ax, image[z], p[z], name)
    plt.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(workdir: Path, raw: Path, preds: Path, trainers: List[str], results: Dict, max_overlays: int = 3):
    import SimpleITK as sitk

    table = format_table(trainers, results)
    figs = workdir / "overlays"
    figs.mkdir(exist_ok=True)
    images = []
    for ref_path in sorted((raw / "labelsTs").glob("*.nii.gz"))[:max_overlays]:
        case = ref_path.name[: -len(".nii.gz")]
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTs" / f"{case}_0000.nii.gz")))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_path)))
        p = {tr: sitk.GetArrayFromImage(sitk.ReadImage(str(preds / tr / ref_path.name))) for tr in trainers}
        out = figs / f"{case}.png"
        overlay_png(img, ref, p, out, case)
        images.append(out)
    b = results["budget"]
    md = [
        "# nnunet_ext demo report",
        "",
        f"Synthetic hippocampus-like MRI phantom (labels: red = anterior, blue = posterior), nnU-Net "
        f"3d_fullres plans, fold 0, every trainer {b['epochs']} epochs x {b['iterations']} iterations on "
        f"`{results['device']}`. Dice on the held-out `imagesTs` cases predicted with `nnUNetv2_predict`. "
        "Train time is the sum of nnU-Net's epoch times (training + validation iterations); "
        "the time ratio compares median epoch times with the first trainer (s/epoch: median [quartiles]). "
        "Wall times on a shared machine are noisy; the per-iteration cost of a method is measured on identical "
        "batches by `benchmarks/bench_fd.py`.",
        "",
        table,
        "",
        "Auxiliary losses at the last epoch (unweighted):",
        "",
    ]
    for tr in trainers:
        aux = results["trainers"][tr]["aux"]
        if aux:
            md.append(f"- {tr}: " + ", ".join(f"{k} = {v:.4f}" for k, v in aux.items()))
    md += ["", "## Overlays", ""] + [f"![{p.stem}](overlays/{p.name})" for p in images]
    md += ["", f"Training curves: `progress.png` in each trainer's fold folder "
               f"(`{Path(results['trainers'][trainers[0]]['fold']).parent.parent}`)."]
    path = workdir / "report.md"
    path.write_text("\n".join(md) + "\n")
    return {"table": table, "path": path}
