"""Pictures: the heatmap colour scale of eq 8.2 and the figures built on it."""

from __future__ import annotations

import importlib

from .cmap import heatmap_rgb, overlay_rgb, symmetric_limit

# The chapter-9 figures need matplotlib: loaded on first use.
_LAZY = {"figures": "segscope.viz.figures", "save_png": "segscope.viz.figures"}

__all__ = ["heatmap_rgb", "overlay_rgb", "symmetric_limit", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if name == "figures" else getattr(module, name)
    raise AttributeError(f"module 'segscope.viz' has no attribute {name!r}")
