"""The semantic stack on disk, beside nnU-Net's preprocessed data.

``$nnUNet_preprocessed/DatasetXXX/<data_identifier>_s2s2_<generator>/``:

* ``CASE.b2nd``: float32 array (K, C, *spatial) = K generated copies of the preprocessed case (its exact shape),
  blosc2 with one copy per chunk row, so loading copy k decompresses only that copy;
* ``stack.json``: generator, its settings, K;
* ``preview.png``: masks, real images and generated copies side by side.

Writes are atomic (:mod:`nnunet_ext.atomic_io`: temporary file, then rename): a case file exists only when complete,
so an interrupted run resumes by skipping the cases that exist. ``shard`` splits the cases like
``nnUNetv2_predict -part_id/-num_parts`` (:mod:`nnunet_ext.core.sharding`, the project's one rule).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import numpy as np

from nnunet_ext.atomic_io import write_blosc2_atomic, write_json_atomic
from nnunet_ext.core.sharding import shard

__all__ = ["STACK_INFIX", "stack_folder", "available_stacks", "shard", "write_stack_case", "open_stack_case",
           "write_stack_info"]

STACK_INFIX = "_s2s2_"


def stack_folder(preprocessed_dataset_dir, data_identifier: str, generator: str) -> Path:
    return Path(preprocessed_dataset_dir) / f"{data_identifier}{STACK_INFIX}{generator}"


def available_stacks(preprocessed_dataset_dir, data_identifier: str) -> List[str]:
    """Generators with a stack folder (holding stack.json) for this data identifier."""
    base = Path(preprocessed_dataset_dir)
    prefix = f"{data_identifier}{STACK_INFIX}"
    return sorted(d.name[len(prefix):] for d in base.glob(prefix + "*") if (d / "stack.json").is_file()) \
        if base.is_dir() else []


def write_stack_case(folder, case: str, copies: np.ndarray, patch_size) -> None:
    """Write ``copies`` (K, C, *spatial) of one case atomically, one copy per chunk row."""
    write_blosc2_atomic(Path(folder) / f"{case}.b2nd", copies, patch_size, leading_axes=1)


def open_stack_case(folder, case: str):
    """The stack of one case as a (lazily decompressed) blosc2 array (K, C, *spatial)."""
    import blosc2
    mmap = {} if os.name == "nt" else {"mmap_mode": "r"}
    return blosc2.open(urlpath=str(Path(folder) / f"{case}.b2nd"), mode="r", dparams={"nthreads": 1}, **mmap)


def write_stack_info(folder, info: dict) -> None:
    """``stack.json``, atomically; the temporary file is this process's own, so parts started together
    (``--part i --num-parts n`` on several GPUs or nodes) do not collide."""
    write_json_atomic(Path(folder) / "stack.json", info)
