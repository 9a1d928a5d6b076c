"""``stego_examples.png``: image, clusters, matched labels and ground truth for a few validation cases (the middle
slice of 3D volumes), drawn after training from nnU-Net's preprocessed data with the trained network."""
from __future__ import annotations

import numpy as np
import torch

from nnunet_ext.core.labels import class_argmax
from nnunet_ext.core.network import unwrap_network


def _display(img: np.ndarray) -> np.ndarray:
    """(C, H, W) normalised image -> (H, W) or (H, W, 3) in [0, 1] (per-channel 1-99 percentile window)."""
    lo, hi = np.percentile(img, 1, axis=(1, 2), keepdims=True), np.percentile(img, 99, axis=(1, 2), keepdims=True)
    x = np.clip((img - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
    return np.moveaxis(x, 0, -1) if x.shape[0] == 3 else x[0]


@torch.no_grad()
def example_rows(trainer, n: int):
    """[(case, image (C, H, W), clusters, matched labels, reference or None)] for up to ``n`` validation cases."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    net = unwrap_network(trainer.network)
    was_training = net.training
    net.eval()
    _, val_keys = trainer.do_split()
    ds = infer_dataset_class(trainer.preprocessed_dataset_folder)(trainer.preprocessed_dataset_folder, val_keys[:n])
    label_of_cluster = torch.argsort(net.cluster_of_label).cpu().numpy()
    rows = []
    for case in val_keys[:n]:
        data, seg, _, _ = ds.load_case(case)
        z = data.shape[1] // 2
        img = np.asarray(data[:, z], dtype=np.float32)
        x = torch.from_numpy(img)[None].to(trainer.device)
        clusters = class_argmax(net.cluster_scores(net.codes(x), x.shape[-2:]), 1)[0].cpu().numpy()
        ref = None if trainer.placeholder_labels else np.asarray(seg[0, z])
        rows.append((case, img, clusters, label_of_cluster[clusters], ref))
    net.train(was_training)
    return rows


def write_examples(trainer, path: str, n: int = 4) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = example_rows(trainer, n)
    if not rows:
        return
    k = unwrap_network(trainer.network).n_clusters
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    titles = ("image", "clusters", "matched labels" if not trainer.placeholder_labels else "clusters (no labels)",
              "ground truth")
    for r, (case, img, clusters, matched, ref) in enumerate(rows):
        panels = (_display(img), clusters, matched, ref)
        for c, (ax, p) in enumerate(zip(axes[r], panels)):
            ax.axis("off")
            if p is None:
                ax.text(0.5, 0.5, "placeholder labels", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.imshow(p, cmap="gray" if c == 0 else "tab10", vmin=None if c == 0 else 0,
                      vmax=None if c == 0 else max(k - 1, 1), interpolation="nearest")
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r][0].set_ylabel(case)
        axes[r][0].text(2, 2, case, color="yellow", fontsize=8, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
