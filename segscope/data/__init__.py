"""Data: the ROAD3 class scheme, synthetic road scenes and real datasets mapped to ROAD3.

Every dataset here is map-style and yields ``(image, label)``: ``image`` float32 (3,H,W) in
[0, 1], ``label`` int64 (H,W) with ROAD3 ids or 255 (ignore).
"""

from __future__ import annotations

import importlib

from .classes import BACKGROUND, IGNORE, MARKINGS, ROAD, ROAD3, ROAD3_COLOURS

# Loaded on first use, so that ``import segscope`` stays fast.
_LAZY = {
    "SyntheticRoads": "segscope.data.synthetic",
    "render_scene": "segscope.data.synthetic",
    "PRESETS": "segscope.data.synthetic",
    "CamVid": "segscope.data.real",
    "CamVid32": "segscope.data.real",
    "Mapillary": "segscope.data.real",
    "Synthia": "segscope.data.real",
    "Cityscapes": "segscope.data.real",
    "LabelFolder": "segscope.data.real",
    "open_dataset": "segscope.data.real",
    "merge_road_surface": "segscope.data.real",
    "scoring_classes": "segscope.data.real",
}

__all__ = ["ROAD3", "ROAD3_COLOURS", "IGNORE", "BACKGROUND", "ROAD", "MARKINGS", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segscope.data' has no attribute {name!r}")
