"""The relevance sweep: from a start relevance down to the pixels, node by node.

Relevance flows back through the node objects of a :class:`~.state.ForwardState` in
reverse forward order; each node's :meth:`~.nodes.NodeKind.backward` gives its inputs'
relevance. A batch of concepts (classes, pixels, masks, feature channels) is the batch
dimension: per layer and rule term one transposed convolution for the whole batch,
chunked to fit in memory (:func:`auto_batch`, :func:`chunks`).

The sweep is restricted to where relevance can be non-zero. From the bounding box of the
start relevance, :func:`support_boxes` grows a box per node by each node's
:meth:`~.nodes.NodeKind.input_box` (a convolution's halo, a pool's window, an unpool's
pooled cells); a layer whose box is smaller than its map runs its transposed convolution
on the box only, and computes its denominators on the box only (or on the whole map,
cached, once the box covers :data:`FULL_SHARE` of it). The numbers are those of the
whole-map sweep; :func:`sweep_options` switches the restriction off (``boxed=False``) or
moves the share, which is how the tests compare both.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import SegscopeError
from .boxes import Box, union
from .nodes import Step
from .sparse import Relevance, dense, support, total, values
from .state import ForwardState

#: Memory for one chunk of the relevance sweep when nothing else is known (bytes).
DEFAULT_BUDGET = 2 * 1024**3

#: A layer's denominators are computed on its whole map (and cached for every later call)
#: once the box the sweep needs covers this share of the map; below it, on the box only.
FULL_SHARE = 0.5


@dataclass(frozen=True)
class SweepOptions:
    """How the sweep runs (see :func:`sweep_options`)."""

    boxed: bool = True
    full_share: float = FULL_SHARE


_OPTIONS: contextvars.ContextVar[SweepOptions] = contextvars.ContextVar(
    "segscope_sweep_options", default=SweepOptions())  # noqa: B039 - frozen, immutable


@contextlib.contextmanager
def sweep_options(boxed: bool | None = None,
                  full_share: float | None = None) -> Iterator[SweepOptions]:
    """Change how the relevance sweeps inside the ``with`` block run.

    Parameters
    ----------
    boxed
        ``False``: every layer on its whole map (the plain, unrestricted sweep); the
        numbers are the same up to float rounding, only slower.
    full_share
        Denominators are computed on the whole map once the box covers this share of it
        (default :data:`FULL_SHARE`); above 1, always on the box.

    Example
    -------
    >>> with sweep_options(boxed=False):          # doctest: +SKIP
    ...     dense = lrp(model, image, concept)
    """
    now = _OPTIONS.get()
    new = replace(now, **{k: v for k, v in (("boxed", boxed), ("full_share", full_share))
                          if v is not None})
    if not new.full_share > 0:
        raise SegscopeError(f"full_share must be positive, got {new.full_share}")
    token = _OPTIONS.set(new)
    try:
        yield new
    finally:
        _OPTIONS.reset(token)


def support_boxes(state: ForwardState, start: dict[int, Any]) -> dict[int, Box | None]:
    """Where relevance can be non-zero: a box per node output (None: anywhere).

    From the support of the start relevance, each node maps the box of its output to
    boxes of its inputs (:meth:`~.nodes.NodeKind.input_box`); kinds without that map
    (additions, concatenations, linear layers) make their inputs "anywhere".
    """
    kinds = state.kinds
    boxes: dict[int, Box | None] = {i: support(r) for i, r in start.items()}
    for i in range(max(start), -1, -1):
        if i not in boxes:
            continue
        box, kind = boxes[i], kinds[i]
        for j in kind.inputs:
            inner: Box | None = None
            if box is not None and len(state.shapes[j]) == 4:
                inner = kind.input_box(state, box, j)
            boxes[j] = inner if j not in boxes else union(boxes[j], inner)
    return boxes


@dataclass
class SweepResult:
    """What reached the pixels, per sample of the batch."""

    input: torch.Tensor | None  # (B,3,H,W)
    absorbed: dict[str, torch.Tensor]  # name -> (B,)
    dropped: torch.Tensor  # (B,)


def sweep(state: ForwardState, start: dict[int, Relevance],
          keep: dict[int, Callable[[Relevance], None]] | None = None,
          absorbed: bool = True, work: dict | None = None,
          release: bool = False) -> SweepResult:
    """Propagate relevance from ``start`` {node: (B,...) relevance} down to the input.

    ``keep`` {node: callback(R)} receives the relevance at each kept node's output (a
    tensor, :class:`~.sparse.OneHot` or :class:`~.sparse.Boxed`; it must not modify it;
    a callback with ``holds = False`` keeps no reference to it, so that the next step
    may overwrite it).
    ``work`` is a dict of scratch buffers that the chunks of one call share.
    ``release``: the state is explained once; each node drops what its step needed as
    soon as the sweep has passed it (:meth:`~.nodes.NodeKind.release`), so the memory of
    the layers already swept serves the next ones, and the denominators are computed on
    the box only unless it is the whole map (nothing would reuse them there).
    """
    if state.released:
        raise SegscopeError("this forward state was already explained with release=True "
                            "(its forward values are gone); make a new one")
    state.released = release
    options = _OPTIONS.get()
    kinds = state.kinds
    keep = keep or {}
    acc: dict[int, Any] = dict(start)
    lost: dict[str, torch.Tensor] = {}
    batch = values(next(iter(start.values()))).shape[0]
    dropped = torch.zeros(batch, device=state.device, dtype=state.image.dtype)
    result = None
    boxes = support_boxes(state, start) if options.boxed else {}
    # a state explained once keeps no denominators for later calls: on the box only,
    # unless the box is the whole map (a window of it would only cost a copy)
    full_share = 1.0 if release else options.full_share
    # nodes whose relevance tensor the sweep made itself, so that it may overwrite it
    # (the start belongs to the caller, a kept tensor to the keep callback)
    fresh: set[int] = set()
    for i in range(max(start), -1, -1):
        if i not in acc:
            continue
        r = acc.pop(i)
        if i in keep:
            keep[i](r)
            if torch.is_tensor(r) and getattr(keep[i], "holds", True):
                fresh.discard(i)
        kind = kinds[i]
        if kind.is_input:
            result = dense(r)
            continue
        out = kind.dropped(state, r)
        if out is not None:
            dropped += out
        before = total(r) if absorbed and kind.absorbs else None
        step = Step(boxes, i in fresh, work, full_share, state.stats)
        back = kind.backward(state, r, step)
        if release:
            kind.release()
        if before is not None:
            lost[kind.name] = before - sum(total(rj) for _, rj in back)
        for j, rj in back:
            if j in acc:
                acc[j] = dense(acc[j]) + dense(rj)
                fresh.add(j)
            else:
                acc[j] = rj
                if kind.fresh or i in fresh:
                    fresh.add(j)
    return SweepResult(result, lost, dropped)


def auto_batch(state: ForwardState, first_node: int, n: int, batch_size: int | None) -> int:
    """Samples per chunk: ``batch_size``, or as many as fit in :data:`DEFAULT_BUDGET`
    (half the free memory on CUDA)."""
    if batch_size is not None:
        if int(batch_size) < 1:
            raise SegscopeError(f"batch_size must be at least 1, got {batch_size}")
        return int(batch_size)
    biggest = max(math.prod(s[1:]) for s in state.shapes[: first_node + 1])
    per_sample = 5 * biggest * state.image.element_size()
    budget = DEFAULT_BUDGET
    if state.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(state.device)
        budget = max(budget // 4, free // 2)
    return max(1, min(n, budget // max(per_sample, 1)))


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` bounds of the chunks of ``n`` samples, ``size`` each."""
    for start in range(0, n, size):
        yield start, min(n, start + size)
