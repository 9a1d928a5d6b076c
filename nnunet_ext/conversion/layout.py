"""Small helpers that inspect a source folder and raise :class:`SourceLayoutError` with a precise message."""
from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence

from .errors import SourceLayoutError


def _describe(folder: str, limit: int = 8) -> str:
    if not os.path.isdir(folder):
        return "no such folder" if not os.path.exists(folder) else "a file, not a folder"
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    if not entries:
        return "an empty folder"
    shown = ", ".join(e + ("/" if os.path.isdir(os.path.join(folder, e)) else "") for e in entries[:limit])
    return f"[{shown}{', ...' if len(entries) > limit else ''}]"


def require_dir(converter: str, path: str, expected: str) -> str:
    """Return ``path`` if it is a folder, else raise naming what the parent folder contains."""
    if not os.path.isdir(path):
        parent = os.path.dirname(os.path.abspath(path))
        raise SourceLayoutError(converter, expected, f"no folder {os.path.basename(path)!r}; the folder "
                                f"contains {_describe(parent)}", path)
    return path


def first_existing_dir(converter: str, root: str, candidates: Sequence[str], expected: str) -> str:
    """Return the first ``root/<candidate>`` that is a folder, else raise listing the candidates."""
    for c in candidates:
        p = os.path.join(root, c)
        if os.path.isdir(p):
            return p
    raise SourceLayoutError(converter, expected, f"none of {list(candidates)}; the folder contains "
                            f"{_describe(root)}", root)


def list_files(converter: str, folder: str, suffixes: Iterable[str], expected: str,
               allow_empty: bool = False) -> List[str]:
    """Sorted visible file names in ``folder`` ending with one of ``suffixes`` (case-insensitive)."""
    suffixes = tuple(s.lower() for s in suffixes)
    require_dir(converter, folder, expected)
    files = sorted(f for f in os.listdir(folder)
                   if not f.startswith((".", "_")) and f.lower().endswith(suffixes)
                   and os.path.isfile(os.path.join(folder, f)))
    if not files and not allow_empty:
        raise SourceLayoutError(converter, expected, f"no {'/'.join(suffixes)} files; the folder contains "
                                f"{_describe(folder)}", folder)
    return files


def strip_suffix(name: str, suffixes: Iterable[str]) -> str:
    """``name`` without the first matching suffix (case-insensitive)."""
    low = name.lower()
    for s in sorted(suffixes, key=len, reverse=True):
        if low.endswith(s.lower()):
            return name[: len(name) - len(s)]
    return name


def find_file(folder: str, stem: str, suffixes: Sequence[str]) -> Optional[str]:
    """Path of ``folder/<stem><suffix>`` for the first suffix that exists (case-insensitive), or None."""
    for s in suffixes:
        for cand in (stem + s, stem + s.upper()):
            p = os.path.join(folder, cand)
            if os.path.isfile(p):
                return p
    return None
