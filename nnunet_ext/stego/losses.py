"""STEGO's losses (docs/methods/stego.md), as in the authors' code: the correlation loss and the cluster probe's.

Correlation loss. For two images with backbone features ``f1, f2`` and head codes ``c1, c2`` (b, C, H, W):

1. sample 11 x 11 random points per image (``grid_sample``, ``align_corners=True``, border padding) and
   L2-normalise the channel vector at each point;
2. ``F[b, h, w, i, j] = <f1[b, :, h, w], f2[b, :, i, j]>`` (no gradient) and ``S`` likewise for the codes;
3. spatial centring: ``F <- F - mean_{i, j} F + mean(F)``: the mean over the second image's points (per query
   point of the first) is replaced by the global mean of that pairing (of that draw, for the random pairing);
4. ``L = -mean( max(S, 0) * (F - b) )``: the clamp is on S, never on F; ``F - b`` is not clamped.

Pairings: self (the same points ``p1`` of the same image), kNN (the partner image at a second set of points
``p2``) and random: ``n_negatives`` (5) draws, each pairing every image with *another* image of the batch
(``negative_indices``: a random permutation whose fixed points move on by one, ``i -> (i + 1) mod b``), the negative
image being sampled at the second set of points ``p2``; each draw is centred with its own means, the five loss maps
are concatenated, then averaged. Total ``lambda_self * L_self + lambda_knn * L_knn + lambda_rand * L_rand``;
defaults (ViT-S): lambda rand / knn / self = 0.63 / 0.25 / 0.67, b = 0.46 / 0.12 / 0.18.

Batch of one image: there is no other image to be a negative, so the random pairing raises ``ValueError``
(set ``n_negatives = 0`` to train without it; then ``L_rand = 0``).

Cluster probe (minibatch spherical k-means, trained alongside the head): ``centroid_similarity`` is the cosine
between the code at each position and each centroid, ``cluster_loss = -mean_{b, x} max_k cos(code[b, :, x],
mu_k)`` on the *detached* code, so that only the centroids learn from it (weight 1 in STEGO's total).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F


def sample_points(batch: int, n: int = 11, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random sampling coordinates in [-1, 1], shape (b, n, n, 2); drawn on the generator's device when one is given
    (a CPU generator cannot draw on CUDA), then moved to ``device``."""
    if generator is None:
        return torch.rand(batch, n, n, 2, device=device) * 2 - 1
    return (torch.rand(batch, n, n, 2, device=generator.device, generator=generator) * 2 - 1).to(device)


def sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``x`` (b, C, H, W) at ``coords`` (b, n, n, 2): (b, C, n, n)."""
    return F.grid_sample(x, coords.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine correlation of every point of ``a`` with every point of ``b``: (b, h, w, i, j)."""
    return torch.einsum("nchw,ncij->nhwij", F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10))


