"""Helpers to reach the plain nnU-Net network behind DDP and ``torch.compile`` wrappers."""
from torch import nn


def unwrap_network(network: nn.Module) -> nn.Module:
    """Return the plain module behind ``DistributedDataParallel`` (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, in any nesting order (nnU-Net compiles first, then
    wraps in DDP)."""
    while True:
        if hasattr(network, "_orig_mod"):
            network = network._orig_mod
        elif isinstance(network, nn.parallel.DistributedDataParallel) or type(network).__name__ == "DataParallel":
            network = network.module
        else:
            return network


class FrozenModelNetwork(nn.Module):
    """A network that uses a frozen pretrained model without owning it (a VAE, a backbone): ``attach_frozen``
    keeps the model out of ``parameters()`` (never in the optimiser) and out of the state dict (never in the
    checkpoint), while ``.to()``, ``.cuda()`` and ``.half()`` still move it along with the network."""

    def attach_frozen(self, model: nn.Module) -> None:
        object.__setattr__(self, "_frozen_model", model)  # not a submodule

    @property
    def frozen_model(self) -> nn.Module:
        return self._frozen_model

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._frozen_model._apply(fn, *args, **kwargs)
        return self
