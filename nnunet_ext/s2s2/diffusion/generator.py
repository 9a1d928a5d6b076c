"""The S2S2 stack generator of a tuned diffusion model (``s2s2-generate --generator diffusion`` or
``controlnet``): every slice of a copy sampled from its own mask, with its own random generator."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from nnunet_ext.s2s2.diffusion.pipelines import load_tuned
from nnunet_ext.s2s2.diffusion.spec import DiffusionModelError


def _pad_to(t: torch.Tensor, multiple: int, value) -> torch.Tensor:
    h, w = t.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return torch.nn.functional.pad(t, (0, pw, 0, ph), value=value) if ph or pw else t



class DiffusionGenerator:
    """S2S2 stack generator from a tuned model (``nnunet-ext s2s2-generate --generator diffusion`` or
    ``controlnet``): ``MaskDiffusion`` or ``ControlNetDiffusion``, by the folder's spec.

    ``copies(data, case, ks, seg)`` samples copies ``ks`` of a case, every slice conditioned on its own mask,
    ``batch_size`` slices at a time; ``copy(data, case, k, seg)`` one copy (the generator interface of
    ``nnunet_ext.s2s2.generate``: ``needs_seg`` asks for the case's segmentation). ``steps`` (DDIM) and
    ``guidance``: None = 25 and 1 (diffusion), 50 and 9.0 (controlnet, the paper's)."""

    needs_seg = True

    def __init__(self, folder, seed: int = 0, steps: Optional[int] = None, eta: float = 0.0,
                 guidance: Optional[float] = None, batch_size: int = 16, device=None):
        self.folder = Path(folder)
        self.device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_tuned(self.folder, self.device)
        cn = self.model.spec.kind == "controlnet"
        self.name = "controlnet" if cn else "diffusion"
        steps = steps if steps is not None else (50 if cn else 25)
        guidance = guidance if guidance is not None else (9.0 if cn else 1.0)
        if steps < 1 or batch_size < 1:
            raise DiffusionModelError("--ddim-steps and --batch-size must be at least 1")
        self.seed, self.steps, self.eta, self.guidance, self.batch_size = seed, steps, eta, guidance, batch_size

    def settings(self) -> dict:
        info = self.model.spec.info
        return {"model_sha256": info.get("weights_sha256"), "trained_steps": info.get("step"),
                "fold": info.get("fold"), "ddim_steps": self.steps, "eta": self.eta, "guidance": self.guidance,
                "seed": self.seed}

    def _generator(self, case: str, k: int, z: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(int(np.random.SeedSequence([self.seed, zlib.crc32(case.encode()), k, z]).generate_state(1)[0]))
        return g

    def copy(self, data: np.ndarray, case: str, k: int, seg: np.ndarray = None) -> np.ndarray:
        return self.copies(data, case, [k], seg)[0]

    def _model_segs(self, seg: np.ndarray) -> torch.Tensor:
        """The masks (z, H, W) at the model's size: padded (-1) to a multiple of its stride, or resized (nearest)
        to ``image_size`` x ``image_size``."""
        segs = torch.from_numpy(np.asarray(seg, dtype=np.int64)[0])
        if self.model.spec.fit == "resize":
            s = self.model.spec.image_size
            return torch.nn.functional.interpolate(segs[:, None].float(), size=(s, s), mode="nearest")[:, 0].long()
        return _pad_to(segs, self.model.size_multiple, -1)

    def copies(self, data: np.ndarray, case: str, ks: Sequence[int], seg: np.ndarray = None) -> np.ndarray:
        """Copies ``ks`` of a preprocessed case ``data`` (C, z, y, x) with segmentation ``seg`` (1, z, y, x)
        -> float32 (len(ks), C, z, y, x)."""
        if seg is None:
            raise ValueError("the diffusion generator needs the case's segmentation")
        data = np.asarray(data, dtype=np.float32)
        c, nz, h, w = data.shape
        if c != self.model.spec.channels:
            raise DiffusionModelError(f"{case}: {c} channel(s), the tuned model {self.folder} has "
                                      f"{self.model.spec.channels}")
        segs = self._model_segs(seg)
        real = torch.from_numpy(data).permute(1, 0, 2, 3)  # (z, C, y, x)
        r_mean, r_std = real.mean((2, 3), keepdim=True), real.std((2, 3), keepdim=True)
        out = np.empty((len(ks), c, nz, h, w), dtype=np.float32)
        items = [(i, k, z) for i, k in enumerate(ks) for z in range(nz)]
        for s in range(0, len(items), self.batch_size):
            chunk = items[s:s + self.batch_size]
            zs = [z for _, _, z in chunk]
            x = self.model.sample(segs[zs], [self._generator(case, k, z) for _, k, z in chunk], self.steps,
                                  self.eta, self.guidance).float().cpu()
            if self.model.spec.fit == "resize":
                x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = x[..., :h, :w]
            x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True).clamp_min(1e-6)
            x = x * r_std[zs] + r_mean[zs]
            for (i, _, z), xi in zip(chunk, x):
                out[i, :, z] = xi.numpy()
        return out
