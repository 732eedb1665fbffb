"""Options and helpers shared by several commands."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..device import resolve_device  # noqa: F401 - re-exported for the commands
from ..errors import SegscopeError


def device_option(func):
    """``--device auto|cpu|cuda|cuda:N``."""
    return click.option(
        "--device", default="auto", show_default=True,
        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.",
    )(func)


def parse_size(text: str, max_side: int | None = None) -> tuple[int, int]:
    """``"360x480"`` -> (360, 480) as (H, W); larger than ``max_side`` a side is refused
    (a model run at such a size would exhaust memory; see :data:`MAX_SIDE`)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SegscopeError(f"size must be HxW, e.g. 360x480, got {text!r}") from None
    if h < MIN_SIDE or w < MIN_SIDE:
        raise SegscopeError(f"size must be at least {MIN_SIDE}x{MIN_SIDE}, got {text!r}")
    if max_side is not None and max(h, w) > max_side:
        raise SegscopeError(f"size {text} is too large: at most {max_side} pixels a side")
    return h, w


#: The smallest image side any command resizes to (the generator's smallest scene; a
#: 1x1 image was scored as a perfect segmentation).
MIN_SIDE = 8
#: The largest image side that evaluate, predict and train resize to (one 8192x8192
#: float image is 0.8 GB; SegNet's activations need a hundred times that).
MAX_SIDE = 8192
#: Seeds of the commands that train or draw with torch (signed 64-bit; see training.MAX_SEED).
SEED = click.IntRange(0, 2**63 - 1)


def dataset_kind_options(func):
    """``--data-kind`` and ``--id-map``: force a dataset layout, map a plain folder's ids."""
    from ..data.real import data_kinds

    func = click.option(
        "--id-map", type=click.Path(), default=None,
        help="JSON file {source id: ROAD3 id or name} for --data-kind folder.",
    )(func)
    return click.option(
        "--data-kind", type=click.Choice(data_kinds()), default="auto",
        show_default=True, help="Dataset layout; auto detects it from the folder.",
    )(func)


def prepare_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the output folder ``path`` and check that files can be written in it.

    Called before any work is done, so that a wrong ``--out`` (an existing file, a
    read-only place) fails at once with one line instead of after minutes of work.
    """
    import tempfile

    from ..outdir import check_out_path

    out = check_out_path(path, flag)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: root passes access checks on read-only mounts.
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise SegscopeError(f"cannot write into {flag} folder {out}: "
                            f"{exc.strerror or exc}") from None
    return out


def split_option(func):
    """``--split``: which split of a dataset folder to read."""
    return click.option(
        "--split", default=None,
        help="Split of a dataset folder (default: its evaluation split, e.g. val, or the "
        "only split there is).",
    )(func)


def overwrite_option(func):
    """``--overwrite``: replace an earlier run of the same command in ``--out``."""
    return click.option(
        "--overwrite", is_flag=True,
        help="Replace an earlier run of this command in --out (a folder of other files is "
        "never touched).",
    )(func)
