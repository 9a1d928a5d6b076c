"""Robustness of trained nnU-Net models to image corruptions (``nnunet-ext robustness``).

- :mod:`nnunet_ext.robustness.corruptions`: the corruption table (:data:`CORRUPTIONS`) and :func:`corrupt`.
- :mod:`nnunet_ext.robustness.run`: prediction with nnU-Net's inference on corrupted raw images, evaluation,
  reports (:func:`run_robustness`).
"""
from nnunet_ext.robustness.corruptions import CORRUPTIONS, available_corruptions, corrupt, intensity_stats
from nnunet_ext.robustness.run import RobustnessError, Settings, run_robustness

__all__ = ["CORRUPTIONS", "available_corruptions", "corrupt", "intensity_stats", "RobustnessError", "Settings",
           "run_robustness"]
