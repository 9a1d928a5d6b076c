"""STEGO's losses as a loss term of ``nnUNetTrainerExt`` (each logged per epoch like FD's terms).

The trainer runs the network once on the batch of images followed by their kNN partners (training mode:
features after Dropout2d, codes, and the cluster-probe loss of the images' codes only). ``STEGOTerm`` splits the two
halves and returns the three correlation losses of ``losses.stego_loss`` weighted by their lambdas (``stego_self``,
``stego_knn``, ``stego_rand``) and the cluster probe's loss with weight 1 (``stego_cluster``; detached codes of the
batch's images, not of their partners, so only the centroids learn from it).
"""
from __future__ import annotations

from typing import Dict

from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.stego.losses import CorrelationWeights, stego_loss


class STEGOTerm(LossTerm):
    def __init__(self, weights: CorrelationWeights = CorrelationWeights(), n_points: int = 11, n_negatives: int = 5):
        super().__init__()
        self.weights, self.n_points, self.n_negatives = weights, n_points, n_negatives

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        out = state.output
        b = out["feats"].shape[0] // 2
        feats, codes = out["feats"], out["codes"]
        losses = stego_loss(feats[:b], codes[:b], feats[b:], codes[b:], self.weights, self.n_points,
                            self.n_negatives)
        w = self.weights
        return {"stego_self": WeightedTerm(losses["self"], w.lambda_self),
                "stego_knn": WeightedTerm(losses["knn"], w.lambda_knn),
                "stego_rand": WeightedTerm(losses["rand"], w.lambda_rand),
                "stego_cluster": WeightedTerm(out["cluster_loss"], 1.0)}
