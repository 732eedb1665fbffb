"""Pictures: the heatmap colour scale of eq 8.2 and the figures built on it."""

from __future__ import annotations

from .cmap import heatmap_rgb, symmetric_limit

__all__ = ["heatmap_rgb", "symmetric_limit"]
