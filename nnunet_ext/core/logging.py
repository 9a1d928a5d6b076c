"""nnU-Net's local logger, extended with per-epoch auxiliary loss curves.

nnU-Net's ``LocalLogger`` only accepts its fixed keys. ``ExtLocalLogger`` lets a trainer register
more keys (one value per epoch, like nnU-Net's own) and draws them in ``progress.png`` as a fourth
panel under nnU-Net's three (loss / pseudo Dice, epoch time, learning rate). The extra values live
in the same dict nnU-Net checkpoints, so ``--c`` restores them with everything else.
"""
from __future__ import annotations

import io
import os
from typing import Iterable

from nnunetv2.training.logging.nnunet_logger import LocalLogger

from nnunet_ext.atomic_io import replace_atomic


class ExtLocalLogger(LocalLogger):
    """``LocalLogger`` + ``register(keys)`` + a progress plot that shows the registered keys."""

    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        self.extra_keys: list = []

    def register(self, keys: Iterable[str], current_epoch: int = 0) -> None:
        """Add keys; a key first seen at epoch N > 0 gets NaN for epochs 0..N-1 (one value per epoch)."""
        for k in keys:
            if k not in self.my_fantastic_logging:
                self.my_fantastic_logging[k] = [float("nan")] * current_epoch
            if k not in self.extra_keys:
                self.extra_keys.append(k)

    def pad_to(self, epoch: int) -> None:
        """Give every registered key a value for epochs 0..epoch (NaN where nothing was logged)."""
        for k in self.extra_keys:
            values = self.my_fantastic_logging.setdefault(k, [])
            values.extend([float("nan")] * (epoch + 1 - len(values)))

    def load_checkpoint(self, checkpoint: dict):
        # keep registered keys present when resuming from a checkpoint written without them
        super().load_checkpoint(checkpoint)
        for k in self.extra_keys:
            self.my_fantastic_logging.setdefault(k, [])

    def plot_progress_png(self, output_folder):
        if not self.extra_keys:
            return super().plot_progress_png(output_folder)
        import matplotlib.pyplot as plt
        from PIL import Image

        # nnU-Net's own three panels first, then our panel appended below them
        super().plot_progress_png(output_folder)
        path = os.path.join(output_folder, "progress.png")
        base = Image.open(path).convert("RGB")
        epoch = min(len(self.my_fantastic_logging[k]) for k in self.my_fantastic_logging) - 1
        dpi = 100
        fig, ax = plt.subplots(1, 1, figsize=(base.width / dpi, 18), dpi=dpi)
        x = list(range(epoch + 1))
        for k in self.extra_keys:
            ax.plot(x, self.my_fantastic_logging[k][:epoch + 1], ls="-", label=k, linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("auxiliary terms (unweighted) and extra values")
        ax.legend(loc=(0, 1))
        plt.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=dpi)
        plt.close(fig)
        png.seek(0)
        panel = Image.open(png).convert("RGB")
        out = Image.new("RGB", (base.width, base.height + panel.height), "white")
        out.paste(base, (0, 0))
        out.paste(panel, (0, base.height))
        replace_atomic(path, lambda tmp: out.save(tmp), suffix=".png")
