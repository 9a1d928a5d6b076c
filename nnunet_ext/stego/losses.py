"""STEGO's correlation loss (METHODS.md section 3).

For two images with backbone features ``f1, f2`` and head codes ``c1, c2`` (b, C, H, W):

1. sample 11 x 11 random points per image (``grid_sample``, ``align_corners=True``, border padding) and
   L2-normalise the channel vector at each point;
2. ``F[b, h, w, i, j] = <f1[b, :, h, w], f2[b, :, i, j]>`` (no gradient) and ``S`` likewise for the codes;
3. spatial centring: ``F <- F - mean_{i, j} F + mean(F)`` (the mean over the second image's points, per query
   point of the first, replaced by the global mean);
4. ``L = -mean( max(S, 0) * (F - b) )``: the clamp is on S, never on F; ``F - b`` is not clamped.

Pairings: self (the same points of the same image), kNN (the neighbour image, at the second set of points),
random (5 draws, each a fresh shuffle of the batch, concatenated then averaged). Total
``lambda_self * L_self + lambda_knn * L_knn + lambda_rand * L_rand``; defaults (ViT-S): lambda rand / knn / self =
0.63 / 0.25 / 0.67, b = 0.46 / 0.12 / 0.18.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F


def sample_points(batch: int, n: int = 11, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random sampling coordinates in [-1, 1], shape (b, n, n, 2)."""
    return torch.rand(batch, n, n, 2, device=device, generator=generator) * 2 - 1


def sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``x`` (b, C, H, W) at ``coords`` (b, n, n, 2): (b, C, n, n)."""
    return F.grid_sample(x, coords.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine correlation of every point of ``a`` with every point of ``b``: (b, h, w, i, j)."""
    return torch.einsum("nchw,ncij->nhwij", F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10))


def centre(fd: torch.Tensor) -> torch.Tensor:
    """STEGO's spatial centring of a feature correlation (b, h, w, i, j)."""
    return fd - fd.mean(dim=(3, 4), keepdim=True) + fd.mean()


def correlation_loss(f1, f2, c1, c2, shift: float) -> torch.Tensor:
    """``-mean(max(S, 0) * (F_centred - shift))`` for sampled features ``f`` and codes ``c``."""
    with torch.no_grad():
        fd = centre(correlation(f1.float(), f2.float()))
    cd = correlation(c1.float(), c2.float())
    return -(cd.clamp(min=0) * (fd - shift)).mean()


@dataclass(frozen=True)
class CorrelationWeights:
    lambda_self: float = 0.67
    lambda_knn: float = 0.25
    lambda_rand: float = 0.63
    b_self: float = 0.18
    b_knn: float = 0.12
    b_rand: float = 0.46


#: liver ultrasound adaptation (ViT-B): lambda rand / knn / self 0.11 / 0.93 / 0.12, b 0.93 / 0.21 / 0.21
LIVER_ULTRASOUND = CorrelationWeights(lambda_self=0.12, lambda_knn=0.93, lambda_rand=0.11,
                                      b_self=0.21, b_knn=0.21, b_rand=0.93)


def pairings(feats, codes, feats_knn, codes_knn, n_points: int = 11, n_negatives: int = 5,
             generator: Optional[torch.Generator] = None) -> Dict[str, tuple]:
    """Sampled ``(f1, f2, c1, c2)`` of the three pairings: self, kNN (partners in the same batch order) and
    random (``n_negatives`` fresh shuffles of the batch, concatenated)."""
    b, dev = feats.shape[0], feats.device
    p1, p2 = sample_points(b, n_points, dev, generator), sample_points(b, n_points, dev, generator)
    f1, c1 = sample(feats, p1), sample(codes, p1)
    f2, c2 = sample(feats_knn, p2), sample(codes_knn, p2)
    perms = [torch.randperm(b, generator=generator).to(dev) for _ in range(n_negatives)]
    rand = (f1.repeat(n_negatives, 1, 1, 1), torch.cat([f1[q] for q in perms]),
            c1.repeat(n_negatives, 1, 1, 1), torch.cat([c1[q] for q in perms]))
    return {"self": (f1, f1, c1, c1), "knn": (f1, f2, c1, c2), "rand": rand}


def stego_loss(feats, codes, feats_knn, codes_knn, weights: CorrelationWeights = CorrelationWeights(),
               n_points: int = 11, n_negatives: int = 5, generator=None) -> Dict[str, torch.Tensor]:
    """``{"self", "knn", "rand"}`` unweighted correlation losses and ``"total"`` (weighted sum)."""
    pairs = pairings(feats, codes, feats_knn, codes_knn, n_points, n_negatives, generator)
    shifts = {"self": weights.b_self, "knn": weights.b_knn, "rand": weights.b_rand}
    lambdas = {"self": weights.lambda_self, "knn": weights.lambda_knn, "rand": weights.lambda_rand}
    out = {k: correlation_loss(*pairs[k], shifts[k]) for k in ("self", "knn", "rand")}
    out["total"] = sum(lambdas[k] * out[k] for k in ("self", "knn", "rand"))
    return out
