"""Explanations of per-pixel decisions: LRP, Grad-CAM and the gradient family.

Every method takes the same :class:`Concept` objects (which output neurons, with which
initial relevance) and an image (3,H,W).
"""

from __future__ import annotations

import importlib
import sys
import types

from .concepts import Concept

# Each method lives in a module of its own; loaded on first use.
_LAZY = {
    "lrp": "segscope.explain.lrp",
    "separate_features": "segscope.explain.lrp",
    "propagate": "segscope.explain.lrp",
    "forward_state": "segscope.explain.lrp",
    "Explanation": "segscope.explain.lrp",
    "gradcam": "segscope.explain.gradcam",
    "gradcam_layers": "segscope.explain.gradcam",
    "receptive_field": "segscope.explain.receptive",
    "theoretical_receptive_field": "segscope.explain.receptive",
    "sensitivity": "segscope.explain.gradients",
    "gradient_x_input": "segscope.explain.gradients",
    "deconvnet": "segscope.explain.gradients",
    "guided_backprop": "segscope.explain.gradients",
    "activation_maximization": "segscope.explain.gradients",
    "attribute": "segscope.explain.methods",
    "METHODS": "segscope.explain.methods",
    "Attribution": "segscope.explain.result",
}

__all__ = ["Concept", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segscope.explain' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``gradcam``/``lrp`` the functions when their same-named modules load.

    Importing submodule ``segscope.explain.gradcam`` (from anywhere) makes the import
    system set the package attribute ``gradcam`` to the module, which would shadow the
    function of SPEC §4; this puts the function there instead.
    """

    def __setattr__(self, name: str, value) -> None:
        if (
            name in _LAZY
            and isinstance(value, types.ModuleType)
            and value.__name__ == _LAZY[name]
            and hasattr(value, name)
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
