"""Options and helpers shared by several commands."""

from __future__ import annotations

import os
from pathlib import Path

import click
import torch

from ..errors import SegscopeError


def device_option(func):
    """``--device auto|cpu|cuda|cuda:N``."""
    return click.option(
        "--device", default="auto", show_default=True,
        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.",
    )(func)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a clear error for a missing CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SegscopeError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegscopeError("--device cuda asked for, but no CUDA device is available")
    return device


def parse_size(text: str) -> tuple[int, int]:
    """``"360x480"`` -> (360, 480) as (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SegscopeError(f"size must be HxW, e.g. 360x480, got {text!r}") from None
    if h < 1 or w < 1:
        raise SegscopeError(f"size must be positive, got {text!r}")
    return h, w


def dataset_kind_options(func):
    """``--data-kind`` and ``--id-map``: force a dataset layout, map a plain folder's ids."""
    from ..data.real import DATA_KINDS

    func = click.option(
        "--id-map", type=click.Path(), default=None,
        help="JSON file {source id: ROAD3 id or name} for --data-kind folder.",
    )(func)
    return click.option(
        "--data-kind", type=click.Choice(DATA_KINDS), default="auto",
        show_default=True, help="Dataset layout; auto detects it from the folder.",
    )(func)


def prepare_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the output folder ``path`` and check that files can be written in it.

    Called before any work is done, so that a wrong ``--out`` (an existing file, a
    read-only place) fails at once with one line instead of after minutes of work.
    """
    import tempfile

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SegscopeError(f"{flag} {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: root passes access checks on read-only mounts.
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise SegscopeError(f"cannot write into {flag} folder {out}: "
                            f"{exc.strerror or exc}") from None
    return out
