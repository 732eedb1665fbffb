"""The forward maps of the weighted layers and their transposes (what the rules use).

:class:`ConvOp` and :class:`LinearMapOp` implement the :class:`~.rules.LinearOp` protocol
(``fwd(x, w, b)``, used by the rules for their denominators) plus the transposed map
``back`` of the relevance sweep. :class:`WindowOp` evaluates a convolution on a window of
its input only, for the boxed denominators of the restricted sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .boxes import Box, window


def derived(cache: dict | None, key: Any, base: torch.Tensor,
            make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``make(base)``, kept in ``cache[key]`` for as long as ``base`` is the same tensor,
    unmodified (its version counter unchanged): a layer's weight variants are computed
    once per model, not once per image."""
    if cache is None:
        return make(base)
    hit = cache.get(key)
    if hit is not None and hit[0] is base and hit[1] == base._version:
        return hit[2]
    out = make(base)
    cache[key] = (base, base._version, out)
    return out


class WeightParts:
    """The weight variants of a layer (W⁺, W⁻ and the transposed forms), cached in the
    graph node's ``cache`` dict, so that every forward state of the model shares them."""

    weight: torch.Tensor
    cache: dict | None

    def part(self, sign: int) -> torch.Tensor:
        """W⁺ (``sign`` > 0) or W⁻ (``sign`` < 0)."""
        return derived(self.cache, ("w", sign), self.weight,
                       lambda w: w.clamp(min=0) if sign > 0 else w.clamp(max=0))

    def _cached(self, w: torch.Tensor) -> bool:
        # only the layer's own weight and its cached parts: a rule's one-off weight (γ)
        # would otherwise stay alive in the cache
        return w is self.weight or any(w is hit[2] for key, hit in (self.cache or {}).items()
                                       if key[0] == "w")


class ConvOp(WeightParts):
    """A 2-d convolution and its transpose; ``fwd`` also serves the rules' denominators."""

    def __init__(self, params: dict, in_shape: torch.Size, out_shape: torch.Size,
                 cache: dict | None = None) -> None:
        p = params
        self.weight, self.bias = p["weight"], p["bias"]
        self.cache = cache
        self.stride, self.padding = p["stride"], p["padding"]
        self.dilation, self.groups = p["dilation"], p["groups"]
        self.in_shape = tuple(in_shape)
        k = self.weight.shape[-2:]
        self.output_padding = tuple(
            in_shape[2 + d]
            - ((out_shape[2 + d] - 1) * self.stride[d] - 2 * self.padding[d]
               + self.dilation[d] * (k[d] - 1) + 1)
            for d in range(2)
        )
        # With stride 1 the transpose is a plain convolution with flipped weights, which
        # the CPU backends run faster than conv_transpose.
        self.flip_padding = tuple(self.dilation[d] * (k[d] - 1) - self.padding[d]
                                  for d in range(2))
        self.as_conv = (self.stride == (1, 1) and self.groups == 1
                        and min(self.flip_padding) >= 0)

    def fwd(self, x: torch.Tensor, w: torch.Tensor,
            b: torch.Tensor | None = None) -> torch.Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def back_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` in the form :meth:`back` wants it (once per model for the layer's own
        weight variants, else once per term)."""
        if not self.as_conv:
            return w
        def flip(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(0, 1).flip(-1, -2).contiguous()
        return derived(self.cache, ("back", id(w)), w, flip) if self._cached(w) else flip(w)

    def window(self, box: Box) -> Box:
        """The input rows/columns (unclipped) that the outputs in ``box`` read."""
        return window(box, self.weight.shape[-2:], self.stride, self.padding, self.dilation)

    def _pads(self, full: bool) -> tuple[Any, Any, Any]:
        # full=True: the whole transposed image, no padding cropped (for boxes of outputs)
        if self.as_conv:
            k = self.weight.shape[-2:]
            pad = tuple(self.dilation[d] * (k[d] - 1) for d in range(2))
            return (pad if full else self.flip_padding), None, None
        return None, (0, 0) if full else self.padding, (0, 0) if full else self.output_padding

    def back(self, r: torch.Tensor, wb: torch.Tensor, full: bool = False) -> torch.Tensor:
        """Wᵀ r: the transposed convolution of relevance (B,C_out,h,w) -> (B,C_in,H,W).

        ``full=True`` returns the whole transposed map of ``r`` (a box of outputs): the
        input window :meth:`window` of that box, before clipping to the image.
        """
        flip, pad, out_pad = self._pads(full)
        if self.as_conv:
            return F.conv2d(r, wb, None, 1, flip, self.dilation)
        return F.conv_transpose2d(r, wb, None, self.stride, pad, out_pad, self.groups,
                                  self.dilation)

    def back_onehot(self, v: torch.Tensor, wb: torch.Tensor, ks: torch.Tensor,
                    full: bool = False) -> torch.Tensor:
        """Wᵀ r for r that is zero except in channel ``ks[b]`` of sample b.

        ``v`` (B,1,h,w) holds that channel. One grouped convolution does all B samples,
        each with a single input channel: 1/C_out of the work of :meth:`back`.
        """
        n = v.shape[0]
        c_in = self.in_shape[1]
        x = v.reshape(1, n, *v.shape[-2:])
        flip, pad, out_pad = self._pads(full)
        if self.as_conv:
            w = wb[:, ks].transpose(0, 1).reshape(n * c_in, 1, *wb.shape[-2:])
            out = F.conv2d(x, w, None, 1, flip, self.dilation, n)
        else:
            out = F.conv_transpose2d(x, wb[ks], None, self.stride, pad, out_pad, n,
                                     self.dilation)
        return out.reshape(n, c_in, *out.shape[-2:])

    @property
    def onehot_ok(self) -> bool:
        return self.groups == 1


class WindowOp:
    """A convolution evaluated on a window of its input only (for boxed denominators).

    ``fwd(x)`` with ``x`` the clipped input window gives the outputs of the box; ``pads``
    put back the zero padding where the window leaves the image, so that rules which
    convolve ``ones_like(x)`` or bounds see the same zeros as on the whole map.
    """

    def __init__(self, op: ConvOp, pads: tuple[int, int, int, int]) -> None:
        self.op, self.pads = op, pads
        self.weight, self.bias = op.weight, op.bias

    def part(self, sign: int) -> torch.Tensor:
        return self.op.part(sign)

    def fwd(self, x: torch.Tensor, w: torch.Tensor,
            b: torch.Tensor | None = None) -> torch.Tensor:
        op = self.op
        return F.conv2d(F.pad(x, self.pads), w, b, op.stride, 0, op.dilation, op.groups)


class LinearMapOp(WeightParts):
    """A fully connected layer ``x Wᵀ + b`` and its transpose."""

    onehot_ok = False

    def __init__(self, params: dict, cache: dict | None = None) -> None:
        self.weight, self.bias = params["weight"], params["bias"]
        self.cache = cache

    def fwd(self, x: torch.Tensor, w: torch.Tensor,
            b: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, w, b)

    def back_weight(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def back(self, r: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
        return r @ wb
