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


def agree(world: int, error: str | None) -> None:
    """Under torchrun, raise on every process when any one of them failed (rank 0's
    message first), marked so that the command line prints it once; with one process,
    raise ``error`` if there is one. Also keeps the processes together like a barrier."""
    if world > 1:
        import torch.distributed as dist

        errors: list[str | None] = [None] * world
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e), None)
    if error:
        exc = SegscopeError(error)
        exc.all_ranks = True
        raise exc
