"""Exceptions raised by the dataset converters.

Both derive from standard exceptions so that callers that do not know this package can still catch
them (``ValueError`` for a source that does not look as expected, ``FileExistsError`` for a target
that would be overwritten).
"""
from __future__ import annotations


class SourceLayoutError(ValueError):
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


class TargetExistsError(FileExistsError):
    """The target dataset folder (or another dataset with the same id) already exists."""
