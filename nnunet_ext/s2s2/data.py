"""Paired loading for S2S2: each training case with one random copy of its semantic stack.

``StackedDataset.load_case`` returns the case's image with a random copy ``k`` of its stack appended as extra
channels (``(2C, *spatial)``), and the case's segmentation. nnU-Net's loader and spatial transforms then run
unchanged: one spatial transform (rotation, scaling, elastic, mirroring, crop) is drawn per sample and applied to
all channels, so the real image and its copy stay aligned with each other and with the labels.
``paired_training_transforms`` makes the intensity augmentation independent: each of nnU-Net's random intensity
transforms (noise, blur, brightness, contrast, low resolution, gamma; ``RandomTransform`` around an image-only
transform) runs on the real half and, with its own draws (whether it fires, and its parameters), on the copy;
nnU-Net's ``MaskImageTransform`` (``use_mask_for_norm``) masks the copy's channels like the real ones. The trainer
splits the channels again (first C: real, last C: copy).

Both arrays are decompressed whole for each sample (fine for 2D images and small volumes; a lazy pair view is a
possible optimisation for large CT volumes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
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


class PerHalfTransform(BasicTransform):
    """Runs ``transform`` (image only) on channels ``[0, C)`` and, drawn again, on ``[C, 2C)``; an image with at most
    C channels (e.g. an unlabelled batch of CPS, which uses the same transforms) gets it once."""

    def __init__(self, transform: BasicTransform, channels: int):
        super().__init__()
        self.transform, self.channels = transform, int(channels)

    def apply(self, data_dict, **params):
        img, c = data_dict["image"], self.channels
        if img.shape[0] <= c:
            data_dict["image"] = self.transform(image=img)["image"]
        else:
            data_dict["image"] = torch.cat([self.transform(image=half)["image"] for half in (img[:c], img[c:])])
        return data_dict

    def __repr__(self):
        return f"{type(self).__name__}(channels={self.channels}, transform={self.transform})"


def paired_training_transforms(transforms, channels: int):
    """nnU-Net's training transforms (a ``ComposeTransforms``) for (real, copy) channel pairs, in place: random
    image-only transforms wrapped in ``PerHalfTransform``, ``MaskImageTransform`` extended to the copy's channels."""
    out = []
    for t in transforms.transforms:
        if isinstance(t, RandomTransform) and isinstance(t.transform, ImageOnlyTransform):
            t = PerHalfTransform(t, channels)
        elif isinstance(t, MaskImageTransform):
            t = MaskImageTransform(list(t.apply_to_channels) + [i + channels for i in t.apply_to_channels],
                                   t.channel_idx_in_seg, t.set_outside_to)
        out.append(t)
    transforms.transforms = out
    return transforms
