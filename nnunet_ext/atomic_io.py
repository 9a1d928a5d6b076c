"""Atomic file writes: a reader (or a resumed job) sees the old file or the whole new one, never a part.

Each function writes a temporary file of its own (``tempfile.mkstemp``, so processes writing the same file at once
do not collide) in the target's folder, then renames it over the target (``os.replace``, atomic on POSIX and
Windows within one file system). On any error the temporary file is removed and the target is left as it was.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def replace_atomic(path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then rename it over ``path``.

    ``suffix`` ends the temporary name (e.g. ``".png"`` where the writer picks its format from it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600; open() would have given 0666 less the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
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


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread can create a file
    os.umask(mask)
    return mask


_UMASK = _read_umask()
