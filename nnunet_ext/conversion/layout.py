"""Small helpers that inspect a source folder and raise :class:`SourceLayoutError` with a precise message."""
from __future__ import annotations

import os
import re
from typing import Callable, Iterable, List, Optional, Sequence

from .errors import SourceLayoutError, SourceNotFoundError, describe_parent

#: folders that archives and file managers add and that never hold data
JUNK_DIRS = {"__macosx", ".ds_store", "@eadir", "$recycle.bin"}


def describe_folder(folder: str, limit: int = 8) -> str:
    """What ``folder`` holds, for an error message: ``[a/, b.nii.gz, ...]``, or that it is empty, missing or a file."""
    if not os.path.isdir(folder):
        return "no such folder" if not os.path.exists(folder) else "a file, not a folder"
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    if not entries:
        return "nothing (it is empty)"
    shown = ", ".join(e + ("/" if os.path.isdir(os.path.join(folder, e)) else "") for e in entries[:limit])
    return f"[{shown}{', ...' if len(entries) > limit else ''}]"


def require_source(converter: str, source: str) -> str:
    """The absolute ``--source`` folder; a path that does not exist (or is a file) is an error that
    says so, and names the parent folder's entries and the closest one (a misspelt path)."""
    path = os.path.abspath(os.path.expanduser(str(source)))
    if not os.path.exists(path):
        raise SourceNotFoundError(converter, path, describe_parent(path))
    if not os.path.isdir(path):
        raise SourceLayoutError(converter, "a folder as --source (the dataset folder, not a file in it)",
                                "a file, not a folder", path)
    return path


def loose_name(name: str) -> str:
    """``name`` in lower case without separators or punctuation: how folder names are compared loosely."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def visible_dirs(folder: str) -> List[str]:
    """Sorted names of the sub-folders of ``folder`` (hidden ones and archive debris such as __MACOSX left out)."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    return sorted(e for e in entries if not e.startswith(".") and e.lower() not in JUNK_DIRS
                  and os.path.isdir(os.path.join(folder, e)))


def child_dir(folder: str, *names: str) -> Optional[str]:
    """``folder/<name>`` for the first of ``names`` that exists; upper/lower case and separators
    (' ', '_', '-') do not matter ('Ground Truth' finds 'ground_truth' or 'GroundTruth'). None if absent."""
    for n in names:
        if os.path.isdir(os.path.join(folder, n)):
            return os.path.join(folder, n)
    dirs = visible_dirs(folder)
    for n in names:
        hits = [d for d in dirs if loose_name(d) == loose_name(n)]
        if hits:
            return os.path.join(folder, hits[0])
    return None


def child_file(folder: str, *names: str) -> Optional[str]:
    """``folder/<name>`` for the first of ``names`` that is a file, upper/lower case ignored ('Train.list'); or None."""
    try:
        files = {f.lower(): f for f in sorted(os.listdir(folder), reverse=True)
                 if os.path.isfile(os.path.join(folder, f))}
    except OSError:
        return None
    for n in names:
        if os.path.isfile(os.path.join(folder, n)):
            return os.path.join(folder, n)
        if n.lower() in files:
            return os.path.join(folder, files[n.lower()])
    return None


def find_nested(root: str, predicate: Callable[[str], bool], max_depth: int = 2) -> List[str]:
    """Folders at the smallest depth (0 = ``root`` itself, up to ``max_depth``) for which ``predicate``
    holds: finds a dataset inside the release folders that archives nest it in."""
    level = [root]
    for _ in range(max_depth + 1):
        hits = [d for d in level if predicate(d)]
        if hits:
            return hits
        level = [os.path.join(d, c) for d in level for c in visible_dirs(d)]
    return []


def require_dir(converter: str, path: str, expected: str) -> str:
    """Return ``path`` if it is a folder, else raise naming what the parent folder contains."""
    if not os.path.isdir(path):
        parent = os.path.dirname(os.path.abspath(path))
        raise SourceLayoutError(converter, expected, f"no folder {os.path.basename(path)!r}; the folder "
                                f"contains {describe_folder(parent)}", path)
    return path


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
                                f"{describe_folder(folder)}", folder)
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
