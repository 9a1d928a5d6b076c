"""Pluggable auxiliary loss terms for ``nnUNetTrainerExt``.

A method adds training signals by contributing ``LossTerm`` objects; the trainer runs the
network once, hands every term a ``StepState`` (batch, network output, tapped features) and sums
``seg_loss + sum(weight * value)``. Each term's unweighted value is logged per epoch under its
name, printed in the training log and drawn in ``progress.png``.

Terms are ``nn.Module`` so a method may give them parameters or buffers; the trainer adds the
parameters of terms to nothing by itself (a method that needs that overrides
``configure_optimizers``), and terms are not part of the checkpointed network.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Union

import torch
from torch import nn


@dataclass
class StepState:
    """Everything one training step knows after the forward pass."""

    data: torch.Tensor
    target: Union[torch.Tensor, List[torch.Tensor]]
    output: Union[torch.Tensor, List[torch.Tensor]]
    features: Dict[str, torch.Tensor] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)


@dataclass
class WeightedTerm:
    """One named loss value and the weight it enters the total with."""

    value: torch.Tensor
    weight: float = 1.0


class LossTerm(nn.Module):
    """Base class of an auxiliary loss.

    Subclasses set ``feature_names`` (the tap points they need, see ``feature_taps``), or override
    ``required_features(network)`` when the list depends on the architecture, and implement
    ``forward(state) -> {name: WeightedTerm}``.
    """

    feature_names: Sequence[str] = ()

    def required_features(self, network: nn.Module) -> List[str]:
        return list(self.feature_names)

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:  # pragma: no cover - abstract
        raise NotImplementedError


def total_loss(seg_loss: torch.Tensor, terms: Dict[str, WeightedTerm]) -> torch.Tensor:
    """``seg_loss + sum_k weight_k * value_k`` (terms with weight 0 are skipped entirely)."""
    total = seg_loss
    for t in terms.values():
        if t.weight != 0:
            total = total + t.weight * t.value
    return total
