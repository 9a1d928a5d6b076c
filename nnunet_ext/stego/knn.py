"""Nearest neighbours for STEGO's kNN pairing (docs/methods/stego.md): per image, the backbone features
average-pooled over space and L2-normalised; cosine similarity to every other image; the top 30 kept (rank 0 is
the image itself), the positive drawn from ranks 1..7."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def pooled_descriptor(feats: torch.Tensor) -> torch.Tensor:
    """(b, C, H, W) features -> (b, C) spatially averaged, L2-normalised descriptors."""
    return F.normalize(feats.float().mean(dim=(2, 3)), dim=1)


def top_neighbours(descriptors: torch.Tensor, k: int = 30, block: int = 1024,
                   groups: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Indices (N, min(k, N)) of each descriptor's most similar descriptors (itself first), in blocks of rows.

    ``groups`` (N,): images of the same group other than the image itself are ranked last (slices of one volume
    are near-duplicates of each other, so their neighbours are looked for in the other volumes)."""
    d = F.normalize(descriptors.float(), dim=1)
    k = min(k, d.shape[0])
    g = None if groups is None else torch.as_tensor(groups)
    out = []
    for s in range(0, d.shape[0], block):
        sim = d[s:s + block] @ d.T
        rows = torch.arange(s, min(s + block, d.shape[0]))
        if g is not None:
            sim[g[rows][:, None] == g[None, :]] = -3.0  # below any cosine similarity
        sim[torch.arange(len(rows)), rows] = float("inf")  # itself at rank 0, whatever ties exist
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)


def draw_positive(neighbours: torch.Tensor, generator=None, first: int = 1, last: int = 7) -> torch.Tensor:
    """One partner per row, uniformly from ranks ``first``..``last`` of its neighbour list."""
    last = min(last, neighbours.shape[1] - 1)
    ranks = torch.randint(first, last + 1, (neighbours.shape[0],), generator=generator)
    return neighbours[torch.arange(neighbours.shape[0]), ranks]
