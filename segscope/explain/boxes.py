"""Rectangles of a 2-d map: where relevance can be non-zero in the restricted sweep.

A :data:`Box` is ``(y0, y1, x0, x1)``, half-open rows and columns of a map. The node kinds
(:mod:`.nodes`) map a box of their output to a box of each input; these helpers do the
arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Box = tuple[int, int, int, int]  # rows y0:y1, columns x0:x1 (half-open) of a 2-d map


def pair(v: Any) -> tuple[int, int]:
    """``v`` as (rows, columns): a layer parameter given as one int or a pair."""
    return (int(v[0]), int(v[1])) if isinstance(v, tuple | list) else (int(v), int(v))


def window(box: Box, kernel: Any, stride: Any, padding: Any, dilation: Any) -> Box:
    """The input rows/columns (unclipped) that the outputs in ``box`` read."""
    k, s, p, d = pair(kernel), pair(stride), pair(padding), pair(dilation)
    out: list[int] = []
    for a in range(2):
        lo, hi = box[2 * a], box[2 * a + 1]
        out += [lo * s[a] - p[a], (hi - 1) * s[a] - p[a] + d[a] * (k[a] - 1) + 1]
    return tuple(out)  # type: ignore[return-value]


def clip(box: Box, hw: Sequence[int]) -> Box:
    """``box`` cut to a map of size ``hw``."""
    return (max(box[0], 0), min(box[1], hw[0]), max(box[2], 0), min(box[3], hw[1]))


def area(box: Box) -> int:
    return max(box[1] - box[0], 0) * max(box[3] - box[2], 0)


def union(a: Box | None, b: Box | None) -> Box | None:
    """The smallest box holding both; ``None`` (anywhere) if either is."""
    if a is None or b is None:
        return None
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def inside(a: Box, b: Box) -> bool:
    """Whether ``a`` lies in ``b``."""
    return b[0] <= a[0] and a[1] <= b[1] and b[2] <= a[2] and a[3] <= b[3]


def crop(t: torch.Tensor, box: Box, origin: Box | None = None) -> torch.Tensor:
    """``t[..., box]``, ``t`` holding the map from ``origin``'s corner (None: from 0,0)."""
    oy, ox = (0, 0) if origin is None else (origin[0], origin[2])
    return t[..., box[0] - oy:box[1] - oy, box[2] - ox:box[3] - ox]
