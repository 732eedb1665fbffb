"""Reading images and label maps from disk, and writing PNGs, with one-line errors.

Every failure that a user can cause (a missing file, a file that is not an image, a
truncated PNG) becomes a :class:`~segscope.errors.SegscopeError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._io import atomic_path
from ..errors import SegscopeError

#: File name endings that count as images when a folder is scanned.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")

# Everything PIL raises for a broken or unsupported file.
_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError,
                  Image.DecompressionBombError)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` when it is a regular file, else one line saying what it is instead.

    A FIFO or a device (``/dev/null``) is refused before it is opened: reading one
    blocks or yields nothing, and "not found" would mislead.

    Parameters
    ----------
    path
        The file the user named.
    what
        What the file should be, for the message (``"image"``, ``"checkpoint"``, ...).
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise SegscopeError(f"{what} file {path} is a folder, not a file")
    if path.is_symlink() and not path.exists():
        raise SegscopeError(f"{what} file {path} is a broken symbolic link")
    if path.exists():
        raise SegscopeError(f"{what} file {path} is not a regular file (a pipe, socket or "
                            "device)")
    raise SegscopeError(f"{what} file {path} is not found")


def _open(path: str | os.PathLike, what: str) -> tuple[Image.Image, bool]:
    """Open and fully decode ``path``; a one-line SegscopeError on any failure.

    Returns the image and whether it is a 16-bit-per-channel colour PNG, which PIL
    decodes to 8 bits (the high byte) and :func:`_read_rgb16` reads in full.
    """
    path = require_file(path, what)
    try:
        img = Image.open(path)
        rgb16 = img.mode == "RGB" and any(_rawmode(t) == "RGB;16B" for t in img.tile)
        img.load()
    except _DECODE_ERRORS as exc:
        raise SegscopeError(f"cannot read {what} {path}: {_reason(exc)}") from None
    return img, rgb16


def check_image(path: str | os.PathLike, what: str = "image") -> None:
    """Raise the one-line SegscopeError :func:`read_image` would for a file that is
    missing or not a picture, from its header and checksums only (no full decode): for a
    command to check all its inputs before it writes anything."""
    path = require_file(path, what)
    try:
        with Image.open(path) as img:
            img.verify()
    except _DECODE_ERRORS as exc:
        raise SegscopeError(f"cannot read {what} {path}: {_reason(exc)}") from None


def _rawmode(tile) -> str:
    args = tile.args if hasattr(tile, "args") else tile[3]
    return args if isinstance(args, str) else str(args[0])


def _read_rgb16(path: Path, img_hi: Image.Image, what: str) -> np.ndarray:
    """The full 16-bit values of a 48-bit RGB PNG as uint16 (H,W,3).

    PIL only keeps the most significant byte of each sample. Decoding the same data a
    second time with the little-endian unpacker picks the other byte of every pair (the
    PNG filters work on bytes, so they are undone the same way), and the two halves
    make the exact 16-bit value.
    """
    try:
        img_lo = Image.open(path)
        tiles = []
        for t in img_lo.tile:
            codec, extents, offset, args = tuple(t)[:4]
            args = "RGB;16L" if isinstance(args, str) else ("RGB;16L", *args[1:])
            tiles.append(type(t)(codec, extents, offset, args) if hasattr(t, "_replace")
                         else (codec, extents, offset, args))
        img_lo.tile = tiles
        img_lo.load()
    except _DECODE_ERRORS as exc:
        raise SegscopeError(f"cannot read {what} {path}: {_reason(exc)}") from None
    hi = np.asarray(img_hi, dtype=np.uint16)
    lo = np.asarray(img_lo, dtype=np.uint16)
    return (hi << 8) | lo


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a picture as RGB float32 (H,W,3) in [0, 1].

    Grey, grey+alpha, palette, RGBA (alpha dropped), CMYK and 16-bit files are converted.

    Raises
    ------
    SegscopeError
        The file is missing, not an image, or corrupt.
    """
    path = Path(path)
    img, rgb16 = _open(path, "image")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if img.mode != "F" else max(float(arr.max()), 1.0)
        grey = np.clip(arr / peak, 0.0, 1.0)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if rgb16:
        return _read_rgb16(path, img, "image").astype(np.float32) / 65535.0
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A selection drawn as a picture, as a (H,W) bool array: the pixels that are drawn.

    With an alpha channel that varies (strokes on a transparent canvas) the drawn pixels
    are those not fully transparent, whatever their colour; otherwise those whose value
    (a grey level, a palette index, or any of R, G, B) is not zero.
    """
    img, _ = _open(path, "mask")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[:, :, 3]
        if alpha.min() != alpha.max():
            return alpha > 0
    if img.mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(img) != 0
    return (np.asarray(img.convert("RGB")) != 0).any(axis=2)


def read_label(path: str | os.PathLike, rgb: bool = False) -> np.ndarray:
    """Read a label map as integer ids (H,W).

    Parameters
    ----------
    path
        A PNG (or other lossless image) holding one id per pixel: 8-bit grey, 8-bit
        palette (the palette index is the id), 16-bit grey, or a colour file.
    rgb
        For colour-coded label sets: return each pixel's colour packed as
        ``r << 16 | g << 8 | b`` (int32) instead of an id. Without it a colour file
        yields the id in its first (R) channel, as SYNTHIA stores it; 16-bit colour
        PNGs keep all 16 bits.

    Returns
    -------
    numpy.ndarray
        uint8, uint16 or int32 (H,W).
    """
    path = Path(path)
    img, rgb16 = _open(path, "label")
    mode = img.mode
    if rgb:
        if mode != "RGB":
            if mode in ("L", "I;16", "I;16B", "I;16L", "I", "F", "1"):
                raise SegscopeError(
                    f"label {path} is a one-channel ({mode}) image, but colour-coded labels "
                    "are expected")
            img = img.convert("RGB")
        c = np.asarray(img, dtype=np.int32)
        return (c[:, :, 0] << 16) | (c[:, :, 1] << 8) | c[:, :, 2]
    if mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)
    if mode == "I":
        return np.asarray(img, dtype=np.int32)
    if mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("RGB", "RGBA", "LA", "PA"):
        if rgb16:
            return np.ascontiguousarray(_read_rgb16(path, img, "label")[:, :, 0])
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8)[:, :, 0])
    raise SegscopeError(f"label {path} has pixel mode {mode}, which is not a label map")


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as a PNG, atomically.

    Parameters
    ----------
    path
        Destination; its folder is created.
    array
        uint8 (H,W), (H,W,3) or (H,W,4); uint16 (H,W) (16-bit grey); bool (H,W); or floats
        in [0, 1] (scaled to 8 bits). Torch tensors are accepted too.
    """
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise SegscopeError(f"cannot write {path}: array of shape {arr.shape} is not an image")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.round(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.dtype == np.uint16 and arr.ndim == 2:
        pass
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise SegscopeError(f"cannot write {path}: integer values outside 0-255")
        arr = arr.astype(np.uint8)
    else:
        raise SegscopeError(f"cannot write {path}: unsupported dtype {arr.dtype}")
    img = Image.fromarray(np.ascontiguousarray(arr))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
