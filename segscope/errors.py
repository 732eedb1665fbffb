"""The one exception type that reaches a user as a single line."""

from __future__ import annotations


class SegscopeError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The CLI prints ``segscope: error: <message>`` and exits with status 2 for these;
    anything else is a bug and keeps its traceback.
    """