def centre(fd: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """STEGO's spatial centring of a feature correlation (n, h, w, i, j) made of ``draws`` pairings concatenated
    along the batch (draw-major, equal sizes): the mean over the second image's points is subtracted and the global
    mean of the query's own draw added back."""
    n = fd.shape[0]
    if draws < 1 or n % draws:
        raise ValueError(f"cannot split a batch of {n} correlations into {draws} equal draws")
    per_draw = fd.reshape(draws, -1).mean(dim=1).repeat_interleave(n // draws).view(n, 1, 1, 1, 1)
    return fd - fd.mean(dim=(3, 4), keepdim=True) + per_draw


def correlation_loss(f1, f2, c1, c2, shift: float, draws: int = 1) -> torch.Tensor:
    """``-mean(max(S, 0) * (F_centred - shift))`` for sampled features ``f`` and codes ``c``; ``draws`` pairings
    concatenated along the batch are each centred on their own (``centre``), then averaged together."""
    with torch.no_grad():
        fd = centre(correlation(f1.float(), f2.float()), draws)
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


def negative_indices(batch: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """The negative of each image for one random draw: ``randperm(batch)`` with every fixed point ``i`` replaced by
    ``(i + 1) mod batch``, so no image is its own negative (two images may share a negative, as in STEGO).
    Needs ``batch >= 2``."""
    if batch < 2:
        raise ValueError(f"STEGO's random pairing needs at least 2 images per batch (each image is paired with "
                         f"another image of the batch); got {batch}: use a batch of 2 or more, or n_negatives = 0")
    perm = torch.randperm(batch, generator=generator)
    idx = torch.arange(batch)
    return torch.where(perm == idx, (idx + 1) % batch, perm).to(device)


def pairings(feats, codes, feats_knn, codes_knn, n_points: int = 11, n_negatives: int = 5,
             generator: Optional[torch.Generator] = None) -> Dict[str, tuple]:
    """Sampled ``(f1, f2, c1, c2)`` of the three pairings: ``self`` (points ``p1`` of each image with themselves),
    ``knn`` (``p1`` of each image with ``p2`` of its partner, same batch order) and ``rand``: ``n_negatives`` draws
    concatenated along the batch (draw-major), each pairing ``p1`` of image ``i`` with ``p2`` (the second point
    set, drawn for image ``i``) of image ``negative_indices(b)[i]``; ``None`` when ``n_negatives`` is 0."""
    b, dev = feats.shape[0], feats.device
    p1, p2 = sample_points(b, n_points, dev, generator), sample_points(b, n_points, dev, generator)
    f1, c1 = sample(feats, p1), sample(codes, p1)
    f2, c2 = sample(feats_knn, p2), sample(codes_knn, p2)
    rand = None
    if n_negatives > 0:
        negs = [negative_indices(b, generator, dev) for _ in range(n_negatives)]
        rand = (f1.repeat(n_negatives, 1, 1, 1), torch.cat([sample(feats[q], p2) for q in negs]),
                c1.repeat(n_negatives, 1, 1, 1), torch.cat([sample(codes[q], p2) for q in negs]))
    return {"self": (f1, f1, c1, c1), "knn": (f1, f2, c1, c2), "rand": rand}


def correlation_total(weights: CorrelationWeights, l_self, l_knn, l_rand):
    """STEGO's weighted correlation loss ``lambda_self * L_self + lambda_knn * L_knn + lambda_rand * L_rand``."""
    return weights.lambda_self * l_self + weights.lambda_knn * l_knn + weights.lambda_rand * l_rand


def stego_loss(feats, codes, feats_knn, codes_knn, weights: CorrelationWeights = CorrelationWeights(),
               n_points: int = 11, n_negatives: int = 5, generator=None) -> Dict[str, torch.Tensor]:
    """``{"self", "knn", "rand"}`` unweighted correlation losses and ``"total"`` (weighted sum); ``"rand"`` is 0
    when ``n_negatives`` is 0."""
    pairs = pairings(feats, codes, feats_knn, codes_knn, n_points, n_negatives, generator)
    out = {"self": correlation_loss(*pairs["self"], weights.b_self),
           "knn": correlation_loss(*pairs["knn"], weights.b_knn),
           "rand": (correlation_loss(*pairs["rand"], weights.b_rand, draws=n_negatives) if n_negatives > 0
                    else codes.new_zeros((), dtype=torch.float32))}
    out["total"] = correlation_total(weights, out["self"], out["knn"], out["rand"])
    return out


def centroid_similarity(code: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (b, n_clusters, H, W) of the code (b, C, H, W) at each position to each centroid
    (n_clusters, C); both are L2-normalised over C first."""
    return torch.einsum("bchw,nc->bnhw", F.normalize(code, dim=1), F.normalize(centroids, dim=1))


def cluster_loss(code: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The cluster probe's loss ``-mean(max over clusters of centroid_similarity)`` on the detached code: only the
    centroids get a gradient."""
    return -centroid_similarity(code.detach(), centroids).max(dim=1).values.mean()
