"""Paired loading for S2S2: each training case with one random copy of its semantic stack.

``StackedDataset.load_case`` returns the case's image with a random copy ``k`` of its stack appended as extra
channels (``(2C, *spatial)``), and the case's segmentation. nnU-Net's loader and training transforms then run
unchanged: one spatial transform (rotation, scaling, elastic, mirroring, crop) is drawn per sample and applied to
all channels, so the real image and its copy stay aligned with each other and with the labels; nnU-Net's
intensity transforms draw per channel (``synchronize_channels=False``), so the two get independent intensity
augmentation. The trainer splits the channels again (first C: real, last C: copy).

Both arrays are decompressed whole for each sample (fine for 2D images and small volumes; a lazy pair view is a
possible optimisation for large CT volumes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from nnunet_ext.s2s2.stack import open_stack_case


class StackedDataset(nnUNetDatasetBlosc2):
    def __init__(self, folder: str, identifiers=None, folder_with_segs_from_previous_stage: str = None,
                 stack_folder: str = None):
        super().__init__(folder, identifiers, folder_with_segs_from_previous_stage)
        if stack_folder is None:
            raise ValueError("StackedDataset needs stack_folder")
        self.stack_folder = str(stack_folder)

    def load_case(self, identifier):
        data, seg, seg_prev, properties = super().load_case(identifier)
        stack = open_stack_case(Path(self.stack_folder), identifier)
        k = np.random.randint(stack.shape[0])
        paired = np.concatenate((np.asarray(data[:], dtype=np.float32), np.asarray(stack[k], dtype=np.float32)))
        return paired, seg, seg_prev, properties
