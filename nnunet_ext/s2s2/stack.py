"""The semantic stack on disk, beside nnU-Net's preprocessed data.

``$nnUNet_preprocessed/DatasetXXX/<data_identifier>_s2s2_<generator>/``:

* ``CASE.b2nd``: float32 array (K, C, *spatial) = K generated copies of the preprocessed case (its exact shape),
  blosc2 with one copy per chunk row, so loading copy k decompresses only that copy;
* ``stack.json``: generator, its settings, K;
* ``preview.png``: masks, real images and generated copies side by side.

Writes are atomic (temporary file, then rename): a case file exists only when complete, so an interrupted run
resumes by skipping the cases that exist. ``shard`` splits the cases like ``nnUNetv2_predict -part_id/-num_parts``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

import numpy as np

from nnunet_ext.atomic_io import write_json_atomic

STACK_INFIX = "_s2s2_"


def stack_folder(preprocessed_dataset_dir, data_identifier: str, generator: str) -> Path:
    return Path(preprocessed_dataset_dir) / f"{data_identifier}{STACK_INFIX}{generator}"


def available_stacks(preprocessed_dataset_dir, data_identifier: str) -> List[str]:
    """Generators with a stack folder (holding stack.json) for this data identifier."""
    base = Path(preprocessed_dataset_dir)
    prefix = f"{data_identifier}{STACK_INFIX}"
    return sorted(d.name[len(prefix):] for d in base.glob(prefix + "*") if (d / "stack.json").is_file()) \
        if base.is_dir() else []


def shard(cases: Sequence[str], part: int, num_parts: int) -> List[str]:
    """Every ``num_parts``-th case from ``part`` on (sorted): the parts cover every case exactly once."""
    if not 0 <= part < num_parts:
        raise ValueError(f"--part must be in 0..{num_parts - 1}, got {part}")
    return sorted(cases)[part::num_parts]


def write_stack_case(folder, case: str, copies: np.ndarray, patch_size) -> None:
    """Write ``copies`` (K, C, *spatial) of one case atomically."""
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

    copies = np.ascontiguousarray(copies, dtype=np.float32)
    blocks, chunks = comp_blosc2_params(copies.shape[1:], tuple(patch_size), copies.itemsize)
    folder = Path(folder)
    tmp = folder / f".{case}.tmp.b2nd"
    blosc2.asarray(copies, urlpath=str(tmp), chunks=(1, *chunks), blocks=(1, *blocks), mode="w",
                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1})
    os.replace(tmp, folder / f"{case}.b2nd")


def open_stack_case(folder, case: str):
    """The stack of one case as a (lazily decompressed) blosc2 array (K, C, *spatial)."""
    import blosc2
    mmap = {} if os.name == "nt" else {"mmap_mode": "r"}
    return blosc2.open(urlpath=str(Path(folder) / f"{case}.b2nd"), mode="r", dparams={"nthreads": 1}, **mmap)


def write_stack_info(folder, info: dict) -> None:
    """``stack.json``, atomically; the temporary file is this process's own, so parts started together
    (``--part i --num-parts n`` on several GPUs or nodes) do not collide."""
    write_json_atomic(Path(folder) / "stack.json", info)
