"""Internal feature distillation (SelfReg-UNet): nnUNetTrainerFD and its settings variants."""
from nnunet_ext.fd.trainer import nnUNetTrainerFD
from nnunet_ext.paths import RenamedTrainer


class nnUNetTrainerFD_lambda0p01(nnUNetTrainerFD):
    """FD with lambda = 0.010 (the value of one published command)."""
    fd_lambda = 0.010


class nnUNetTrainerFD_lambda0p05(nnUNetTrainerFD):
    """FD with lambda = 0.050."""
    fd_lambda = 0.050


class nnUNetTrainerFD_lambda0p1(nnUNetTrainerFD):
    """FD with lambda = 0.100."""
    fd_lambda = 0.100


class nnUNetTrainerFD_intraOnly(nnUNetTrainerFD):
    """FD with the intra-feature term only (lambda = 0.015)."""
    fd_inter = False


class nnUNetTrainerFD_interOnly(nnUNetTrainerFD):
    """FD with the inter-feature term only (lambda = 0.015)."""
    fd_intra = False


class nnUNetTrainerFD_allBlocks(nnUNetTrainerFD):
    """FD on the first and last block of every stage (the authors' Swin-UNet selection), lambda = 0.015."""
    fd_selection = "blocks"


# Old names (before the naming rule of docs/developers.md): same settings, one deprecation line when created.
class nnUNetTrainerFD_lambda0010(RenamedTrainer, nnUNetTrainerFD_lambda0p01):
    """Deprecated name of nnUNetTrainerFD_lambda0p01."""


class nnUNetTrainerFD_lambda0050(RenamedTrainer, nnUNetTrainerFD_lambda0p05):
    """Deprecated name of nnUNetTrainerFD_lambda0p05."""


class nnUNetTrainerFD_lambda0100(RenamedTrainer, nnUNetTrainerFD_lambda0p1):
    """Deprecated name of nnUNetTrainerFD_lambda0p1."""


__all__ = ["nnUNetTrainerFD", "nnUNetTrainerFD_lambda0p01", "nnUNetTrainerFD_lambda0p05",
           "nnUNetTrainerFD_lambda0p1", "nnUNetTrainerFD_intraOnly", "nnUNetTrainerFD_interOnly",
           "nnUNetTrainerFD_allBlocks", "nnUNetTrainerFD_lambda0010", "nnUNetTrainerFD_lambda0050",
           "nnUNetTrainerFD_lambda0100"]
