"""Test-only short-schedule GMS trainer (this folder is on nnUNet_extTrainer in the tests)."""
import torch

from nnunet_ext.core.schedule import ScheduleMixin
from nnunet_ext.gms.trainer import nnUNetTrainerGMS


class nnUNetTrainerGMS_tiny(ScheduleMixin, nnUNetTrainerGMS):
    """2 epochs x 15 iterations, no warm-up, lr 5e-3 (GMS's own schedule needs hundreds of epochs)."""
    schedule = {"num_epochs": 2, "num_iterations_per_epoch": 15, "num_val_iterations_per_epoch": 1, "save_every": 1}
    gms_warmup_epochs = 0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 5e-3
