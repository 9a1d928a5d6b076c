"""Where a converted dataset goes, and how it gets there without ever leaving a half-written dataset.

A converter writes everything into a hidden temporary folder next to the target
(``<raw_root>/.DatasetXXX_Name.tmp-<random>``, on the same file system so that the final rename is
atomic) and only renames it to ``<raw_root>/DatasetXXX_Name`` after all files were written and the
output was validated. If anything fails, the temporary folder is removed and an existing dataset is
left exactly as it was.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from typing import Iterator, Optional

from nnunet_ext import paths
from nnunet_ext.atomic_io import move_folder_atomic

from .errors import ConversionArgumentError, TargetExistsError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def resolve_raw_root(raw_root: Optional[str] = None) -> str:
    """Return the nnU-Net raw root: ``raw_root`` if given, else ``$nnUNet_raw``.

    Raises :class:`ConversionArgumentError` (a ``ValueError``) with an explanation if neither is set,
    or if the folder exists but cannot be written.
    """
    root = raw_root if raw_root else os.environ.get("nnUNet_raw")
    if not root:
        raise ConversionArgumentError("No output folder: pass --output DIR (raw_root=...) or set the nnUNet_raw "
                         "environment variable to nnU-Net's raw data folder.")
    root = os.path.abspath(os.path.expanduser(root))
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConversionArgumentError(f"the output folder {root} is a file; pass a folder as --output "
                                      "(or set nnUNet_raw to one)")
    if os.path.isdir(root) and not os.access(root, os.W_OK | os.X_OK):
        raise ConversionArgumentError(f"the output folder {root} is not writable; pass another --output "
                                      "(or fix its permissions)")
    return root


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``DatasetXXX_Name`` for an id and a name (validated)."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 0 < dataset_id <= 999:
        raise ConversionArgumentError(f"dataset id must be an integer between 1 and 999, got {dataset_id!r}")
    if not _NAME_RE.match(name or ""):
        raise ConversionArgumentError(f"dataset name {name!r} is not usable by nnU-Net: use letters, digits, '_' "
                         f"and '-' only (no spaces)")
    return paths.dataset_folder_name(dataset_id, name)


def check_target(raw_root: str, folder_name: str, overwrite: bool) -> str:
    """Return the absolute target folder after checking it may be written.

    Refuses (``TargetExistsError``) when the target exists and ``overwrite`` is false, and always
    when a *different* dataset with the same id exists in ``raw_root`` (nnU-Net identifies datasets
    by id, so two folders with one id would make both unusable).
    """
    target = os.path.join(raw_root, folder_name)
    ds_id = paths.dataset_id(folder_name)
    prefix = paths.dataset_folder_name(ds_id, "")
    if os.path.isdir(raw_root):
        clashes = [d for d in os.listdir(raw_root)
                   if d.startswith(prefix) and d != folder_name and os.path.isdir(os.path.join(raw_root, d))]
        if clashes:
            raise TargetExistsError(f"dataset id {ds_id:03d} is already used by {clashes} in {raw_root}; "
                                    f"choose another --id (this converter never deletes a different dataset)")
    if os.path.exists(target) and not overwrite:
        raise TargetExistsError(f"{target} already exists; pass --overwrite (overwrite=True) to replace it")
    return target


@contextlib.contextmanager
def atomic_folder(target: str, overwrite: bool) -> Iterator[str]:
    """Yield a fresh temporary folder next to ``target``; on success move it to ``target``.

    On an exception inside the ``with`` block the temporary folder is deleted and ``target`` is not
    touched. With ``overwrite``, an existing ``target`` is replaced only at the very end (it is first
    renamed aside, then the new folder is renamed in, then the old one is deleted).
    """
    parent = os.path.dirname(os.path.abspath(target))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    except OSError as e:
        raise ConversionArgumentError(f"cannot create a folder in the output folder {parent} ({e.strerror or e}); "
                                      "pass another --output (or fix its permissions)") from e
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700 folders
    if os.path.exists(target) and not overwrite:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TargetExistsError(f"{target} appeared while converting; refusing to overwrite it")
    move_folder_atomic(tmp, target)
