"""``CPSTerm``: network B's supervised loss and both CPS directions, as logged loss terms.

The trainer runs the pair once on ``cat(labelled patches, unlabelled patches)``; the first ``n`` samples
(``n`` = the batch size of the target) are labelled. nnU-Net's ``train_losses`` is network A's Dice + CE on
the labelled patches (comparable with stock nnU-Net); this term adds

* ``seg_b``: network B's Dice + CE on the labelled patches (weight 1),
* ``cps_a``, ``cps_b``: the CPS cross-entropies on all patches (weight lambda each, see ``losses``).

All three are logged per epoch (unweighted), printed and drawn in ``progress.png``.

``CPSCutMixTerm`` is the CutMix setting (``nnunet_ext.cps.cutmix``): the pair runs on ``cat(labelled patches, mixed
unlabelled patches)``, and the CPS cross-entropies run on the mixed patches only, against the pseudo-labels the
trainer made beforehand (each network's mixed argmax of the unmixed images, passed in ``StepState.extras``). As in
the CPS code's CutMix setting the labelled patches get only the supervised loss, no CPS term.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.cps.losses import cps_losses, pseudo_label_losses

#: ``StepState.extras`` key of the CutMix pseudo-labels: ``(labels of network A, labels of network B)``
CUTMIX_LABELS = "cutmix_pseudo_labels"


def labelled_part(output, n: int):
    """The first ``n`` samples of an output (tensor or deep-supervision list)."""
    return [o[:n] for o in output] if isinstance(output, (list, tuple)) else output[:n]


def unlabelled_part(output, n: int):
    """The samples after the first ``n`` of an output (tensor or deep-supervision list)."""
    return [o[n:] for o in output] if isinstance(output, (list, tuple)) else output[n:]


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


class CPSCutMixTerm(CPSTerm):
    """``seg_b`` on the labelled patches; ``cps_a`` = CE(A on the mixed patches, B's mixed pseudo-label) and
    ``cps_b`` = CE(B on the mixed patches, A's mixed pseudo-label), weight lambda each."""

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        if CUTMIX_LABELS not in state.extras:
            raise KeyError(f"CPSCutMixTerm needs the mixed pseudo-labels in StepState.extras[{CUTMIX_LABELS!r}]")
        out_a, out_b = state.output
        n = num_labelled(state.target)
        seg_b = self.seg_loss(labelled_part(out_b, n), state.target)
        labels_a, labels_b = state.extras[CUTMIX_LABELS]
        # each network learns from the OTHER network's pseudo-label
        cps_a, cps_b = pseudo_label_losses(unlabelled_part(out_a, n), unlabelled_part(out_b, n), labels_b, labels_a,
                                           self.ds_weights)
        return {"seg_b": WeightedTerm(seg_b, 1.0), "cps_a": WeightedTerm(cps_a, self.weight),
                "cps_b": WeightedTerm(cps_b, self.weight)}
