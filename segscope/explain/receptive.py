"""Receptive fields of output pixels (thesis §7.2.1, fig 7.5-7.6).

The *measured* receptive field of a concept at a layer is where the gradient of the
concept's target with respect to that layer is non-zero in some channel: only those
neurons have a path of non-zero weights (and open ReLUs, and winning max-pool positions)
to the selected outputs. The *theoretical* receptive field of a layer's unit is the square
of input pixels its kernels can reach, from the layer geometry alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..errors import SegscopeError
from .concepts import Concept
from .gradients import LayerRef, layer_gradients, layer_name, resolve_layer


def receptive_field(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept,
    layers: Sequence[LayerRef] | None = None,
) -> dict[str, torch.Tensor]:
    """Bool (h,w) per layer: where ∂target/∂A is non-zero in any channel (§7.2.1).

    ``layers`` defaults to all of ``model.layer_names``. Maps are at each layer's own
    resolution, in the padded frame the model runs in (SegNet: multiples of 32, padding
    at the bottom and right). One forward and one backward pass for all layers.
    """
    if layers is None:
        if not hasattr(model, "layer_names"):
            raise SegscopeError("this model has no layer_names: give the layers explicitly")
        layers = list(model.layer_names)
    if isinstance(layers, str | nn.Module):
        layers = [layers]
    g = layer_gradients(model, image, concept, list(layers))
    return {name: (grad != 0).any(dim=0) for name, grad in g.gradients.items()}


class Extent(NamedTuple):
    """Bounding box of a receptive-field mask.

    ``height``/``width`` in the layer's pixels, ``input_height``/``input_width`` the same
    box in input pixels (scaled by input size / layer size), ``box`` = (y0, x0, y1, x1)
    in layer pixels, end-exclusive. All zero for an empty mask.
    """

    height: int
    width: int
    input_height: float
    input_width: float
    box: tuple[int, int, int, int]


def extent(mask: torch.Tensor, input_size: tuple[int, int] | None = None) -> Extent:
    """Bounding-box extent of a bool (h,w) mask, in layer and in input pixels.

    ``input_size`` (H,W) is the size of the frame the layer maps to (for SegNet the padded
    input size); default: the mask's own size (a full-resolution layer).
    """
    if not torch.is_tensor(mask) or mask.dim() != 2:
        raise SegscopeError("a receptive-field mask must be a (h,w) tensor")
    h, w = mask.shape
    sy, sx = (1.0, 1.0) if input_size is None else (input_size[0] / h, input_size[1] / w)
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    if ys.numel() == 0:
        return Extent(0, 0, 0.0, 0.0, (0, 0, 0, 0))
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    return Extent(y1 - y0, x1 - x0, (y1 - y0) * sy, (x1 - x0) * sx, (y0, x0, y1, x1))


def theoretical_receptive_field(
    model: nn.Module, layer: LayerRef, at: LayerRef = "data"
) -> tuple[int, int | float]:
    """(size, stride) of one unit of ``layer``, measured in the units of layer ``at``.

    The chain of modules between ``at`` (default: the input pixels) and ``layer`` is taken
    in registration order (SegNet registers its modules in forward order). ``size`` is
    the largest number of ``at``-units one unit of ``layer`` can depend on, found by
    mapping the unit's index interval backwards through the chain:

    - convolution / pooling with kernel k, stride s, dilation d, padding p: [a, b] →
      [a·s − p, b·s − p + (k−1)·d] (a 3x3 conv widens by 2 units of its input, a 2x2/2
      pool maps one unit to two);
    - max-unpooling by s: [a, b] → [⌊a/s⌋, ⌊b/s⌋] — an unpooled pixel depends only on the
      pooled unit it was scattered from (through the stored switches, which carry no
      gradient);
    - BatchNorm, ReLU: no change.

    Through the decoder the result depends on where the unit sits relative to the 2x2
    unpooling grid; the maximum over all positions is returned. Without unpooling this is
    the usual recurrence (size += (k−1)·d·jump, jump *= s), e.g. 212 for VGG16's pool5.
    ``stride`` is the distance between adjacent units of ``layer`` in ``at``-units
    (fractional in the decoder when ``at`` is deeper than ``layer``'s resolution).
    Image borders and zero padding are ignored (a unit far from them), and kernels are
    taken as square (the height is used).
    """
    chain = _chain(model, layer, at)
    jump = 1.0
    period = 1
    for module in chain:
        jump, factor = _jump(module, jump)
        period *= factor
    size = 0
    for p in range(period):
        a = b = period * 1_000_000 + p  # far from 0, so that floor division stays simple
        for module in reversed(chain):
            a, b = _back(module, a, b)
        size = max(size, b - a + 1)
    return size, _number(jump)


def _chain(model: nn.Module, layer: LayerRef, at: LayerRef) -> list[nn.Module]:
    """The geometry-changing modules after ``at`` up to and including ``layer``."""
    start = resolve_layer(model, at)
    stop = resolve_layer(model, layer)
    order = "comes before or is"
    if stop is None:
        if start is None:
            return []
        raise SegscopeError(f"layer {layer_name(model, layer)!r} {order} {layer_name(model, at)!r}")
    start_ids = set() if start is None else {id(m) for m in start.modules()}
    stop_ids = {id(m) for m in stop.modules()}
    started = start is None
    in_start = in_stop = False
    chain: list[nn.Module] = []
    for module in model.modules():
        mid = id(module)
        if not started:
            if mid in start_ids:
                in_start = True
                continue
            if not in_start:
                if mid in stop_ids:
                    break
                continue
            started = True
        if mid in stop_ids:
            in_stop = True
        elif in_stop:
            break
        if isinstance(module, nn.ConvTranspose2d):
            raise SegscopeError("theoretical_receptive_field does not handle ConvTranspose2d")
        if isinstance(module, _GEOMETRIC):
            chain.append(module)
    if not in_stop:
        raise SegscopeError(
            f"layer {layer_name(model, layer)!r} {order} {layer_name(model, at)!r}"
        )
    return chain


_GEOMETRIC = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.MaxUnpool2d)


def _pair(value) -> int:
    return int(value[0] if isinstance(value, tuple | list) else value)


def _jump(module: nn.Module, jump: float) -> tuple[float, int]:
    """(new jump, unpooling factor) after ``module``."""
    s = _pair(module.stride)
    if isinstance(module, nn.MaxUnpool2d):
        return jump / s, s
    return jump * s, s


def _back(module: nn.Module, a: int, b: int) -> tuple[int, int]:
    """The input-index interval that output indices [a, b] of ``module`` depend on."""
    s = _pair(module.stride)
    if isinstance(module, nn.MaxUnpool2d):
        pad = _pair(module.padding)
        return (a + pad) // s, (b + pad) // s
    k = _pair(module.kernel_size)
    d = _pair(getattr(module, "dilation", 1))
    pad = _pair(module.padding)
    return a * s - pad, b * s - pad + (k - 1) * d


def _number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)
