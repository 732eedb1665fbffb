"""What :func:`~segscope.explain.attribute` returns, for every method: an :class:`Attribution`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Attribution:
    """The result of one explanation method for one concept on one image.

    Attributes
    ----------
    method
        The method's name as in :data:`segscope.explain.methods.METHODS`
        (``"lrp"``, ``"gradcam"``, ``"sensitivity"``, ...).
    pixels
        (H,W) map at input resolution. For LRP and the gradient maps it is the per-colour map
        summed over the three colour channels (as eq 8.1 does for relevance); for Grad-CAM
        it is the Grad-CAM map itself; for activation maximization the prototype image
        summed over its channels.
    input
        (3,H,W) per-colour map (LRP, the gradient-family maps, the activation-maximization
        prototype), or ``None`` when the method has none (Grad-CAM).
    concept
        Human-readable description of what was explained.
    extras
        Method-specific values: ``explanation`` (LRP's whole
        :class:`~segscope.explain.Explanation`), ``layer``, ``weights`` (Grad-CAM's α),
        ``low_res`` (the map at the layer's resolution), ``target`` (the explained
        scalar), ``history`` (activation maximization's objective per step), ...
    """

    method: str
    pixels: torch.Tensor
    input: torch.Tensor | None
    concept: str
    extras: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        h, w = self.pixels.shape[-2:]
        return (
            f"Attribution(method={self.method!r}, pixels={h}x{w}, concept={self.concept!r}, "
            f"extras={sorted(self.extras)})"
        )
