"""Jobs split into parts that run at the same time (one process per GPU or node, ``--num-parts N --part I``).

What the parts of one job share is a folder on a common file system; these helpers keep them consistent without a
server, with operations that are atomic on POSIX and on NFS (exclusive create, hard link, rename):

* :func:`claim_settings`: the first part writes the job's settings (a JSON file created exclusively: written to a
  temporary file, then hard-linked to its name, which fails if the name exists, so no part ever reads half a
  file); every later part compares its own settings with them and is refused (one line naming what differs) when
  they differ. A refused part has written nothing.
* :class:`ExclusiveLock`: a lock file created exclusively (``O_EXCL``), holding the owner's host and process id;
  one left by a process of this host that is gone is taken over, one of another host is never broken (the message
  says which file to remove). Used so that exactly one process writes a job's result.
* :func:`remove_folder`: a finished job's folder renamed aside, then deleted (no process sees half of it).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional, Type

from nnunet_ext.errors import UserError


def _read_json(path: Path) -> Optional[dict]:
    """The JSON at ``path``, None if there is no file (a file being written is read again, for up to 5 s)."""
    for attempt in range(100):
        try:
            return json.loads(Path(path).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            if attempt == 99:
                raise
            time.sleep(0.05)


def claim_settings(path, settings: dict, error: Type[Exception] = UserError, what: str = "this job",
                   remedy: str = "") -> bool:
    """Write ``settings`` to ``path`` if nobody has (True), else check they equal the ones there (False).

    Differing settings raise ``error`` with one line: ``"{what} was started with other settings (KEY: THERE, here:
    HERE; ...){remedy}"``. The file appears whole or not at all (temporary file, then ``os.link``)."""
    path = Path(path)
    text = json.dumps(settings, indent=2, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: exclusive create, then write (readers retry)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                return True
    finally:
        os.unlink(tmp)
    there = _read_json(path)
    if there is None:  # removed in between (the job was finished and cleaned up): claim it again
        return claim_settings(path, settings, error, what, remedy)
    diff = differences(there, json.loads(text))  # compared as JSON (tuples are lists there)
    if diff:
        raise error(f"{what} was started with other settings ({diff}){remedy}")
    return False


def differences(there: dict, here: dict) -> str:
    """``"KEY: THERE, here: HERE; ..."`` for every key whose value differs (JSON), ``""`` when none does."""
    there, here = json.loads(json.dumps(there)), json.loads(json.dumps(here))
    keys = sorted(set(there) | set(here), key=lambda k: (k not in here, k))
    return "; ".join(f"{k}: {json.dumps(there.get(k))}, here: {json.dumps(here.get(k))}"
                     for k in keys if there.get(k) != here.get(k))


def read_settings(path) -> Optional[dict]:
    """The settings at ``path`` (:func:`claim_settings`), or None when there are none."""
    return _read_json(Path(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class ExclusiveLock:
    """A lock file at ``path`` created with ``O_EXCL`` (``{"host", "pid", "since"}`` inside).

    ``acquire()``: True when this process holds it now; False when a live process holds it. A lock of a process of
    this host that has ended (killed) is removed and taken. ``release()`` removes the file (if still there)."""

    def __init__(self, path):
        self.path = Path(path)
        self.held = False

    def owner(self) -> Optional[dict]:
        try:
            return _read_json(self.path)
        except ValueError:
            return {}

    def acquire(self) -> bool:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is None:  # released in between
                    continue
                if owner.get("host") == socket.gethostname() and owner.get("pid") and not _alive(owner["pid"]):
                    try:  # left by a killed process of this host: take it over
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                return False
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, f)
            self.held = True
            return True
        return False

    def wait(self, timeout: float, error: Type[Exception] = UserError, poll: float = 0.05) -> "ExclusiveLock":
        """Block until the lock is held; ``error`` (one line naming the file and its owner) after ``timeout`` s."""
        end = time.monotonic() + timeout
        while not self.acquire():
            if time.monotonic() > end:
                owner = self.owner() or {}
                raise error(f"{self.path} is held by process {owner.get('pid')} on {owner.get('host')} for more "
                            f"than {timeout:.0f} s; if that process is gone, remove the file")
            time.sleep(poll)
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def remove_folder(path) -> None:
    """Remove the folder ``path``: renamed aside first (atomic), then deleted; nothing if it is gone already."""
    path = Path(path)
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.removed-", dir=path.parent))
    try:
        os.rename(path, aside / path.name)
    except FileNotFoundError:
        pass
    shutil.rmtree(aside, ignore_errors=True)

