"""STEGO's cluster probe: minibatch spherical k-means, trained alongside the head (METHODS.md section 3).

``n_clusters`` learnable centroids; similarity = cosine between the L2-normalised code at each position and each
normalised centroid. Loss = ``-mean(max over clusters of the similarity)`` on *detached* codes, so only the
centroids learn from it. ``logits(code)`` returns the similarities (b, n_clusters, H, W): their argmax is the
cluster, usable as the per-cluster scores nnU-Net's predictor expects.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterProbe(nn.Module):
    def __init__(self, dim: int, n_clusters: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.randn(n_clusters, dim))

    def logits(self, code: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,nc->bnhw", F.normalize(code, dim=1), F.normalize(self.centroids, dim=1))

    def loss(self, code: torch.Tensor) -> torch.Tensor:
        return -self.logits(code.detach()).max(dim=1).values.mean()
