"""Published train/val/test splits, written in nnU-Net's ``splits_final.json`` format.

nnU-Net reads ``$nnUNet_preprocessed/DatasetXXX_Name/splits_final.json`` (a list of folds, each
``{"train": [case ids], "val": [case ids]}``) and, when it exists, trains fold ``f`` on
``splits[f]["train"]`` and validates on ``splits[f]["val"]``. The preprocessed folder does not exist
before ``nnUNetv2_plan_and_preprocess``, so converters store the split in the *raw* dataset folder
(``splits_final.json``, one fold) and :func:`install_split` copies it to the preprocessed folder;
``nnUNetv2_train D CONFIG 0`` then uses the published split for fold 0.

Split policy used by all converters (see :class:`SplitPlan`):

* published train/val/test lists: imagesTr = train + val, fold 0 = (train, val), imagesTs = test;
* published train/test only: imagesTr = train + test, fold 0 = (train, test) so that nnU-Net's fold-0
  validation reproduces the published test evaluation, and the test cases are also copied to
  imagesTs/labelsTs for ``nnUNetv2_predict``. With ``holdout_test`` the test cases go to imagesTs
  only and no split is written (nnU-Net then makes its own 5-fold split of the training cases).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import List, Optional

from .errors import ConversionArgumentError, SplitNotFoundError, reading

SPLIT_FILE = "splits_final.json"


@dataclass
class SplitPlan:
    """Case ids of a published split; ``val`` and ``test`` may be empty."""

    train: List[str]
    val: List[str] = field(default_factory=list)
    test: List[str] = field(default_factory=list)
    holdout_test: bool = False

    def __post_init__(self):
        seen = {}
        for part in ("train", "val", "test"):
            for c in getattr(self, part):
                if c in seen:
                    raise ConversionArgumentError(
                        f"case {c!r} is in both the {seen[c]} and the {part} list; a case belongs to one list: "
                        "fix the list files")
                seen[c] = part

    @property
    def test_as_val(self) -> bool:
        """Whether test cases double as fold-0 validation cases (no published val list)."""
        return not self.val and bool(self.test) and not self.holdout_test and bool(self.train)

    def training_cases(self) -> List[str]:
        """Case ids written to imagesTr/labelsTr."""
        return list(self.train) + list(self.val) + (list(self.test) if self.test_as_val else [])

    def fold0(self) -> Optional[dict]:
        """The fold-0 dict for ``splits_final.json``, or None when there is nothing to validate on."""
        val = self.val if self.val else (self.test if self.test_as_val else [])
        if not self.train or not val:
            return None
        return {"train": sorted(self.train), "val": sorted(val)}

    def describe(self) -> str:
        """One-line human description (stored in dataset.json)."""
        if self.val:
            return (f"published split: {len(self.train)} train / {len(self.val)} val (fold 0 of "
                    f"splits_final.json) / {len(self.test)} test (imagesTs)")
        if self.test_as_val:
            return (f"published split: {len(self.train)} train / {len(self.test)} test; the test cases are "
                    f"fold 0's validation cases in splits_final.json and are also copied to imagesTs")
        if self.test:
            return f"{len(self.train)} training cases (imagesTr), {len(self.test)} held-out test cases (imagesTs)"
        return f"{len(self.train)} training cases, no published split"


def write_split(folder: str, fold0: dict) -> str:
    """Write ``[fold0]`` to ``folder/splits_final.json`` and return its path."""
    path = os.path.join(folder, SPLIT_FILE)
    with open(path, "w") as f:
        json.dump([{"train": list(fold0["train"]), "val": list(fold0["val"])}], f, indent=2)
    return path


def install_split(raw_dataset_folder: str, preprocessed_root: Optional[str] = None) -> str:
    """Copy ``<raw_dataset_folder>/splits_final.json`` to ``<preprocessed_root>/<DatasetXXX_Name>/``.

    ``preprocessed_root`` defaults to ``$nnUNet_preprocessed``; the dataset folder there is created if
    needed. nnU-Net then uses the split for fold 0 (``nnUNetv2_train D CONFIG 0``). An existing
    ``splits_final.json`` there is replaced. Returns the installed file's path.
    """
    src = os.path.join(raw_dataset_folder, SPLIT_FILE)
    if not os.path.isfile(src):
        raise SplitNotFoundError(f"no {SPLIT_FILE} in {raw_dataset_folder}: this dataset has no published "
                                f"split (nnU-Net will create its own 5-fold split)")
    root = preprocessed_root or os.environ.get("nnUNet_preprocessed")
    if not root:
        raise ConversionArgumentError("no preprocessed folder: pass --preprocessed DIR (preprocessed_root=...) or set "
                         "the nnUNet_preprocessed environment variable")
    dst_dir = os.path.join(os.path.abspath(root), os.path.basename(os.path.normpath(raw_dataset_folder)))
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, SPLIT_FILE)
    shutil.copyfile(src, dst)
    return dst


def read_list_file(path: str) -> List[str]:
    """Read a ``*.list`` / ``*.txt`` split file: one case name per line; blank lines (a trailing one
    too), ``#`` comments, Windows line ends and a UTF-8 byte order mark are ignored.

    An unreadable file (binary, not UTF-8) raises :class:`~nnunet_ext.conversion.errors.CorruptFileError`.
    """
    with reading(path):
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
