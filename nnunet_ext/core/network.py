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
