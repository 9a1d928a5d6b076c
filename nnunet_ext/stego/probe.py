"""STEGO's cluster probe: minibatch spherical k-means, trained alongside the head (docs/methods/stego.md).

``n_clusters`` learnable centroids; similarity = cosine between the L2-normalised code at each position and each
normalised centroid. Loss = ``-mean(max over clusters of the similarity)`` on *detached* codes, so only the
centroids learn from it (the maths: ``losses.centroid_similarity``, ``losses.cluster_loss``). In training the
network passes the codes of the batch's images only, never those of their kNN partners (as in the authors' code).
``logits(code)`` returns the similarities (b, n_clusters, H, W): their argmax is the cluster, usable as the
per-cluster scores nnU-Net's predictor expects.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_ext.stego.losses import centroid_similarity, cluster_loss


class ClusterProbe(nn.Module):
    def __init__(self, dim: int, n_clusters: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.randn(n_clusters, dim))

    def logits(self, code: torch.Tensor) -> torch.Tensor:
        return centroid_similarity(code, self.centroids)

    def loss(self, code: torch.Tensor) -> torch.Tensor:
        return cluster_loss(code, self.centroids)
