"""Which torch device a command runs on."""

from __future__ import annotations

import torch

from .errors import SegscopeError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a clear error for a missing CUDA.

    Parameters
    ----------
    name
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SegscopeError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegscopeError("--device cuda asked for, but no CUDA device is available")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise SegscopeError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                            "device(s) present")
    if device.type not in ("cpu", "cuda"):
        raise SegscopeError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device
