"""Errors that reach the user as one line, never as a traceback.

The CLI catches :class:`PrunescopeError`, prints ``str(error)`` and exits with
``error.exit_code``: 2 for bad input (the user can fix the command), 1 for a failure
while working (the command was fine, the computation was not).
"""

from __future__ import annotations


class PrunescopeError(Exception):
    """A failure while working: exit code 1."""

    exit_code = 1


class UsageError(PrunescopeError):
    """Bad input (unknown name, missing or corrupt file, value out of range): exit code 2."""

    exit_code = 2
