"""The one exception type for expected failures of nnunet_ext's commands.

An expected failure (bad layout, unreadable file, existing target, bad argument, missing model) is
a ``UserError`` (or a subclass), raised with a message that says what went wrong, where, and how to
fix it. ``nnunet-ext`` prints it as one line, ``nnunet-ext <verb>: error: <message>``, and exits with
status 2; the traceback is shown only with ``nnunet-ext --debug ...`` or ``nnUNet_ext_debug=1``.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """An expected failure with a message for the user (what, where, how to fix)."""
