"""Explanations of per-pixel decisions: LRP, Grad-CAM and the gradient family.

Every method takes the same :class:`Concept` objects (which output neurons, with which
initial relevance) and an image (3,H,W). The public API is re-exported here; the
algorithms live one per module (``relevance`` for LRP, ``cam`` for Grad-CAM,
``gradients`` for the chapter-5 methods, ``receptive`` for receptive fields).
"""

from __future__ import annotations

from .cam import gradcam, gradcam_layers
from .concepts import Concept
from .gradients import (
    activation_maximization,
    deconvnet,
    gradient_x_input,
    guided_backprop,
    sensitivity,
)
from .methods import METHODS, attribute
from .receptive import receptive_field, theoretical_receptive_field
from .relevance import Explanation, forward_state, lrp, propagate, separate_features
from .result import Attribution

__all__ = [
    "Concept",
    "lrp",
    "separate_features",
    "propagate",
    "forward_state",
    "Explanation",
    "gradcam",
    "gradcam_layers",
    "receptive_field",
    "theoretical_receptive_field",
    "sensitivity",
    "gradient_x_input",
    "deconvnet",
    "guided_backprop",
    "activation_maximization",
    "attribute",
    "METHODS",
    "Attribution",
]
