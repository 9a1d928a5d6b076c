"""GMS in a frozen VAE's latent space (nnUNetTrainerGMS); needs `nnunet-ext plan-gms` and $nnUNet_ext_vae."""
from nnunet_ext.gms.trainer import nnUNetTrainerGMS

__all__ = ["nnUNetTrainerGMS"]
