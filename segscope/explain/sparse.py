"""Relevance in the forms the sweep passes between nodes, and its scratch memory.

A relevance batch (B,...) is a plain tensor, a :class:`OneHot` (one channel per sample:
feature separation) or a :class:`Boxed` (zero outside a box: the restricted sweep). Maps
are kept in channels-last layout (:data:`LAYOUT`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .boxes import Box, crop

#: Convolutions run in channels-last layout: the CPU backend (oneDNN) is ~1.6x faster on it.
LAYOUT = torch.channels_last


@dataclass
class OneHot:
    """Relevance (B,C,h,w) that is zero except in channel ``channels[b]`` of sample b."""

    values: torch.Tensor  # (B,1,h,w)
    channels: torch.Tensor  # (B,) long
    num_channels: int

    def dense(self) -> torch.Tensor:
        b, _, h, w = self.values.shape
        out = zeros((b, self.num_channels, h, w), self.values)
        index = self.channels.view(b, 1, 1, 1).expand(b, 1, h, w)
        return out.scatter_(1, index, self.values)

    def total(self) -> torch.Tensor:
        return self.values.flatten(1).sum(1)

    def channel_totals(self) -> torch.Tensor:
        sums = map_totals(self.values)  # (B,1)
        out = sums.new_zeros(sums.shape[0], self.num_channels)
        return out.scatter_(1, self.channels.view(-1, 1), sums)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> OneHot:
        return OneHot(fn(self.values), self.channels, self.num_channels)


@dataclass
class Boxed:
    """Relevance of full ``shape`` (B,C,H,W) that is zero outside ``box``; ``values`` is
    the box. What the restricted sweep passes between layers: no full-size zero maps."""

    values: torch.Tensor  # (B,C,box rows,box cols)
    box: Box
    shape: tuple[int, ...]

    def dense(self) -> torch.Tensor:
        out = zeros(self.shape, self.values)
        crop(out, self.box).copy_(self.values)
        return out

    def total(self) -> torch.Tensor:
        return self.values.sum((1, 2, 3))

    def channel_totals(self) -> torch.Tensor:
        return map_totals(self.values)


Relevance = torch.Tensor | OneHot | Boxed


def values(r: Any) -> torch.Tensor:
    """The tensor that holds ``r``'s numbers (the box, the one channel, or ``r``)."""
    return r.values if isinstance(r, OneHot | Boxed) else r


def dense(r: Relevance) -> torch.Tensor:
    return r.dense() if isinstance(r, OneHot | Boxed) else r


def total(r: Relevance) -> torch.Tensor:
    """(B,) sum of each sample's relevance."""
    if isinstance(r, OneHot | Boxed):
        return r.total()
    # summed over the non-batch dims in place: flatten(1) would copy a channels-last map
    return r.sum(tuple(range(1, r.dim())))


def channel_totals(r: Relevance) -> torch.Tensor:
    """(B,C) float64 sum of each channel's relevance (the (B,C) values of a vector)."""
    if isinstance(r, OneHot | Boxed):
        return r.channel_totals()
    return map_totals(r)


#: Neighbouring values of a map row that :func:`map_totals` adds in the map's dtype.
GROUP = 8


def map_totals(t: torch.Tensor) -> torch.Tensor:
    """(B,C) float64 sums of a (B,C,h,w) map, without a float64 copy of the map.

    Groups of :data:`GROUP` neighbouring values of a row are added in float32, the group
    sums in float64: a float64 reduction of the whole map runs ~10x slower on the CPU
    (the cast is not vectorised) and a ``.double()`` copy doubles its memory. The error
    is that of storing the map in float32 (a few ulp of the group's absolute sum).
    """
    if t.dim() != 4:
        return t.double() if t.dim() <= 2 else t.double().sum(tuple(range(2, t.dim())))
    # half-precision maps (a bfloat16 sweep) are added in float32 within a group
    acc = None if t.dtype in (torch.float32, torch.float64) else torch.float32
    # (B,h,w,C): for a channels-last map the channels are the contiguous dim, so every
    # sum below runs along memory
    v = t.permute(0, 2, 3, 1)
    w = v.shape[2]
    q = w // GROUP
    out = v[:, :, :q * GROUP].unflatten(2, (q, GROUP)).sum(3, dtype=acc).double().sum((1, 2))
    if w % GROUP:
        out += v[:, :, q * GROUP:].sum(2, dtype=acc).double().sum(1)
    return out


def support(r: Any) -> Box | None:
    """Bounding box of the non-zero relevance of a (B,C,h,w) batch; None if it is all zero."""
    if isinstance(r, Boxed):
        return r.box
    v = values(r)
    if v.dim() != 4:
        return None
    nz = v.ne(0).flatten(0, 1).any(0)
    rows, cols = nz.any(1).nonzero(), nz.any(0).nonzero()
    if rows.numel() == 0:
        return None
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def empty(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` in the sweep's layout (channels-last for maps)."""
    fmt = LAYOUT if len(shape) == 4 else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=fmt)


def zeros(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Zeros of ``shape`` in the sweep's layout (channels-last for maps)."""
    return empty(shape, like).zero_()


def flat(t: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) -> (B,h*w,C): a view of a channels-last map (pool indices live so)."""
    return t.flatten(-2).transpose(1, 2)


def buffer(work: dict | None, key: Any, shape: Sequence[int],
           like: torch.Tensor) -> torch.Tensor:
    """A scratch map of ``shape`` (contents undefined), reused by the next chunk.

    Large tensors are fresh memory from the OS each time (page faults on first touch:
    ~0.3 s per GB here), so the chunks of one call share the buffers of the steps that
    can write into a given tensor. A buffer is only valid until the same step of the
    next chunk; the sweep consumes it before that.
    """
    if work is None:
        return empty(shape, like).detach()
    buf = work.get(key)
    if buf is None or tuple(buf.shape[1:]) != tuple(shape[1:]) or buf.shape[0] < shape[0] \
            or buf.dtype != like.dtype:
        buf = work[key] = empty(shape, like)
    return buf[: shape[0]]
