"""The relevance colour scale of thesis eq 8.2.

Symmetric around zero: blue at -max|R|, white at 0, red at +max|R|. When several maps are
compared in one figure they share one scale (eq 9.2): pass the same ``limit`` to each.
"""

from __future__ import annotations

import numpy as np
import torch


def symmetric_limit(*maps: np.ndarray | torch.Tensor) -> float:
    """max |R| over all ``maps``: the shared scale of eq 9.2 (1.0 when all are zero)."""
    limit = max((float(np.abs(to_numpy(m)).max()) if to_numpy(m).size else 0.0) for m in maps)
    return limit if limit > 0 else 1.0


def heatmap_rgb(relevance: np.ndarray | torch.Tensor, limit: float | None = None) -> np.ndarray:
    """(H,W) relevance -> (H,W,3) uint8 with the blue-white-red scale of eq 8.2.

    ``limit`` is the value drawn at full red / full blue; by default the map's own max|R|.
    Values beyond it are clipped.
    """
    r = to_numpy(relevance).astype(np.float64)
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


def to_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor as float32 numpy (detached, on the CPU); anything else via ``np.asarray``."""
    return a.detach().float().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
