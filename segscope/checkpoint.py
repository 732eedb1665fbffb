"""Model files: ``safetensors`` weights with the metadata as JSON in the same file.

Loading never unpickles anything: the header is JSON, the tensors are raw buffers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import threading
from collections.abc import Iterator
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
#: Tensors under this prefix belong to something else kept in the same file (a
#: training checkpoint's optimizer and RNG state); :func:`load_model` skips them.
EXTRA_PREFIX = "extra."


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM back while safetensors reads or writes.

    A Python signal handler that raises inside safetensors' native code comes out as an
    unrelated ``ValueError`` ("could not determine the shape of object type ...") and
    the interrupt itself is lost; held back, it arrives right after, as itself.
    """
    if not hasattr(signal, "pthread_sigmask") \
            or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def save_model(model: SegNet, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``model`` and JSON-serialisable ``meta`` to ``path`` atomically.

    The file is a plain ``.safetensors`` file; ``meta`` (with the model config under
    ``"model"`` and the class names under ``"classes"``) is stored as JSON in its header.
    """
    return write_model_file(model, path, meta)


def write_model_file(model: SegNet, path: str | os.PathLike, meta: dict[str, Any],
                     extra_tensors: dict[str, torch.Tensor] | None = None,
                     extra_metadata: dict[str, str] | None = None) -> Path:
    """:func:`save_model` with more in the same file, written in one atomic rename.

    ``extra_tensors`` are stored under the prefix :data:`EXTRA_PREFIX` (which
    :func:`load_model` skips) and ``extra_metadata`` beside segscope's JSON in the
    header; training keeps its whole resumable state in the model file this way, so
    that no moment exists at which the weights and the state disagree.
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
    for key, value in (extra_tensors or {}).items():
        tensors[EXTRA_PREFIX + key] = value.detach().to("cpu").contiguous()
    with atomic_path(path) as tmp:
        try:
            with uninterrupted():
                save_file(tensors, str(tmp),
                          metadata={**(extra_metadata or {}), META_KEY: text})
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors' own error for a failed write
            code = re.search(r"os error (\d+)", str(exc))
            if code:  # a full disk is an OSError like any other write failure
                raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None
            raise SegscopeError(f"cannot write {path}: {_short(exc)}") from None
    return Path(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a segscope model file, without reading its tensors.

    The model description in it is checked (:func:`model_config`), so that a file of
    the wrong shape stops here with one line.
    """
    path = _existing(path)
    raw = _header(path).get(META_KEY)
    if raw is None:
        raise SegscopeError(f"{path} is a safetensors file without segscope metadata")
    meta = json_object(raw, path, "segscope metadata", "segscope metadata")
    model_config(meta, path)
    return meta


def json_object(raw: str, path: str | os.PathLike, what: str, subject: str) -> dict[str, Any]:
    """``raw`` read as a JSON object; a one-line error naming ``path`` otherwise
    ("corrupt <what>", "<subject> is a JSON list, not an object")."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SegscopeError(f"{path}: corrupt {what} ({exc})") from None
    if not isinstance(value, dict):
        raise SegscopeError(f"{path}: {subject} is a JSON {type(value).__name__}, "
                            "not an object")
    return value


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """All string entries of a safetensors header (segscope's JSON and any other)."""
    return _header(_existing(path))


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with uninterrupted(), safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - any reader failure means a bad file
        if _is_pickle(path):
            raise SegscopeError(
                f"{path} is a PyTorch pickle (.pth/.pt), not a segscope checkpoint; "
                "segscope reads only the .safetensors files it writes (it never unpickles)"
            ) from None
        raise SegscopeError(f"{path} is not a segscope checkpoint ({_short(exc)})") from None


def model_config(meta: Any, path: str | os.PathLike = "checkpoint") -> dict[str, Any]:
    """The SegNet arguments that ``meta`` describes, checked: the one place that decides
    whether checkpoint metadata has the right shape.

    Returns
    -------
    dict
        ``num_classes`` (int >= 1), ``width`` (float > 0) and ``class_names`` (a list of
        ``num_classes`` strings, or None).
    """
    def bad(what: str) -> SegscopeError:
        return SegscopeError(f"{path}: segscope metadata {what}; the file was not written "
                             "by segscope or was edited")

    if not isinstance(meta, dict):
        raise bad(f"is a JSON {type(meta).__name__}, not an object")
    version = meta.get("format", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad(f"has format = {_clip(version)}, not a format version")
    if version > FORMAT_VERSION:
        raise SegscopeError(f"{path}: checkpoint format {version} is newer than this segscope "
                            f"reads ({FORMAT_VERSION}); upgrade segscope")
    train_config = meta.get("train_config")
    for what, size in (("image_size", meta.get("image_size")),
                       ("train_config size", train_config.get("size")
                        if isinstance(train_config, dict) else None)):
        if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65536
                for v in size)):
            raise bad(f"has {what} = {_clip(size)}, not [height, width]")
    config = meta.get("model")
    if not isinstance(config, dict):
        raise bad(f"has 'model' = {_clip(config)}, not an object describing the network")
    if config.get("name") != "SegNet":
        raise SegscopeError(f"{path}: checkpoint holds a {config.get('name')!r}, not a SegNet")
    n = config.get("num_classes")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
        raise bad(f"has num_classes = {_clip(n)}, not a whole number of classes")
    width = config.get("width")
    if isinstance(width, bool) or not isinstance(width, int | float) \
            or not math.isfinite(width) or not 0 < width <= 4:
        raise bad(f"has width = {_clip(width)}, not a number in (0, 4]")
    names = config.get("class_names") or meta.get("classes")
    if names is not None and (not isinstance(names, list) or len(names) != n
                              or not all(isinstance(c, str) for c in names)):
        raise bad(f"has class names {_clip(names)}, not a list of {n} strings")
    return {"num_classes": n, "width": float(width), "class_names": names}


def training_size(meta: Any) -> tuple[int, int] | None:
    """The (H, W) of the images the checkpoint's model was trained on: the training's
    ``--size``, else the size of its training images (``image_size``), else None."""
    if not isinstance(meta, dict):
        return None
    config = meta.get("train_config")
    for size in (config.get("size") if isinstance(config, dict) else None,
                 meta.get("image_size")):
        if isinstance(size, list | tuple) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            return int(size[0]), int(size[1])
    return None


def at_training_scale(image_size: tuple[int, int], trained: tuple[int, int] | None
                      ) -> tuple[int, int] | None:
    """The size to resize an ``image_size`` (H, W) image to so that the model sees it at
    the scale it was trained on: the training width, the image's own aspect ratio (as
    the demo scores real images). None when the training size is unknown."""
    if trained is None:
        return None
    h, w = image_size
    return max(32, round(h * trained[1] / w)), int(trained[1])


def dataset_at_training_scale(dataset: Any, trained: tuple[int, int] | None
                              ) -> tuple[int, int] | None:
    """:func:`at_training_scale` for the images of ``dataset`` (indexable, items starting
    with a (3, H, W) image), from its first image: a dataset is shown at one size. The
    training size itself for an empty dataset; None when the training size is unknown."""
    if trained is None:
        return None
    if len(dataset) == 0:
        return tuple(trained)
    return at_training_scale(tuple(dataset[0][0].shape[-2:]), tuple(trained))


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Read a model written by :func:`save_model`; returns ``(model, meta)``.

    The model is in eval mode on ``map_location``. A file whose metadata has the wrong
    shape, whose tensors do not fit, or whose weights are not finite is refused with
    one line (:class:`~segscope.errors.SegscopeError`).
    """
    from safetensors import safe_open

    path = _existing(path)
    meta = read_metadata(path)
    try:
        model = SegNet(**model_config(meta, path))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise SegscopeError(f"{path}: cannot build the SegNet it describes ({_short(exc)})") \
            from None
    try:
        with uninterrupted(), safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()  # noqa: SIM118
                     if not k.startswith(EXTRA_PREFIX)}
    except Exception as exc:  # noqa: BLE001
        raise SegscopeError(f"cannot read weights in {path} ({_short(exc)})") from None
    load_weights(model, state, source=str(path))
    check_finite(state, str(path))
    model.to(map_location).eval()
    return model, meta


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse tensors holding NaN or infinity: such a model gives meaningless results."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SegscopeError(
                f"{source} has NaN or infinite values (in {key}); it cannot give "
                "meaningful results (a training that diverged?)")


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
    from .data.io import require_file

    path = Path(path).expanduser()
    if path.is_dir():
        raise SegscopeError(f"checkpoint {path} is a folder; give the model file in it "
                            "(e.g. model.safetensors)")
    if not path.exists() and not path.is_symlink():
        raise SegscopeError(f"checkpoint not found: {path}")
    return require_file(path, "checkpoint")


def _clip(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
