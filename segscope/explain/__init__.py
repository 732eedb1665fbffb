"""Explanations of per-pixel decisions: LRP, Grad-CAM and the gradient family.

Every method takes the same :class:`Concept` objects (which output neurons, with which
initial relevance) and an image (3,H,W).
"""

from __future__ import annotations

import importlib

from .concepts import Concept

# Each method lives in a module of its own; loaded on first use.
_LAZY = {
    "lrp": "segscope.explain.lrp",
    "separate_features": "segscope.explain.lrp",
    "gradcam": "segscope.explain.gradcam",
}

__all__ = ["Concept", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segscope.explain' has no attribute {name!r}")
