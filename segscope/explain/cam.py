"""Grad-CAM adapted to segmentation (thesis §7.2, SPEC §3).

For a concept (a pixel, a mask, the true positives of a class, ...) the target is the sum
of the selected class scores (eq 7.6). For a layer with activations A (C,h,w)::

    α_k = (1/Z) Σ_ij ∂target/∂A^k_ij          Z = h·w          (eq 7.7-7.10)
    L   = ReLU(Σ_k α_k A^k)                                     (eq 7.2)

and L is upsampled bilinearly (``align_corners=False``) to the input size. Because the
target is a sum, the mask's α is the sum of the single pixels' α (eq 7.10), and a one-pixel
mask is classic Grad-CAM. The receptive-field variant (eq 7.15) first zeroes every
activation A^k_ij whose gradient is exactly zero: those neurons cannot reach the selected
outputs (§7.2.1).

SegNet pads its input to multiples of 32; every layer is computed in that padded frame,
so the map is upsampled to the padded size and then cropped, which keeps it aligned with
the pixels. All maps of one call come from one forward and one backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegscopeError
from .concepts import Concept
from .gradients import LayerGradients, LayerRef, layer_gradients

#: Layer used when none is given: the last layer of SegNet's deepest decoder block. It has
#: seen the whole encoder (the most class-specific features) and still has the coarse
#: 1/16 resolution at which Grad-CAM's per-channel weights make sense — the segmentation
#: counterpart of "the last convolutional layer" of §7. The thesis names no layer for its
#: Grad-CAM experiments.
DEFAULT_LAYER = "conv5_1_D"


@dataclass
class GradCAMMap:
    """Grad-CAM of one layer.

    Attributes
    ----------
    map
        (H,W) at input resolution.
    low_res
        (h,w) at the layer's resolution (padded frame), before upsampling.
    weights
        (C,) the α_k of eq 7.7.
    receptive
        bool (h,w), where ∂target/∂A is non-zero in some channel (§7.2.1).
    """

    map: torch.Tensor
    low_res: torch.Tensor
    weights: torch.Tensor
    receptive: torch.Tensor


def cam_weights(gradient: torch.Tensor) -> torch.Tensor:
    """α_k = (1/Z) Σ_ij gradient[k,i,j] with Z = h·w (eq 7.1 / 7.7)."""
    _, h, w = gradient.shape
    return gradient.sum(dim=(1, 2)) / (h * w)


def cam(
    activation: torch.Tensor, gradient: torch.Tensor, receptive_field: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L (h,w), α (C,)) for activations and gradients (C,h,w) of one layer.

    With ``receptive_field`` the activations whose gradient is exactly zero are zeroed
    before the weighted sum (eq 7.15); α is the same in both variants.
    """
    alpha = cam_weights(gradient)
    a = activation * (gradient != 0) if receptive_field else activation
    low = torch.relu(torch.einsum("k,khw->hw", alpha, a))
    return low, alpha


def upsample(low: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (``align_corners=False``) from (h,w) to the padded size, cropped to ``size``."""
    if tuple(low.shape) == tuple(padded):
        up = low
    else:
        up = F.interpolate(low[None, None], size=padded, mode="bilinear", align_corners=False)[0, 0]
    return up[: size[0], : size[1]]


def maps_from_gradients(
    g: LayerGradients, receptive_field: bool = False
) -> dict[str, GradCAMMap]:
    """Grad-CAM for every layer held by ``g`` (the result of :func:`layer_gradients`)."""
    out = {}
    for name, activation in g.activations.items():
        gradient = g.gradients[name]
        low, alpha = cam(activation, gradient, receptive_field)
        out[name] = GradCAMMap(
            map=upsample(low, g.padded, g.size),
            low_res=low,
            weights=alpha,
            receptive=(gradient != 0).any(dim=0),
        )
    return out


def gradcam_maps(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept,
    layers: Sequence[LayerRef],
    receptive_field: bool = False,
) -> tuple[dict[str, GradCAMMap], LayerGradients]:
    """Grad-CAM with all details for several layers, from one forward and one backward."""
    if isinstance(layers, str | nn.Module):
        layers = [layers]
    if not layers:
        raise SegscopeError("no layers given for Grad-CAM")
    g = layer_gradients(model, image, concept, list(layers))
    return maps_from_gradients(g, receptive_field), g


def gradcam(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept,
    layer: LayerRef,
    receptive_field: bool = False,
    *,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of ``concept`` at ``layer`` for one image (thesis eq 7.2, 7.7, 7.15).

    Parameters
    ----------
    model
        SegNet, or any module returning scores (1,K,H,W); layer names are resolved with
        ``model.layer(name)`` when the model has it, else as module paths.
    image
        (3,H,W) in [0,1].
    concept
        Which output neurons; the target is the sum of their scores (of their softmax
        probabilities for ``assign="prob"``).
    layer
        One of the model's layers (``"data"``: the input itself) or a module of it.
    receptive_field
        Zero the activations with an exactly-zero gradient first (eq 7.15).
    return_weights
        Also return the channel weights α (C,).

    Returns
    -------
    torch.Tensor
        (H,W), non-negative; with ``return_weights`` the pair (map, α).
    """
    maps, _ = gradcam_maps(model, image, concept, [layer], receptive_field)
    result = next(iter(maps.values()))
    return (result.map, result.weights) if return_weights else result.map


def gradcam_layers(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept,
    layers: Sequence[LayerRef] | None = None,
    receptive_field: bool = False,
) -> dict[str, torch.Tensor]:
    """Grad-CAM maps (H,W) for many layers from one forward and one backward pass.

    ``layers`` defaults to all of ``model.layer_names`` (the 37 SegNet layers).
    """
    if layers is None:
        if not hasattr(model, "layer_names"):
            raise SegscopeError("this model has no layer_names: give the layers explicitly")
        layers = list(model.layer_names)
    maps, _ = gradcam_maps(model, image, concept, layers, receptive_field)
    return {name: m.map for name, m in maps.items()}
