"""Explanations of per-pixel decisions: LRP, Grad-CAM and the gradient family.

Every method takes the same :class:`Concept` objects (which output neurons, with which
initial relevance) and an image (3,H,W), and every method is reachable through one call,
:func:`attribute` (names in :data:`METHODS`). The public API is re-exported here; the
algorithms live one per module (``relevance`` for LRP with its engine in ``rules``,
``nodes``, ``state``, ``sweep``; ``cam`` for Grad-CAM, ``gradients`` for the chapter-5
methods, ``receptive`` for receptive fields).
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
from .relevance import (
    Explanation,
    FeatureMaps,
    Propagation,
    forward_batch,
    forward_state,
    lrp,
    lrp_batch,
    propagate,
    separate_features,
)
from .result import Attribution
from .rules import RuleSpec, parse_rules
from .sweep import sweep_options

__all__ = [
    "Concept",
    "lrp",
    "lrp_batch",
    "separate_features",
    "propagate",
    "forward_state",
    "forward_batch",
    "Explanation",
    "FeatureMaps",
    "Propagation",
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
    "RuleSpec",
    "parse_rules",
    "sweep_options",
]
