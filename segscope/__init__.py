"""segscope: why a segmentation network trained on synthetic images fails on real ones.

The public API, re-exported here: :class:`SegNet`, :func:`save_model`, :func:`load_model`;
datasets in :mod:`segscope.data`, explanations in :mod:`segscope.explain`.
"""

from __future__ import annotations

from .checkpoint import load_model, save_model
from .errors import SegscopeError
from .models import SegNet

__version__ = "0.1.0"
__all__ = ["SegNet", "save_model", "load_model", "SegscopeError", "__version__"]
