"""The one exception type that reaches a user as a single line."""

from __future__ import annotations


class SegscopeError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The CLI prints ``segscope: error: <message>`` and exits with status 2 for these;
    anything else is a bug and keeps its traceback.
    """

    #: Raised on every process of a torchrun job alike (an error the ranks agreed on):
    #: the command line prints it on rank 0 only, so the user reads it once.
    all_ranks: bool = False


def agreed(message: str) -> SegscopeError:
    """A :class:`SegscopeError` that every rank raises alike (printed once, by rank 0)."""
    exc = SegscopeError(message)
    exc.all_ranks = True
    return exc
