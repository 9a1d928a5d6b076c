"""Internal feature distillation (SelfReg-UNet): nnUNetTrainerFD and its settings variants."""
from nnunet_ext.fd.trainer import nnUNetTrainerFD


class nnUNetTrainerFD_lambda0010(nnUNetTrainerFD):
    """FD with lambda = 0.010 (the value of one published command)."""
    fd_lambda = 0.010


class nnUNetTrainerFD_lambda0050(nnUNetTrainerFD):
    """FD with lambda = 0.050."""
    fd_lambda = 0.050


class nnUNetTrainerFD_lambda0100(nnUNetTrainerFD):
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


__all__ = ["nnUNetTrainerFD", "nnUNetTrainerFD_lambda0010", "nnUNetTrainerFD_lambda0050",
           "nnUNetTrainerFD_lambda0100", "nnUNetTrainerFD_intraOnly", "nnUNetTrainerFD_interOnly",
           "nnUNetTrainerFD_allBlocks"]
