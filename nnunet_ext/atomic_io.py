"""Atomic file writes: a reader (or a resumed job) sees the old file or the whole new one, never a part.

Each function writes a temporary file of its own (``tempfile.mkstemp``, so processes writing the same file at once
do not collide) in the target's folder, then renames it over the target (``os.replace``, atomic on POSIX and
Windows within one file system). On any error the temporary file is removed and the target is left as it was.
Every temporary-then-rename write of the project goes through here: text, JSON, figures, pickles, nnU-Net's blosc2
case files, links (:func:`nnunet_ext.paths.link_or_copy`) and whole folders (:func:`replace_folder_atomic`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def replace_atomic(path, write: Callable[[str], None], suffix: str = ".tmp", umask_mode: bool = True) -> None:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then rename it over ``path``.

    ``suffix`` ends the temporary name (e.g. ``".png"`` where the writer picks its format from it).
    ``umask_mode``: give the new file the mode ``open()`` would (0666 less the umask); False where ``write`` puts a
    link or a copy with its own mode at ``tmp_path`` (:func:`nnunet_ext.paths.link_or_copy`)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        if umask_mode:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; open() would have given 0666 less the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text: str) -> None:
    """``Path(path).write_text(text)``, atomically (written as given: no newline translation)."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            f.write(text)
    replace_atomic(path, write)


def write_json_atomic(path, obj, indent: int = 2, **json_kwargs) -> None:
    """``json.dumps(obj, indent=indent, **json_kwargs)`` written to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, **json_kwargs))


def save_figure_atomic(fig, path, **savefig_kwargs) -> None:
    """``fig.savefig(path, **savefig_kwargs)``, atomically (the temporary file keeps ``path``'s extension)."""
    replace_atomic(path, lambda tmp: fig.savefig(tmp, **savefig_kwargs), suffix=Path(path).suffix)


def write_pickle_atomic(path, obj) -> None:
    """``pickle.dump(obj)`` to ``path``, atomically."""
    import pickle

    def write(tmp):
        with open(tmp, "wb") as f:
            pickle.dump(obj, f)
    replace_atomic(path, write)


def write_blosc2_atomic(path, array, patch_size, leading_axes: int = 0) -> None:
    """``array`` (float32) to ``path`` (``.b2nd``) as nnU-Net stores a preprocessed case, atomically.

    nnU-Net's storage: blosc2 with the block and chunk sizes of ``comp_blosc2_params`` for the patch size (over the
    axes (C, *spatial)), LZ4HC at level 5. ``leading_axes`` axes in front of those get chunks and blocks of 1 along
    them (a stack of K copies (K, C, *spatial): loading copy k decompresses only that copy)."""
    import blosc2
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

    array = np.ascontiguousarray(array, dtype=np.float32)
    blocks, chunks = comp_blosc2_params(array.shape[leading_axes:], tuple(patch_size), array.itemsize)
    ones = (1,) * leading_axes
    replace_atomic(path, lambda tmp: blosc2.asarray(
        array, urlpath=tmp, chunks=(*ones, *chunks), blocks=(*ones, *blocks), mode="w",
        cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1}), suffix=".b2nd")


def move_folder_atomic(tmp, path) -> None:
    """Put the finished folder ``tmp`` at ``path`` (same file system) by renames: an existing ``path`` is renamed
    aside first and removed once the new folder is in place, so ``path`` always holds one whole folder."""
    path = Path(path)
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    old = tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent)
    os.rmdir(old)
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def replace_folder_atomic(path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_folder)`` to fill a temporary folder beside ``path``, then put it at ``path``
    (:func:`move_folder_atomic`); on an error the temporary folder is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it 0700
        move_folder_atomic(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread can create a file
    os.umask(mask)
    return mask


_UMASK = _read_umask()
