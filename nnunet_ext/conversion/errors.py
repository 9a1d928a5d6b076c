"""Exceptions raised by the dataset converters.

Every expected failure of a converter (a source that does not look as expected, an unreadable file,
an existing target, a bad argument) is a :class:`nnunet_ext.errors.UserError`, so that
``nnunet-ext convert NAME`` (and the ``dataset_conversion/`` scripts, which run the same entry
point) print it as one line, ``nnunet-ext convert NAME: error: <what, where, how to fix>``, without
a traceback (``--debug`` or ``nnUNet_ext_debug=1`` shows it). Each one also derives from the
standard exception it used to be (``ValueError``, ``FileExistsError``, ``FileNotFoundError``,
``RuntimeError``), so callers that do not know this package can still catch it.

All of them pickle with their arguments (``__reduce__``): a failure inside a worker process reaches
the parent process as the same exception type with the same message.
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator, Optional

from nnunet_ext.errors import UserError

#: how to go on after an unreadable file or a case whose data do not fit (the CLI option and the keyword)
SKIP_BAD_HINT = ("pass --skip-bad (skip_bad=True) to convert the other cases and list this one in dataset.json "
                 "as skipped")


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    # SimpleITK and ITK prefix their messages with the C++ source location: keep what follows 'ERROR:'
    m = re.search(r"(?:sitk|itk)::ERROR: (.*)$", text)
    if m:
        text = m.group(1)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConversionError(UserError):
    """Base of the converters' expected failures (a :class:`nnunet_ext.errors.UserError`); the message
    is always one line (``nnunet-ext`` prints it as ``nnunet-ext convert NAME: error: <message>``)."""

    def __str__(self) -> str:
        return re.sub(r"\s*\n\s*", " ", super().__str__())


class SourceLayoutError(ConversionError, ValueError):
    """The source folder does not match the layout a converter expects.

    The message always names what was expected, what was found instead and the file or folder where
    the mismatch was detected, e.g.::

        Unexpected source layout for kvasir_seg: expected a folder 'masks' with one mask per image;
        found no mask for 'abc.jpg' (at /data/Kvasir-SEG/masks)
    """

    def __init__(self, converter: str, expected: str, found: str, path: str):
        self.converter = converter
        self.expected = expected
        self.found = found
        self.path = str(path)
        super().__init__(f"Unexpected source layout for {converter}: expected {expected}; "
                         f"found {found} (at {self.path})")

    def __reduce__(self):  # picklable, so that errors raised in worker processes reach the caller intact
        return (type(self), (self.converter, self.expected, self.found, self.path))


class SourceNotFoundError(SourceLayoutError):
    """The ``--source`` folder does not exist (or is a file)."""

    def __init__(self, converter: str, path: str, detail: str = ""):
        self.converter = converter
        self.path = str(path)
        self.detail = detail
        self.expected = "an existing source folder"
        self.found = detail or "no such folder"
        ValueError.__init__(self, f"the source folder {self.path} does not exist (check the --source path){detail}")

    def __reduce__(self):
        return (type(self), (self.converter, self.path, self.detail))


class TargetExistsError(ConversionError, FileExistsError):
    """The target dataset folder (or another dataset with the same id) already exists."""


class ConversionArgumentError(ConversionError, ValueError):
    """An argument (id, name, output folder, spacing, option combination...) cannot be used."""


class SplitNotFoundError(ConversionError, FileNotFoundError):
    """``install_split`` was asked for a dataset that has no ``splits_final.json``."""


class IntegrityCheckError(ConversionError, RuntimeError):
    """The converted dataset failed nnU-Net's checks; nothing was written."""


class BadCaseError(ConversionError):
    """One case cannot be converted: ``path`` names the file, ``reason`` says why.

    ``--skip-bad`` (``skip_bad=True``) skips such cases, converts the others and lists the skipped
    ones in the summary and in ``dataset.json`` (``skipped_cases``).
    """

    what = "case data that cannot be converted"
    fix = "fix or replace the file"

    def __init__(self, path: str, reason: str, case: Optional[str] = None, fix: Optional[str] = None):
        self.path = str(path)
        self.reason = one_line(reason)
        self.case = case
        self.fix_hint = fix
        where = f" (case {case!r})" if case else ""
        super().__init__(f"{self.what} in {self.path}{where}: {self.reason}; {fix or self.fix}, or {SKIP_BAD_HINT}")

    def with_case(self, case: str) -> "BadCaseError":
        """The same error, naming ``case`` (itself if it already names one)."""
        return self if self.case else type(self)(self.path, self.reason, case, self.fix_hint)

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.case, self.fix_hint))


class CorruptFileError(BadCaseError, ValueError):
    """A source file cannot be read (truncated, corrupt, not the format its name says)."""

    what = "cannot read a corrupt or truncated file"
    fix = "replace it with an intact copy (download or extract it again)"


class CaseDataError(BadCaseError, ValueError):
    """A file was read but its content does not fit (label values, shapes, dimensions)."""

    what = "unusable data"
    fix = "fix the file"


@contextlib.contextmanager
def reading(path: str) -> Iterator[None]:
    """Turn any failure of a library that reads ``path`` into a :class:`CorruptFileError` naming it.

    Our own :class:`~nnunet_ext.errors.UserError` (e.g. a missing dataset in an h5 file) passes through.
    """
    try:
        yield
    except UserError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except FileNotFoundError as e:
        raise CorruptFileError(path, f"the file is missing ({e.strerror or e})") from e
    except Exception as e:
        raise CorruptFileError(path, f"{type(e).__name__}: {e}") from e


def describe_parent(path: str, limit: int = 8) -> str:
    """``'; /a contains [x, y] (did you mean /a/z?)'`` for a folder that does not exist: the entries of its
    nearest existing parent folder, and the closest one."""
    import difflib
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.isdir(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return ""
    try:
        entries = sorted(e for e in os.listdir(parent) if not e.startswith("."))
    except OSError:
        return ""
    if not entries:
        return f"; {parent} is empty"
    near = difflib.get_close_matches(os.path.basename(os.path.normpath(path)), entries, n=1, cutoff=0.6)
    shown = ", ".join(entries[:limit]) + (", ..." if len(entries) > limit else "")
    hint = f" (did you mean {os.path.join(parent, near[0])}?)" if near else ""
    return f"; {parent} contains [{shown}]{hint}"
