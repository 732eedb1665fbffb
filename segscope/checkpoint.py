"""Model files: ``safetensors`` weights with the metadata as JSON in the same file.

Loading never unpickles anything: the header is JSON, the tensors are raw buffers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_path
from .errors import SegscopeError
from .models import SegNet

#: Key of the safetensors header metadata entry that holds segscope's JSON.
META_KEY = "segscope"
FORMAT_VERSION = 1


def save_model(model: SegNet, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``model`` and JSON-serialisable ``meta`` to ``path`` atomically.

    The file is a plain ``.safetensors`` file; ``meta`` (with the model config under
    ``"model"`` and the class names under ``"classes"``) is stored as JSON in its header.
    """
    from safetensors.torch import save_file

    model = unwrap(model)
    if not isinstance(model, SegNet):
        raise SegscopeError(f"save_model expects a SegNet, got {type(model).__name__}")
    header = {
        "format": FORMAT_VERSION,
        "model": model.config(),
        "classes": list(model.class_names),
        **meta,
    }
    try:
        text = json.dumps(header, default=_json_default)
    except TypeError as exc:
        raise SegscopeError(f"checkpoint metadata is not JSON serialisable: {exc}") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: text})
    return Path(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a segscope model file, without reading its tensors."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as exc:  # noqa: BLE001 - any reader failure means a bad file
        if _is_pickle(path):
            raise SegscopeError(
                f"{path} is a PyTorch pickle (.pth/.pt), not a segscope checkpoint; "
                "segscope reads only the .safetensors files it writes (it never unpickles)"
            ) from None
        raise SegscopeError(f"{path} is not a segscope checkpoint ({_short(exc)})") from None
    if raw is None:
        raise SegscopeError(f"{path} is a safetensors file without segscope metadata")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SegscopeError(f"{path}: corrupt segscope metadata ({exc})") from None


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Read a model written by :func:`save_model`; returns ``(model, meta)``.

    The model is in eval mode on ``map_location``.
    """
    from safetensors.torch import load_file

    path = _existing(path)
    meta = read_metadata(path)
    config = meta.get("model", {})
    if config.get("name") != "SegNet":
        raise SegscopeError(f"{path}: checkpoint holds a {config.get('name')!r}, not a SegNet")
    model = SegNet(
        num_classes=int(config["num_classes"]),
        width=float(config["width"]),
        class_names=config.get("class_names") or meta.get("classes"),
    )
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise SegscopeError(f"cannot read weights in {path} ({_short(exc)})") from None
    load_weights(model, state, source=str(path))
    model.to(map_location).eval()
    return model, meta


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Copy ``state`` into ``model``, with one clear line when they do not fit."""
    model = unwrap(model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise SegscopeError(
            f"{source} does not fit this model: {len(missing)} missing and "
            f"{len(unexpected)} unexpected tensors (e.g. {(missing or unexpected)[0]!r})"
        )
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            what = ""
            if isinstance(model, SegNet):
                what = f" ({model.num_classes} classes, width {model.width})"
            raise SegscopeError(
                f"{source} does not fit this model{what}: {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
    model.load_state_dict(state)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP / compiled wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        if path.is_dir():
            raise SegscopeError(f"checkpoint {path} is a folder; give the model file in it "
                                "(e.g. model.safetensors)")
        raise SegscopeError(f"checkpoint not found: {path}")
    return path


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` starts like ``torch.save`` output (a zip archive or a raw pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
