"""Contact sheets: a grid of samples, each image beside its label overlay."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_path
from ..data.classes import IGNORE, ROAD3_COLOURS
from ..errors import SegscopeError

#: Opacity of each class colour over the picture (background lighter, to keep context).
_ALPHA = (0.35, 0.55, 0.75)


def as_rgb8(image) -> np.ndarray:
    """(H,W,3) uint8 from a float [0,1] or uint8 array/tensor, (H,W,3) or (3,H,W)."""
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise SegscopeError(f"expected an RGB image (H,W,3) or (3,H,W), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return a


def label_overlay(image, label, colours=ROAD3_COLOURS, alpha=_ALPHA) -> np.ndarray:
    """The picture with each labelled pixel tinted by its class colour (uint8 (H,W,3)).

    Pixels labelled 255 (ignore) or with an id beyond ``colours`` are left as they are.
    """
    rgb = as_rgb8(image).astype(np.float32)
    lab = label.detach().cpu().numpy() if hasattr(label, "detach") else np.asarray(label)
    if lab.shape != rgb.shape[:2]:
        raise SegscopeError(f"label shape {lab.shape} does not match image {rgb.shape[:2]}")
    lab = lab.astype(np.int64)
    k = len(colours)
    known = (lab >= 0) & (lab < k) & (lab != IGNORE)
    safe = np.where(known, lab, 0)
    col = np.asarray(colours, np.float32)[safe]
    a = np.where(known, np.asarray(alpha, np.float32)[np.minimum(safe, len(alpha) - 1)], 0.0)
    out = rgb + a[..., None] * (col - rgb)
    return (out + 0.5).astype(np.uint8)


def contact_sheet(
    images: Sequence,
    labels: Sequence,
    path: str | os.PathLike,
    cols: int = 4,
    gap: int = 4,
) -> Path:
    """Write a grid of samples to ``path`` (PNG, atomically): each cell is the image with
    its label overlay (ROAD3 colours, semi-transparent) to its right.

    Parameters
    ----------
    images, labels
        Equal-length sequences; images (H,W,3)/(3,H,W) float in [0,1] or uint8, labels
        (H,W) class ids. All images must have the same size.
    cols
        Cells per row.
    """
    if len(images) != len(labels):
        raise SegscopeError(f"{len(images)} images but {len(labels)} labels")
    if not len(images):
        raise SegscopeError("contact sheet needs at least one image")
    if cols < 1:
        raise SegscopeError(f"cols must be at least 1, got {cols}")
    cells = []
    for image, label in zip(images, labels, strict=True):
        rgb = as_rgb8(image)
        cells.append(np.concatenate(
            [rgb, np.full((rgb.shape[0], max(1, gap // 2), 3), 255, np.uint8),
             label_overlay(rgb, label)], axis=1))
    h, w = cells[0].shape[:2]
    if any(c.shape[:2] != (h, w) for c in cells):
        raise SegscopeError("contact sheet images must all have the same size")
    cols = min(cols, len(cells))
    rows = -(-len(cells) // cols)
    sheet = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 30, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        sheet[y:y + h, x:x + w] = cell
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return Path(path)
