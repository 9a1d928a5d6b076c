"""Preprocessed unlabelled cases as an nnU-Net dataset, and a loader with nnU-Net's sampling and augmentation.

Storage (``<data_identifier>_unlabeled/`` beside nnU-Net's own folder): ``CASE.b2nd`` (the image, blosc2,
exactly as nnU-Net stores training images) and ``CASE.pkl`` (nnU-Net's properties), and no segmentation
file at all: there is no placeholder label on disk that anything could take for a real one. The pickle
is written last, so a case counts as present only when both files are complete.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from nnunet_ext.atomic_io import write_blosc2_atomic, write_pickle_atomic
from nnunet_ext.core.sharding import shard as split_cases

UNLABELED_SUFFIX = "_unlabeled"


def unlabeled_folder(preprocessed_dataset_dir, data_identifier: str) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled``, beside nnU-Net's ``<data_identifier>``."""
    return Path(preprocessed_dataset_dir) / f"{data_identifier}{UNLABELED_SUFFIX}"


def save_unlabeled_case(data: np.ndarray, properties: dict, folder, identifier: str, patch_size) -> None:
    """Write one preprocessed case atomically: the image as nnU-Net stores it (blosc2, its chunking), then the
    properties (the ``.pkl`` last: a case is present only when both files are complete)."""
    folder = Path(folder)
    write_blosc2_atomic(folder / f"{identifier}.b2nd", data, patch_size)
    write_pickle_atomic(folder / f"{identifier}.pkl", properties)


class UnlabeledDataset(nnUNetDatasetBlosc2):
    """nnU-Net's blosc2 dataset for cases without segmentation.

    ``load_case`` returns an all-zero, read-only segmentation view (no memory, never written anywhere) so that
    nnU-Net's loader and transforms run unchanged; ``UnlabeledDataLoader`` drops it from the batch.
    """

    def load_case(self, identifier):
        import blosc2
        from batchgenerators.utilities.file_and_folder_operations import load_pickle

        data = blosc2.open(urlpath=os.path.join(self.source_folder, identifier + ".b2nd"), mode="r",
                           dparams={"nthreads": 1}, **self.mmap_kwargs)
        properties = load_pickle(os.path.join(self.source_folder, identifier + ".pkl"))
        properties.setdefault("class_locations", {})  # no label, no foreground locations (never used: no oversampling)
        seg = np.broadcast_to(np.zeros((1,) * len(data.shape), dtype=np.int8), (1, *data.shape[1:]))
        return data, seg, None, properties

    @staticmethod
    def get_identifiers(folder: str) -> List[str]:
        """Complete cases only: an image with its properties file."""
        names = set(os.listdir(folder))
        return sorted(n[:-5] for n in names if n.endswith(".b2nd") and not n.startswith(".")
                      and n[:-5] + ".pkl" in names)


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's loader (random patch location, padding, the trainer's transforms) without targets.

    Patches are placed uniformly at random (no foreground oversampling: there is no label to find foreground
    in); batches are ``{"data", "keys"}``.
    """

    def __init__(self, data: UnlabeledDataset, batch_size: int, patch_size, final_patch_size, label_manager,
                 transforms=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        self.has_ignore = False  # no annotation: never look for annotated voxels

    def generate_train_batch(self):
        batch = super().generate_train_batch()
        batch.pop("target", None)
        return batch


def shard(identifiers: List[str], rank: int, world_size: int) -> List[str]:
    """The unlabelled cases rank ``rank`` of ``world_size`` samples from (DDP): its part by the project's one rule
    (:func:`nnunet_ext.core.sharding.shard`: disjoint parts); with fewer cases than ranks every rank samples from
    all of them."""
    return split_cases(identifiers, rank, world_size) or sorted(identifiers)


def make_unlabeled_augmenter(trainer, folder, identifiers: Optional[List[str]], batch_size: int):
    """An augmenter over the unlabelled cases ``identifiers`` (None: all in ``folder``) for ``trainer``.

    Uses the trainer's own patch size, rotation / mirroring settings and ``get_training_transforms`` (without
    deep-supervision targets), and nnU-Net's augmenter classes looked up at call time in nnU-Net's trainer
    module, with ``nnUNet_n_proc_DA`` workers like the labelled loader (so ``SeedMixin`` seeds it as well).
    """
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    patch_size = trainer.configuration_manager.patch_size
    rotation, dummy_2d, initial_patch_size, mirror_axes = \
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    lm = trainer.label_manager
    transforms = trainer.get_training_transforms(
        patch_size, rotation, None, mirror_axes, dummy_2d,
        use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=False,
        foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
        ignore_label=lm.ignore_label)
    dataset = UnlabeledDataset(str(folder), identifiers=list(identifiers) if identifiers is not None else None)
    loader = UnlabeledDataLoader(dataset, batch_size, initial_patch_size, patch_size, lm, transforms=transforms)
    n = get_allowed_n_proc_DA()
    if n == 0:
        return trainer_module.SingleThreadedAugmenter(loader, None)
    return trainer_module.NonDetMultiThreadedAugmenter(
        data_loader=loader, transform=None, num_processes=n, num_cached=max(6, n // 2), seeds=None,
        pin_memory=trainer.device.type == "cuda", wait_time=0.002)


def shut_down(augmenter) -> None:
    """Stop an augmenter's worker processes (no-op for in-process ones)."""
    finish = getattr(augmenter, "_finish", None)
    if finish is not None:
        finish()
