"""Training-free semantic-stack generator: global intensity non-linear maps (GIN).

After GIN (Ouyang et al., "Causality-inspired single-source domain generalization for medical image
segmentation", TMI 2022): a shallow randomly initialised convolutional network, re-drawn for every copy,
maps the real image to a new appearance; the labels stay those of the real image. Per copy:

1. ``num_layers`` 2D convolutions (kernel 1 or 3, drawn per layer; ``hidden`` channels; weights ~ N(0, 1)),
   LeakyReLU(0.2) between them, applied slice by slice (3D data as 2D slices, as the paper's generators), the
   same network for every slice of the case;
2. each output channel standardised to the mean and standard deviation of the real channel (so the copy keeps
   nnU-Net's normalisation);
3. blended with the real image, ``a * gin(x) + (1 - a) * x``, ``a ~ U(mix)`` (default U(0, 1) as GIN), and
   standardised once more to the real channel's mean and standard deviation (GIN keeps the image's norm).

Deterministic: copy ``k`` of case ``c`` depends only on ``(seed, c, k)``, so shards and resumed runs agree.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GINGenerator:
    num_layers: int = 4
    hidden: int = 4
    kernel_sizes: Tuple[int, ...] = (1, 3)
    mix: Tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    name: str = "gin"

    def settings(self) -> dict:
        return {"num_layers": self.num_layers, "hidden": self.hidden, "kernel_sizes": list(self.kernel_sizes),
                "mix": list(self.mix), "seed": self.seed}

    def _generator(self, case: str, k: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(int(np.random.SeedSequence([self.seed, zlib.crc32(case.encode()), k]).generate_state(1)[0]))
        return g

    @torch.no_grad()
    def copy(self, data: np.ndarray, case: str, k: int) -> np.ndarray:
        """Copy ``k`` of a preprocessed case ``data`` (C, z, y, x) -> float32 array of the same shape."""
        g = self._generator(case, k)
        x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).permute(1, 0, 2, 3)  # slices as batch
        c = x.shape[1]
        h = x
        for layer in range(self.num_layers):
            out_ch = c if layer == self.num_layers - 1 else self.hidden
            ks = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), (1,), generator=g))]
            w = torch.randn(out_ch, h.shape[1], ks, ks, generator=g) / np.sqrt(h.shape[1] * ks * ks)
            h = F.conv2d(h, w, padding=ks // 2)
            if layer < self.num_layers - 1:
                h = F.leaky_relu(h, 0.2)
        dims = (0, 2, 3)
        mean_x, std_x = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)

        def like_x(t):  # per channel: the real channel's mean and standard deviation
            return (t - t.mean(dims, keepdim=True)) / t.std(dims, keepdim=True).clamp_min(1e-6) * std_x + mean_x

        a = float(self.mix[0] + (self.mix[1] - self.mix[0]) * torch.rand(1, generator=g))
        out = like_x(a * like_x(h) + (1 - a) * x)
        return out.permute(1, 0, 2, 3).contiguous().numpy()
