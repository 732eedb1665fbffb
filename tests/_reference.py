"""Independent references shared by several test files: plain loops, no torch."""

from __future__ import annotations

import numpy as np


def numpy_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 convolution with zero padding 1, by loops."""
    c_in, h, wd = x.shape
    xp = np.zeros((c_in, h + 2, wd + 2))
    xp[:, 1:-1, 1:-1] = x
    out = np.zeros((w.shape[0], h, wd))
    for k in range(w.shape[0]):
        for i in range(h):
            for j in range(wd):
                out[k, i, j] = (w[k] * xp[:, i : i + 3, j : j + 3]).sum() + b[k]
    return out
