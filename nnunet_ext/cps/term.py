"""``CPSTerm``: network B's supervised loss and both CPS directions, as logged loss terms.

The trainer runs the pair once on ``cat(labelled patches, unlabelled patches)``; the first ``n`` samples
(``n`` = the batch size of the target) are labelled. nnU-Net's ``train_losses`` is network A's Dice + CE on
the labelled patches (comparable with stock nnU-Net); this term adds

* ``seg_b``: network B's Dice + CE on the labelled patches (weight 1),
* ``cps_a``, ``cps_b``: the CPS cross-entropies on all patches (weight lambda each, see ``losses``).

All three are logged per epoch (unweighted), printed and drawn in ``progress.png``.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.cps.losses import cps_losses


def labelled_part(output, n: int):
    """The first ``n`` samples of an output (tensor or deep-supervision list)."""
    return [o[:n] for o in output] if isinstance(output, (list, tuple)) else output[:n]


def num_labelled(target) -> int:
    return (target[0] if isinstance(target, (list, tuple)) else target).shape[0]


class CPSTerm(LossTerm):
    def __init__(self, seg_loss: Callable, weight: float = 1.0, ds_weights: Sequence[float] | None = None):
        super().__init__()
        self.seg_loss = seg_loss
        self.weight = float(weight)
        self.ds_weights = ds_weights

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        out_a, out_b = state.output
        n = num_labelled(state.target)
        seg_b = self.seg_loss(labelled_part(out_b, n), state.target)
        cps_a, cps_b = cps_losses(out_a, out_b, self.ds_weights)
        return {"seg_b": WeightedTerm(seg_b, 1.0), "cps_a": WeightedTerm(cps_a, self.weight),
                "cps_b": WeightedTerm(cps_b, self.weight)}
