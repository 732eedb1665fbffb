"""The relevance colour scale of thesis eq 8.2.

Symmetric around zero: blue at -max|R|, white at 0, red at +max|R|. When several maps are
compared in one figure they share one scale (eq 9.2): pass the same ``limit`` to each.
"""

from __future__ import annotations

import numpy as np
import torch

from ..analysis import as_numpy


def symmetric_limit(*maps: np.ndarray | torch.Tensor) -> float:
    """max |R| over all ``maps``: the shared scale of eq 9.2 (1.0 when all are zero)."""
    arrays = [as_numpy(m) for m in maps]
    limit = max((float(np.abs(a).max()) if a.size else 0.0) for a in arrays)
    return limit if limit > 0 else 1.0


def heatmap_rgb(relevance: np.ndarray | torch.Tensor, limit: float | None = None) -> np.ndarray:
    """(H,W) relevance -> (H,W,3) uint8 with the blue-white-red scale of eq 8.2.

    ``limit`` is the value drawn at full red / full blue; by default the map's own max|R|.
    Values beyond it are clipped.
    """
    r = as_numpy(relevance)
    if r.ndim != 2:
        raise ValueError(f"heatmap_rgb expects an (H,W) map, got shape {r.shape}")
    limit = symmetric_limit(r) if limit is None else float(limit)
    t = np.clip(r / (limit if limit > 0 else 1.0), -1.0, 1.0)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    # White at 0; fade the other two channels towards the extreme's own colour.
    red = 1.0 - neg
    green = 1.0 - pos - neg
    blue = 1.0 - pos
    rgb = np.stack([red, green, blue], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def overlay_rgb(image, relevance, limit: float | None = None, alpha: float = 0.6,
                grey: bool = True, signed: bool = True) -> np.ndarray:
    """Relevance colours blended over the picture: (H,W,3) floats in [0, 1].

    Near-zero relevance lets the picture show through; the blend weight grows with
    sqrt(|R| / limit) up to ``alpha`` so that the relevant pixels stand out.

    Parameters
    ----------
    image
        (3,H,W) or (H,W,3) in [0, 1].
    relevance
        (H,W) map.
    limit
        The value drawn at full colour; by default the map's own max|R|.
    alpha
        Opacity of the colours at ``limit``.
    grey
        Blend over the grey picture (the study's figures) instead of the colour one.
    signed
        The blue-white-red scale of eq 8.2; ``False`` draws a non-negative map (Grad-CAM)
        from white to red.
    """
    img = image_rgb(image)
    if grey:
        img = img.mean(axis=-1, keepdims=True).repeat(3, axis=-1)
    r = as_numpy(relevance)
    limit = symmetric_limit(r) if limit is None else limit
    if signed:
        colours = heatmap_rgb(r, limit).astype(np.float64) / 255.0
    else:
        t = np.clip(r / limit, 0, 1)
        colours = np.stack([np.ones_like(t), 1 - t, 1 - t], axis=-1)
    weight = alpha * np.sqrt(np.clip(np.abs(r) / limit, 0, 1))[..., None]
    return img * (1 - weight) + colours * weight


def image_rgb(image) -> np.ndarray:
    """(3,H,W), (1,H,W) or (H,W,3) pixels in [0, 1] as (H,W,3) float64, clipped to [0, 1]."""
    img = as_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.clip(img, 0, 1)
