"""``CPSNetworkPair``: CPS's two networks as one ``nn.Module``.

nnU-Net builds, checkpoints, wraps (``torch.compile``, DDP) and predicts with one ``self.network``. Making
the pair that module keeps all of it unchanged:

* training mode: ``forward(x)`` returns ``(output_a, output_b)`` (each nnU-Net's output: a tensor, or a
  list of deep-supervision outputs, full resolution first);
* evaluation mode: ``forward(x)`` returns the mean of the two networks' logits. nnU-Net's validation,
  ``nnUNetv2_predict`` and its sliding-window inference therefore use the average of both networks (the
  predictor averages logits over tiles and mirrorings the same way). ``net_a`` alone is
  ``pair.net_a``.
* the state dict holds both (``net_a.*``, ``net_b.*``); DDP wraps both.
"""
from __future__ import annotations

from typing import List, Tuple, Union

import torch
from torch import nn

Output = Union[torch.Tensor, List[torch.Tensor]]


def mean_output(a: Output, b: Output) -> Output:
    """Element-wise mean of two network outputs (tensors, or lists of deep-supervision tensors)."""
    if isinstance(a, (list, tuple)):
        return [(x + y) / 2 for x, y in zip(a, b)]
    return (a + b) / 2


class CPSNetworkPair(nn.Module):
    """Two networks of the same architecture (different initialisations)."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module):
        super().__init__()
        self.net_a = net_a
        self.net_b = net_b
        #: when True (set by the trainer during validation), eval-mode forward keeps ``(output_a, output_b)``
        self.keep_outputs = False
        self.last_outputs: Tuple[Output, Output] | None = None

    def forward_both(self, x: torch.Tensor) -> Tuple[Output, Output]:
        return self.net_a(x), self.net_b(x)

    def forward(self, x: torch.Tensor):
        out_a, out_b = self.forward_both(x)
        if self.training:
            return out_a, out_b
        self.last_outputs = (out_a, out_b) if self.keep_outputs else None
        return mean_output(out_a, out_b)

    @property
    def networks(self) -> Tuple[nn.Module, nn.Module]:
        return self.net_a, self.net_b

    def set_deep_supervision(self, enabled: bool) -> None:
        """nnU-Net's switch (``decoder.deep_supervision``) on both networks."""
        for net in self.networks:
            net.decoder.deep_supervision = enabled
