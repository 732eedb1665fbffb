"""Layer-wise Relevance Propagation as an explicit, batched sweep (SPEC §3, thesis §6, §8).

How it works:

1. The model becomes a list of nodes (:mod:`segscope.explain.graph`), BatchNorm folded
   into the convolutions.
2. One forward pass per image records the activations and pool indices
   (:class:`ForwardState`). What does not depend on the relevance — the clamped weights,
   the reciprocal denominators 1/z_j (0/0 = 0) — is computed on first use and cached in
   the state, so that every later call on the image (another concept, feature
   separation, :func:`propagate`) reuses it.
3. Relevance then flows back in one sweep in which a batch of concepts (classes, pixels,
   masks, feature channels) is the batch dimension: per layer and rule term one
   transposed convolution for the whole batch, chunked to fit in memory.

The sweep is restricted to where relevance can be non-zero. From the bounding box of the
start relevance, :func:`_boxes` grows a box per layer by each convolution's halo and maps
it through pools and unpools by their stride; a layer whose box is smaller than its map
runs its transposed convolution on the box only, and computes its denominators on the box
only (or on the whole map, cached, once the box covers :data:`FULL_SHARE` of it). A
single-pixel concept thus touches a few pixels of the decoder instead of every map; the
numbers are those of the whole-map sweep (tests/test_lrp.py checks it). Maps are kept in
channels-last layout, on which the CPU convolutions run ~1.6x faster.

Max-pool sends relevance to the input that won the max (scatter at the stored indices),
max-unpool gathers it back from the scattered position, ReLU passes it through,
concatenation splits it by channel and addition splits it in proportion to the two
summands (z_a / (z_a + z_b), no bias). At the pixels the three colour channels are
summed (eq 8.1).

SegNet pads its input to multiples of 32 with zeros; relevance that reaches padded pixels
is dropped and reported as :attr:`Explanation.dropped` (it is exactly 0 under the rules
that multiply by the input, such as α-β, ε, γ and z⁺, because padded inputs are 0; z^B,
flat and w² can send some there).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import unwrap
from ..errors import SegscopeError
from .concepts import Concept
from .graph import Graph, Node, build_graph
from .rules import Rule, recip, resolve_rules

#: Memory for one chunk of the relevance sweep when nothing else is known (bytes).
DEFAULT_BUDGET = 2 * 1024**3

#: A layer's denominators are computed on its whole map (and cached for every later call)
#: once the box the sweep needs covers this share of the map; below it, on the box only.
FULL_SHARE = 0.5

#: Convolutions run in channels-last layout: the CPU backend (oneDNN) is ~1.6x faster on it.
LAYOUT = torch.channels_last

Box = tuple[int, int, int, int]  # rows y0:y1, columns x0:x1 (half-open) of a 2-d map


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple | list) else (int(v), int(v))


def _window(box: Box, kernel: Any, stride: Any, padding: Any, dilation: Any) -> Box:
    """The input rows/columns (unclipped) that the outputs in ``box`` read."""
    k, s, p, d = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    out: list[int] = []
    for a in range(2):
        lo, hi = box[2 * a], box[2 * a + 1]
        out += [lo * s[a] - p[a], (hi - 1) * s[a] - p[a] + d[a] * (k[a] - 1) + 1]
    return tuple(out)  # type: ignore[return-value]


def _clip(box: Box, hw: Sequence[int]) -> Box:
    return (max(box[0], 0), min(box[1], hw[0]), max(box[2], 0), min(box[3], hw[1]))


def _area(box: Box) -> int:
    return max(box[1] - box[0], 0) * max(box[3] - box[2], 0)


def _union(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return None
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _inside(a: Box, b: Box) -> bool:
    return b[0] <= a[0] and a[1] <= b[1] and b[2] <= a[2] and a[3] <= b[3]


def _crop(t: torch.Tensor, box: Box, origin: Box | None = None) -> torch.Tensor:
    """``t[..., box]``, ``t`` holding the map from ``origin``'s corner (None: from 0,0)."""
    oy, ox = (0, 0) if origin is None else (origin[0], origin[2])
    return t[..., box[0] - oy:box[1] - oy, box[2] - ox:box[3] - ox]


def _support(r: Any) -> Box | None:
    """Bounding box of the non-zero relevance of a (B,C,h,w) batch; None if it is all zero."""
    if isinstance(r, Boxed):
        return r.box
    v = _values(r)
    if v.dim() != 4:
        return None
    nz = v.ne(0).flatten(0, 1).any(0)
    rows, cols = nz.any(1).nonzero(), nz.any(0).nonzero()
    if rows.numel() == 0:
        return None
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


# -- the two kinds of weighted layers ----------------------------------------------------
class ConvOp:
    """A 2-d convolution and its transpose; ``fwd`` also serves the rules' denominators."""

    def __init__(self, node: Node, in_shape: torch.Size, out_shape: torch.Size) -> None:
        p = node.params
        self.weight, self.bias = p["weight"], p["bias"]
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
        """``w`` in the form :meth:`back` wants it (computed once per term)."""
        return w.transpose(0, 1).flip(-1, -2).contiguous() if self.as_conv else w

    def window(self, box: Box) -> Box:
        """The input rows/columns (unclipped) that the outputs in ``box`` read."""
        return _window(box, self.weight.shape[-2:], self.stride, self.padding, self.dilation)

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


class _WindowOp:
    """A convolution evaluated on a window of its input only (for boxed denominators).

    ``fwd(x)`` with ``x`` the clipped input window gives the outputs of the box; ``pads``
    put back the zero padding where the window leaves the image, so that rules which
    convolve ``ones_like(x)`` or bounds see the same zeros as on the whole map.
    """

    def __init__(self, op: ConvOp, pads: tuple[int, int, int, int]) -> None:
        self.op, self.pads = op, pads
        self.weight, self.bias = op.weight, op.bias

    def fwd(self, x: torch.Tensor, w: torch.Tensor,
            b: torch.Tensor | None = None) -> torch.Tensor:
        op = self.op
        return F.conv2d(F.pad(x, self.pads), w, b, op.stride, 0, op.dilation, op.groups)


class LinearMapOp:
    """A fully connected layer ``x Wᵀ + b`` and its transpose."""

    onehot_ok = False

    def __init__(self, node: Node) -> None:
        self.weight, self.bias = node.params["weight"], node.params["bias"]

    def fwd(self, x: torch.Tensor, w: torch.Tensor,
            b: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, w, b)

    def back_weight(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def back(self, r: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
        return r @ wb


# -- relevance that lives in one channel per sample ---------------------------------------
@dataclass
class OneHot:
    """Relevance (B,C,h,w) that is zero except in channel ``channels[b]`` of sample b."""

    values: torch.Tensor  # (B,1,h,w)
    channels: torch.Tensor  # (B,) long
    num_channels: int

    def dense(self) -> torch.Tensor:
        b, _, h, w = self.values.shape
        out = _zeros((b, self.num_channels, h, w), self.values)
        index = self.channels.view(b, 1, 1, 1).expand(b, 1, h, w)
        return out.scatter_(1, index, self.values)

    def total(self) -> torch.Tensor:
        return self.values.flatten(1).sum(1)

    def map(self, fn) -> OneHot:
        return OneHot(fn(self.values), self.channels, self.num_channels)


@dataclass
class Boxed:
    """Relevance of full ``shape`` (B,C,H,W) that is zero outside ``box``; ``values`` is
    the box. What the restricted sweep passes between layers: no full-size zero maps."""

    values: torch.Tensor  # (B,C,box rows,box cols)
    box: Box
    shape: tuple[int, ...]

    def dense(self) -> torch.Tensor:
        out = _zeros(self.shape, self.values)
        _crop(out, self.box).copy_(self.values)
        return out

    def total(self) -> torch.Tensor:
        return self.values.sum((1, 2, 3))


def _values(r: Any) -> torch.Tensor:
    return r.values if isinstance(r, OneHot | Boxed) else r


def _dense(r: torch.Tensor | OneHot | Boxed) -> torch.Tensor:
    return r.dense() if isinstance(r, OneHot | Boxed) else r


def _total(r: torch.Tensor | OneHot | Boxed) -> torch.Tensor:
    if isinstance(r, Boxed):
        return r.total()
    # summed over the non-batch dims in place: flatten(1) would copy a channels-last map
    return r.total() if isinstance(r, OneHot) else r.sum(tuple(range(1, r.dim())))


# -- forward state -----------------------------------------------------------------------
@dataclass
class _Back:
    """A rule term ready for the sweep: ``a ⊙ Wᵀ(R ⊙ s)`` with Wᵀ's weight prepared."""

    a: torch.Tensor | None
    s: torch.Tensor | None
    wb: torch.Tensor


@dataclass
class _Terms:
    """A weighted layer's backward terms on the output ``box`` (None: the whole map).

    ``s`` is held on ``box``, ``a`` on ``in_box``, the box's input window clipped to the
    map.
    """

    box: Box | None
    in_box: Box | None
    backs: list[_Back]
    casts: dict[torch.dtype, list[_Back]] = field(default_factory=dict)

    def backs_as(self, dtype: torch.dtype) -> list[_Back]:
        """The terms in ``dtype`` (the relevance's), converted once and cached."""
        if dtype == self.backs[0].wb.dtype:
            return self.backs
        if dtype not in self.casts:
            def cast(t: torch.Tensor | None) -> torch.Tensor | None:
                return None if t is None else t.to(dtype)
            self.casts[dtype] = [_Back(cast(b.a), cast(b.s), cast(b.wb)) for b in self.backs]
        return self.casts[dtype]


@dataclass
class ForwardState:
    """Everything the relevance sweep needs from one image's forward pass.

    Computed once by :func:`forward_state` and reused by :func:`lrp`,
    :func:`separate_features` and :func:`propagate` for the same image.
    """

    graph: Graph
    image: torch.Tensor  # (3,H,W) on the model's device
    scores: torch.Tensor  # (K,H,W) or (K,)
    shapes: list[torch.Size]
    rules: dict[int, Rule]
    rule_name: str
    ops: dict[int, Any] = field(default_factory=dict)
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # weighted node -> input
    terms: dict[int, _Terms] = field(default_factory=dict)  # cached, see _layer_terms
    indices: dict[int, torch.Tensor] = field(default_factory=dict)  # pool -> (1,h*w,C)
    add_parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    nonneg: list[bool] = field(default_factory=list)  # node output known to be >= 0
    model_ref: Any = None
    rule_spec: Any = "alpha1beta0"

    @property
    def device(self) -> torch.device:
        return self.image.device

    def layer_shape(self, name: str) -> tuple[int, ...]:
        """Shape of layer ``name``'s activation without the batch dimension."""
        return tuple(self.shapes[self.graph.layer_node(name)][1:])


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, (p.dtype if p.dtype.is_floating_point else torch.float32)
    return torch.device("cpu"), torch.float32


def check_image(image: Any) -> torch.Tensor:
    """The image as a float tensor (3,H,W); a one-line SegscopeError otherwise."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not torch.is_tensor(image):
        raise SegscopeError(f"the image must be a (3,H,W) float tensor, got {type(image).__name__}")
    shape = tuple(image.shape)
    if image.dim() != 3 or shape[0] != 3:
        raise SegscopeError(f"the image must have shape (3,H,W), got {shape}")
    if not image.dtype.is_floating_point:
        raise SegscopeError(
            f"the image must be float in [0,1] (3,H,W), got {image.dtype} of shape {shape}"
        )
    if shape[1] < 1 or shape[2] < 1:
        raise SegscopeError(f"the image is empty: shape {shape}")
    return image


def forward_state(
    model: nn.Module, image: torch.Tensor, rule: Any = "alpha1beta0",
    graph: Graph | None = None,
) -> ForwardState:
    """Run ``model`` on ``image`` (3,H,W) and prepare every layer's backward step."""
    model = unwrap(model)
    image = check_image(image)
    device, dtype = _model_device_dtype(model)
    graph = graph if graph is not None else build_graph(model)
    nodes = graph.nodes
    linear = {i: (n.name, n.kind) for i, n in enumerate(nodes) if n.is_linear}
    rules, rule_name = resolve_rules(rule, linear, graph.layers, graph.first)
    x0 = image.to(device=device, dtype=dtype)
    state = ForwardState(graph, x0, x0, [], rules, rule_name, rule_spec=rule)
    try:
        state.model_ref = weakref.ref(model)
    except TypeError:  # pragma: no cover
        state.model_ref = None
    remaining = [0] * len(nodes)
    for n in nodes:
        for j in n.inputs:
            remaining[j] += 1
    outs: list[Any] = [None] * len(nodes)
    with torch.no_grad():
        for i, node in enumerate(nodes):
            ins = [outs[j] for j in node.inputs]
            outs[i] = _forward_node(state, i, node, ins, outs, x0)
            state.nonneg.append(_nonneg(state, node, x0))
            state.shapes.append(outs[i].shape)
            for j in node.inputs:
                remaining[j] -= 1
                if remaining[j] == 0 and j != graph.output:
                    outs[j] = None  # the terms keep what the sweep needs
    state.scores = outs[graph.output][0]
    return state


def _nonneg(state: ForwardState, node: Node, x0: torch.Tensor) -> bool:
    """Whether a node's output is >= 0 by construction (so the rules skip the x⁺/x⁻ split)."""
    if node.kind == "input":
        return bool((x0 >= 0).all())
    if node.kind == "relu":
        return True
    if node.kind in ("conv", "linear"):
        return False
    return all(state.nonneg[j] for j in node.inputs)


def _forward_node(state: ForwardState, i: int, node: Node, ins: list, outs: list,
                  x0: torch.Tensor) -> torch.Tensor:
    p, kind = node.params, node.kind
    if kind == "input":
        return x0.unsqueeze(0).contiguous(memory_format=LAYOUT)
    x = ins[0] if ins else None
    if kind in ("conv", "linear"):
        if kind == "conv":
            if x.dim() != 4:
                raise SegscopeError(f"layer {node.name!r} expects (N,C,H,W) input, got "
                                    f"{tuple(x.shape)}")
            w, b = p["weight"], p["bias"]
            z = F.conv2d(x, w, b, p["stride"], p["padding"], p["dilation"], p["groups"])
            op = ConvOp(node, x.shape, z.shape)
        else:
            op = LinearMapOp(node)
            z = F.linear(x, op.weight, op.bias)
        state.ops[i] = op
        state.inputs[i] = x  # the denominators come later, on what the sweep needs
        return z
    if kind == "relu":
        return torch.relu(x)
    if kind == "maxpool":
        out, idx = F.max_pool2d(x, p["kernel_size"], p["stride"], p["padding"], p["dilation"],
                                p["ceil_mode"], return_indices=True)
        state.indices[i] = _flat(idx.contiguous(memory_format=LAYOUT))
        return out
    if kind == "maxunpool":
        pool = p["pool"]
        idx = state.indices[pool]
        if (idx.shape[0], idx.shape[2], idx.shape[1]) != (*x.shape[:2], x.shape[-2:].numel()):
            raise SegscopeError(
                f"{node.name!r} gets a {tuple(x.shape)} input but its pool "
                f"{state.graph.nodes[pool].name!r} produced {tuple(state.shapes[pool])}"
            )
        target = state.shapes[state.graph.nodes[pool].inputs[0]]
        out = _zeros(target, x)
        _flat(out).scatter_(1, idx, _flat(x))
        return out
    if kind == "cat":
        return torch.cat(ins, dim=1)
    if kind == "add":
        a, b = ins
        state.add_parts[i] = (a, b)
        return a + b
    if kind == "flatten":
        return torch.flatten(x, p["start"], p["end"])
    if kind == "pad":
        m = p["multiple"]
        h, w = x.shape[-2:]
        return F.pad(x, (0, -w % m, 0, -h % m)).contiguous(memory_format=LAYOUT)
    if kind == "crop":
        h, w = state.shapes[p["ref"]][-2:]
        return x[..., :h, :w]
    raise SegscopeError(f"internal: unknown node kind {kind!r}")  # pragma: no cover


# -- denominators on demand --------------------------------------------------------------
def _layer_terms(state: ForwardState, i: int, box: Box | None) -> _Terms:
    """The backward terms of weighted node ``i`` covering output ``box`` (None: all).

    Computed once and cached in the state: on the whole map when ``box`` covers at least
    :data:`FULL_SHARE` of it, else on the box (grown to the union with an earlier box).
    """
    op = state.ops[i]
    cached = state.terms.get(i)
    whole = FULL_SHARE * math.prod(state.shapes[i][-2:])
    if not isinstance(op, ConvOp) or (box is not None and _area(box) >= whole):
        box = None
    if cached is not None:
        if cached.box is None or (box is not None and _inside(box, cached.box)):
            return cached
        box = _union(box, cached.box)  # recomputed on both boxes, the old one dropped
        if box is not None and _area(box) >= whole:
            box = None
    x = state.inputs[i]
    rule = state.rules[i]
    nonneg = state.nonneg[state.graph.nodes[i].inputs[0]]
    if box is None:
        terms, in_box = rule.terms(x, op, nonneg), None
    else:
        win = op.window(box)
        in_box = _clip(win, x.shape[-2:])
        pads = (in_box[2] - win[2], win[3] - in_box[3], in_box[0] - win[0], win[1] - in_box[1])
        terms = rule.terms(_crop(x, in_box), _WindowOp(op, pads), nonneg)
    entry = _Terms(box, in_box, [_Back(t.a, t.s, op.back_weight(t.w)) for t in terms])
    state.terms[i] = entry
    return entry


def _boxes(state: ForwardState, start: dict[int, Any]) -> dict[int, Box | None]:
    """Where relevance can be non-zero: a box per node output (None: anywhere).

    From the support of the start relevance, each step grows the box by what the node's
    inputs feed into it: a convolution's or pool's window, an unpool's pooled cells.
    Nodes other than conv, ReLU, pools, pad and crop make their inputs "anywhere".
    """
    nodes = state.graph.nodes
    boxes: dict[int, Box | None] = {i: _support(r) for i, r in start.items()}
    for i in range(max(start), -1, -1):
        if i not in boxes:
            continue
        box, node = boxes[i], nodes[i]
        for j in node.inputs:
            inner: Box | None = None
            if box is not None and len(state.shapes[j]) == 4:
                hw = state.shapes[j][-2:]
                if node.kind in ("relu", "crop", "pad"):
                    inner = _clip(box, hw)
                elif node.kind == "conv":
                    inner = _clip(state.ops[i].window(box), hw)
                elif node.kind == "maxpool":
                    p = node.params
                    inner = _clip(_window(box, p["kernel_size"], p["stride"], p["padding"],
                                          p["dilation"]), hw)
                elif node.kind == "maxunpool":
                    p = nodes[node.params["pool"]].params
                    k, st = _pair(p["kernel_size"]), _pair(p["stride"])
                    pd, dl = _pair(p["padding"]), _pair(p["dilation"])
                    cells = []
                    for a in range(2):
                        lo, hi = box[2 * a], box[2 * a + 1]
                        cells += [-((-(lo + pd[a] - dl[a] * (k[a] - 1))) // st[a]),
                                  (hi - 1 + pd[a]) // st[a] + 1]
                    inner = _clip(tuple(cells), hw)
            boxes[j] = inner if j not in boxes else _union(boxes[j], inner)
    return boxes


# -- the sweep ---------------------------------------------------------------------------
@dataclass
class _SweepResult:
    input: torch.Tensor | None  # (B,3,H,W)
    absorbed: dict[str, torch.Tensor]  # name -> (B,)
    dropped: torch.Tensor  # (B,)


def _sweep(state: ForwardState, start: dict[int, Any], keep: dict[int, Any] | None = None,
           absorbed: bool = True, work: dict | None = None) -> _SweepResult:
    """Propagate relevance from ``start`` {node: (B,...) relevance} down to the input.

    ``keep`` {node: callback(R)} receives the dense relevance at each kept node's output.
    ``work`` is a dict of scratch buffers that the chunks of one call share (see
    :func:`_buffer`).
    """
    nodes = state.graph.nodes
    keep = keep or {}
    acc: dict[int, Any] = dict(start)
    lost: dict[str, torch.Tensor] = {}
    b = next(iter(start.values()))
    batch = _values(b).shape[0]
    dev = state.device
    dropped = torch.zeros(batch, device=dev, dtype=state.image.dtype)
    result = None
    boxes = _boxes(state, start)
    # nodes whose relevance tensor the sweep made itself, so that it may overwrite it
    # (the start belongs to the caller, a kept tensor to the keep callback)
    fresh: set[int] = set()
    for i in range(max(start), -1, -1):
        if i not in acc:
            continue
        r = acc.pop(i)
        if i in keep:
            keep[i](_dense(r))
            if torch.is_tensor(r):
                fresh.discard(i)
        node = nodes[i]
        if node.kind == "input":
            result = _dense(r)
            continue
        total = None
        if node.kind == "pad":
            # summed over the padding itself: exactly 0 when nothing reached it
            h, w = state.shapes[node.inputs[0]][-2:]
            rd = _dense(r)
            dropped += _total(rd[..., h:, :]) + _total(rd[..., :h, w:])
        elif absorbed and node.kind in ("conv", "linear", "add"):
            total = _total(r)
        back = _backward_node(state, i, node, r, boxes, i in fresh, work)
        if total is not None:
            lost[node.name] = total - sum(_total(rj) for _, rj in back)
        makes_new = node.kind in ("conv", "linear", "maxpool", "maxunpool", "add")
        for j, rj in back:
            if j in acc:
                acc[j] = _dense(acc[j]) + _dense(rj)
                fresh.add(j)
            else:
                acc[j] = rj
                if makes_new or i in fresh:
                    fresh.add(j)
    return _SweepResult(result, lost, dropped)


def _backward_node(state: ForwardState, i: int, node: Node, r: Any,
                   boxes: dict[int, Box | None] | None = None,
                   owned: bool = False, work: dict | None = None) -> list[tuple[int, Any]]:
    """Relevance of node ``i``'s inputs from ``r`` at its output.

    ``boxes`` (from :func:`_boxes`) says where relevance can be non-zero; ``owned``: the
    sweep made ``r`` and may overwrite it.
    """
    kind = node.kind
    src = node.inputs
    boxes = boxes or {}
    box = boxes.get(i)
    if kind == "relu":
        return [(src[0], r)]
    if kind in ("conv", "linear"):
        op = state.ops[i]
        if isinstance(r, OneHot) and not op.onehot_ok:
            r = r.dense()
        if box is not None and kind == "conv" and _area(box) < math.prod(state.shapes[i][-2:]):
            return [(src[0], _conv_back_box(state, i, op, r, box, owned, work))]
        r = _dense(r) if isinstance(r, Boxed) else r
        backs = _layer_terms(state, i, None).backs_as(_values(r).dtype)
        out = None
        for t in backs:
            if isinstance(r, OneHot):
                v = r.values if t.s is None else r.values * t.s[0, r.channels].unsqueeze(1)
                part = op.back_onehot(v, t.wb, r.channels)
            else:
                if t.s is not None:
                    # one term: the relevance is not needed afterwards, scale it in place
                    v = r.mul_(t.s) if owned and len(backs) == 1 else r * t.s
                else:
                    v = r
                part = op.back(v, t.wb)
            if t.a is not None:
                part.mul_(t.a)  # part is a fresh conv output: no new allocation
            out = part if out is None else out.add_(part)
        return [(src[0], out)]
    if kind == "maxpool":
        idx = state.indices[i]
        in_shape = state.shapes[src[0]]
        in_box = boxes.get(src[0])
        if not isinstance(r, OneHot) and box is not None and in_box is not None \
                and _area(in_box) < in_shape[-2:].numel():
            return [(src[0], _pool_back_box(state, i, r, box, in_box, work))]
        r = _dense(r) if isinstance(r, Boxed) else r
        if isinstance(r, OneHot):
            v = r.values.flatten(-2)
            ix = idx[0, :, r.channels].t().unsqueeze(1).contiguous()
            out = v.new_zeros(v.shape[0], 1, in_shape[-2:].numel()).scatter_add_(-1, ix, v)
            return [(src[0], OneHot(out.view(-1, 1, *in_shape[-2:]), r.channels,
                                    r.num_channels))]
        out = _zeros((r.shape[0], *in_shape[1:]), r)
        _flat(out).scatter_add_(1, idx.expand(r.shape[0], -1, -1), _flat(r))
        return [(src[0], out)]
    if isinstance(r, Boxed):
        r = r.dense()
    if kind == "maxunpool":
        idx = state.indices[node.params["pool"]]
        in_shape = state.shapes[src[0]]
        if isinstance(r, OneHot):
            ix = idx[0, :, r.channels].t().unsqueeze(1).contiguous()
            out = r.values.flatten(-2).gather(-1, ix)
            return [(src[0], OneHot(out.view(-1, 1, *in_shape[-2:]), r.channels,
                                    r.num_channels))]
        out = _flat(r.contiguous(memory_format=LAYOUT)).gather(
            1, idx.expand(r.shape[0], -1, -1))  # (B,hw,C): channels-last
        return [(src[0], out.transpose(1, 2).view(-1, *in_shape[1:]))]
    if kind == "pad":
        h, w = state.shapes[src[0]][-2:]
        if isinstance(r, OneHot):
            return [(src[0], r.map(lambda v: v[..., :h, :w]))]
        return [(src[0], r[..., :h, :w])]
    if kind == "crop":
        ph, pw = state.shapes[src[0]][-2:]
        h, w = state.shapes[i][-2:]
        return [(src[0], r.map(lambda v: F.pad(v, (0, pw - w, 0, ph - h)))
                 if isinstance(r, OneHot) else F.pad(r, (0, pw - w, 0, ph - h)))]
    r = _dense(r)
    if kind == "cat":
        sizes = [state.shapes[j][1] for j in src]
        return list(zip(src, torch.split(r, sizes, dim=1), strict=True))
    if kind == "add":
        a, b = state.add_parts[i]
        share = r * recip(a + b)
        return [(src[0], share * a), (src[1], share * b)]
    if kind == "flatten":
        return [(src[0], r.reshape(r.shape[0], *state.shapes[src[0]][1:]))]
    raise SegscopeError(f"internal: no backward for node kind {kind!r}")  # pragma: no cover


def _conv_back_box(state: ForwardState, i: int, op: ConvOp, r: Any, box: Box,
                   owned: bool = False, work: dict | None = None) -> Boxed:
    """The conv backward step for relevance that is zero outside output ``box``.

    Runs the transposed convolution on the box only: the same numbers as the whole-map
    step, for the work of the box, returned as the input window's :class:`Boxed`.
    """
    entry = _layer_terms(state, i, box)
    win = op.window(box)
    in_hw = op.in_shape[-2:]
    in_box = _clip(win, in_hw)
    inner = (in_box[0] - win[0], in_box[1] - win[0], in_box[2] - win[2], in_box[3] - win[2])
    if isinstance(r, Boxed) and not _inside(box, r.box):
        r = r.dense()
    acc = None
    backs = entry.backs_as(_values(r).dtype)
    for t in backs:
        s = None if t.s is None else _crop(t.s, box, entry.box)
        if isinstance(r, OneHot):
            v = _crop(r.values, box)
            if s is not None:
                v = v * s[0, r.channels].unsqueeze(1)
            part = op.back_onehot(v, t.wb, r.channels, full=True)
        else:
            v = _crop(r.values, box, r.box) if isinstance(r, Boxed) else _crop(r, box)
            if s is not None:
                v = v.mul_(s) if owned and len(backs) == 1 else v * s
            part = op.back(v, t.wb, full=True)
        part = _crop(part, inner)
        a = None if t.a is None else _crop(t.a, in_box, entry.in_box)
        if acc is None and not part.is_contiguous(memory_format=LAYOUT):
            # the window was clipped at the border: write the crop out contiguously
            # (the next convolution would copy it anyway), multiplying on the way
            acc = _buffer(work, (i, "back"), part.shape, part)
            torch.mul(part, a, out=acc) if a is not None else acc.copy_(part)
        elif acc is None:
            acc = part if a is None else part.mul_(a)  # part is a fresh conv output
        else:
            acc.add_(part if a is None else part.mul_(a))
    return Boxed(acc, in_box, (_values(r).shape[0], op.in_shape[1], *in_hw))


def _pool_back_box(state: ForwardState, i: int, r: Any, box: Box, in_box: Box,
                   work: dict | None = None) -> Boxed:
    """Max-pool backward for relevance inside output ``box``, into the input's ``in_box``.

    The winners' flat indices are turned into positions inside ``in_box`` (which holds
    every window of ``box``), so the scatter writes a box-sized map only.
    """
    key = (i, "local", box, in_box)
    local = None if work is None else work.get(key)
    if local is None:
        idx = state.indices[i]  # (1, h*w, C) over the pool's input map
        h, w = state.shapes[i][-2:]
        width = state.shapes[state.graph.nodes[i].inputs[0]][-1]
        idx = _crop(idx.transpose(1, 2).view(1, -1, h, w), box)
        local = _flat((idx // width - in_box[0]) * (in_box[3] - in_box[2])
                      + (idx % width - in_box[2]))
        if work is not None:
            work[key] = local
    v = _crop(r.values, box, r.box) if isinstance(r, Boxed) and _inside(box, r.box) \
        else _crop(_dense(r), box)
    n, c = v.shape[:2]
    fv = _flat(v)
    out = _buffer(work, (i, "pool"), (n, c, in_box[1] - in_box[0], in_box[3] - in_box[2]),
                  v).zero_()
    p = state.graph.nodes[i].params
    span = [d * (k - 1) + 1 for k, d in zip(_pair(p["kernel_size"]), _pair(p["dilation"]),
                                             strict=True)]
    if all(sp <= st for sp, st in zip(span, _pair(p["stride"] or p["kernel_size"]),
                                      strict=True)):
        # windows that do not overlap have distinct winners: a plain scatter is exact
        # (and, unlike scatter_add_, does not round-trip bfloat16 through float32)
        _flat(out).scatter_(1, local.expand(n, -1, -1), fv)
    else:
        _flat(out).scatter_add_(1, local.expand(n, -1, -1), fv)
    return Boxed(out, in_box, (n, c, *state.shapes[state.graph.nodes[i].inputs[0]][-2:]))


def _buffer(work: dict | None, key: Any, shape: Sequence[int],
            like: torch.Tensor) -> torch.Tensor:
    """A scratch map of ``shape`` (contents undefined), reused by the next chunk.

    Large tensors are fresh memory from the OS each time (page faults on first touch:
    ~0.3 s per GB here), so the chunks of one call share the buffers of the steps that
    can write into a given tensor. A buffer is only valid until the same step of the
    next chunk; the sweep consumes it before that.
    """
    if work is None:
        return _zeros(shape, like).detach()
    buf = work.get(key)
    if buf is None or tuple(buf.shape[1:]) != tuple(shape[1:]) or buf.shape[0] < shape[0] \
            or buf.dtype != like.dtype:
        buf = work[key] = _zeros(shape, like)
    return buf[: shape[0]]


def _zeros(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Zeros of ``shape`` in the sweep's layout (channels-last for maps)."""
    fmt = LAYOUT if len(shape) == 4 else torch.contiguous_format
    out = torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=fmt)
    return out.zero_()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) -> (B,h*w,C): a view of a channels-last map (pool indices live so)."""
    return t.flatten(-2).transpose(1, 2)


def _auto_batch(state: ForwardState, first_node: int, n: int, batch_size: int | None) -> int:
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


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


# -- results -----------------------------------------------------------------------------
@dataclass(eq=False)
class Explanation:
    """LRP relevance of one concept on one image.

    Attributes
    ----------
    pixels
        (H,W) relevance of the pixels: the colour channels summed (eq 8.1).
    input
        (3,H,W) relevance of each colour channel.
    layers
        {layer name: (C,h,w)} relevance at the output of each kept layer.
    output_total
        Sum of the initial relevance.
    absorbed
        {layer name: relevance lost at that layer} — the bias shares (eq 6.13) and the
        0/0-guarded shares; ``input_total + Σ absorbed + dropped == output_total``.
    dropped
        Relevance that reached SegNet's zero padding (beyond the image) and was dropped.
    concept
        The :class:`Concept` explained; ``description`` says it in words.
    rule
        The rule(s) used, as text (``alpha1beta0`` or ``conv1_1=zbox, default=...``).
    initial
        (K,H,W) initial relevance on the output scores.
    """

    pixels: torch.Tensor
    input: torch.Tensor
    layers: dict[str, torch.Tensor]
    output_total: float
    absorbed: dict[str, float]
    dropped: float
    concept: Concept | None
    description: str
    rule: str
    initial: torch.Tensor
    state: ForwardState | None = field(default=None, repr=False)

    @property
    def input_total(self) -> float:
        """Total relevance that reached the pixels."""
        return float(self.input.double().sum())

    def layer_sum(self, name: str) -> torch.Tensor:
        """(h,w) map Σ_k R_(k,y,x) of a kept layer (eq 9.1)."""
        return self._kept(name).float().sum(0)

    def layer_totals(self, name: str) -> torch.Tensor:
        """(C,) relevance per feature map of a kept layer."""
        return self._kept(name).double().flatten(1).sum(1).float()

    def feature_values(self, name: str) -> torch.Tensor:
        """(C,) feature values fv_k = (Σ_xy R_k / Σ R) · C of a kept layer (eq 9.3)."""
        totals = self.layer_totals(name).double()
        whole = totals.sum()
        if whole == 0:
            return torch.zeros_like(totals).float()
        return (totals / whole * totals.numel()).float()

    def _kept(self, name: str) -> torch.Tensor:
        if name not in self.layers:
            kept = ", ".join(list(self.layers)[:4]) or "none"
            raise SegscopeError(f"layer {name!r} was not kept (kept: {kept}); pass keep=")
        return self.layers[name]

    def release(self) -> None:
        """Drop the cached forward state (the memory of every activation)."""
        self.state = None

    def __repr__(self) -> str:
        h, w = self.pixels.shape
        return (f"Explanation({self.description!r}, rule={self.rule!r}, {h}x{w}, "
                f"output_total={self.output_total:.4g}, input_total={self.input_total:.4g}, "
                f"kept={len(self.layers)} layers)")


@dataclass(eq=False)
class FeatureMaps:
    """Per-channel pixel relevance from :func:`separate_features` (§9.8).

    ``pixels[i]`` is channel ``channels[i]`` of ``layer`` alone, propagated to the
    pixels; ``totals[i]`` its relevance at the layer.
    """

    pixels: torch.Tensor  # (C,H,W)
    channels: list[int]
    layer: str
    totals: torch.Tensor  # (C,)

    def __repr__(self) -> str:
        return (f"FeatureMaps(layer={self.layer!r}, {len(self.channels)} channels, "
                f"{tuple(self.pixels.shape[-2:])})")


@dataclass(eq=False)
class Propagation:
    """Pixel relevance of any relevance tensor started at a layer (:func:`propagate`)."""

    pixels: torch.Tensor  # (B,H,W)
    input: torch.Tensor  # (B,3,H,W)
    absorbed: dict[str, torch.Tensor]
    dropped: torch.Tensor


# -- public API --------------------------------------------------------------------------
def _class_names(state: ForwardState) -> tuple[str, ...]:
    if state.graph.class_names:
        return state.graph.class_names
    return tuple(str(k) for k in range(state.scores.shape[0]))


def _keep_nodes(graph: Graph, keep: Any) -> list[str]:
    if keep is None:
        return []
    if isinstance(keep, str):
        if keep == "all":
            return list(graph.layers)
        keep = [keep]
    names = [str(k) for k in keep]
    for name in names:
        graph.layer_node(name)
    return list(dict.fromkeys(names))


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, keep_dir: Path | None, name: str):
    if keep_dir is None:
        return torch.empty(shape, dtype=dtype)
    np_dtype = {torch.float16: np.float16, torch.float32: np.float32,
                torch.float64: np.float64, torch.bfloat16: None}.get(dtype)
    if np_dtype is None:
        raise SegscopeError(f"keep_dir cannot store {dtype}; use float16 or float32")
    safe = name.replace(os.sep, "_")
    arr = np.lib.format.open_memmap(keep_dir / f"{safe}.npy", mode="w+", dtype=np_dtype,
                                    shape=shape)
    return torch.from_numpy(arr)


def lrp(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept | Sequence[Concept],
    rule: Any = "alpha1beta0",
    keep: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    dtype_keep: torch.dtype = torch.float32,
    keep_dir: str | os.PathLike | None = None,
    state: ForwardState | None = None,
) -> Explanation | list[Explanation]:
    """Explain ``concept`` on ``image`` with LRP (SPEC §3-§4).

    Parameters
    ----------
    model
        A :class:`~segscope.SegNet` or a model built from Conv2d, BatchNorm2d, ReLU,
        MaxPool2d, MaxUnpool2d, Linear, Flatten, ``torch.cat`` and ``+`` (traced with
        torch.fx), in eval mode.
    image
        Float tensor (3,H,W), pixels in [0,1].
    concept
        A :class:`Concept`, or a list of them: one forward pass and one batched sweep
        for all, one :class:`Explanation` each.
    rule
        A rule (``"alpha1beta0"``, ``"epsilon:0.01"``, a :mod:`~segscope.explain.rules`
        object) or a per-layer mapping such as ``{"conv1_1": "zbox",
        "default": "alpha1beta0"}`` (keys: layer names, ``first``, ``conv``, ``linear``,
        ``default``).
    keep
        Layers whose relevance to keep: ``None``, a list of names or ``"all"``.
    batch_size
        Concepts per sweep chunk; by default as many as fit in about 2 GiB.
    dtype_keep
        dtype of the kept layers (``torch.float16`` halves their memory).
    keep_dir
        Write each kept layer to ``keep_dir/<layer>.npy`` (memory-mapped) instead of RAM.
    state
        A :class:`ForwardState` of this image and rule to reuse (see :func:`forward_state`).

    Returns
    -------
    Explanation or list of Explanation
    """
    single = isinstance(concept, Concept)
    concepts = [concept] if single else list(concept)
    if not concepts:
        raise SegscopeError("no concept given to explain")
    for c in concepts:
        if not isinstance(c, Concept):
            raise SegscopeError(f"a concept must be a segscope Concept, got {type(c).__name__}")
    model = unwrap(model)
    if state is None:
        state = forward_state(model, image, rule)
    graph = state.graph
    names = _keep_nodes(graph, keep)
    class_names = _class_names(state)
    initial = torch.stack([c.initial_relevance(state.scores, class_names) for c in concepts])
    n = len(concepts)
    out_dir = None
    if keep_dir is not None and names:
        out_dir = Path(keep_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    store = {name: _alloc((n, *state.shapes[graph.layers[name]][1:]), dtype_keep, out_dir, name)
             for name in names}
    by_node: dict[int, list[str]] = {}
    for name in names:
        by_node.setdefault(graph.layers[name], []).append(name)
    h, w = state.image.shape[-2:]
    inputs = torch.empty(n, 3, h, w, dtype=state.image.dtype)
    absorbed: dict[str, torch.Tensor] = {}
    dropped = torch.zeros(n, dtype=torch.float64)
    size = _auto_batch(state, graph.output, n, batch_size)
    work: dict = {}  # scratch buffers shared by the chunks

    def saver(node_names: list[str], lo: int, hi: int):
        def save(r: torch.Tensor) -> None:
            for name in node_names:
                store[name][lo:hi] = r.to("cpu", dtype_keep)
        return save

    with torch.no_grad():
        for lo, hi in _chunks(n, size):
            keep_fns = {i: saver(ns, lo, hi) for i, ns in by_node.items()}
            res = _sweep(state, {graph.output: initial[lo:hi].to(state.device)}, keep_fns,
                         work=work)
            _gather(res, lo, hi, inputs, dropped, absorbed)
    totals = initial.double().flatten(1).sum(1)
    results = []
    for b, c in enumerate(concepts):
        results.append(Explanation(
            pixels=inputs[b].sum(0),
            input=inputs[b],
            layers={name: store[name][b] for name in names},
            output_total=float(totals[b]),
            absorbed={name: float(v[b]) for name, v in absorbed.items()},
            dropped=float(dropped[b]),
            concept=c,
            description=c.describe(class_names),
            rule=state.rule_name,
            initial=initial[b].cpu(),
            state=state,
        ))
    return results[0] if single else results


def _gather(res: _SweepResult, lo: int, hi: int, inputs: torch.Tensor, dropped: torch.Tensor,
            absorbed: dict[str, torch.Tensor]) -> None:
    """Copy one chunk's sweep result into rows ``lo:hi`` of the CPU outputs."""
    inputs[lo:hi] = res.input.cpu()
    dropped[lo:hi] = res.dropped.double().cpu()
    for name, v in res.absorbed.items():
        absorbed.setdefault(name, torch.zeros(len(dropped), dtype=torch.float64))[lo:hi] = \
            v.double().cpu()


def _state_for(model: nn.Module, image: torch.Tensor, explanation: Explanation | None,
               rule: Any) -> ForwardState:
    """The explanation's cached forward state when it matches, else a fresh one."""
    model = unwrap(model)
    image = check_image(image)
    st = explanation.state if explanation is not None else None
    if st is not None and st.model_ref is not None and st.model_ref() is model \
            and tuple(st.image.shape) == tuple(image.shape) \
            and torch.equal(st.image, image.to(st.image.device, st.image.dtype)):
        return st
    return forward_state(model, image, rule)


def separate_features(
    model: nn.Module,
    image: torch.Tensor,
    explanation: Explanation,
    layer: str,
    channels: Sequence[int] | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> FeatureMaps:
    """Each channel of ``layer``'s relevance alone, propagated to the pixels (§9.8).

    Starts the sweep at ``layer`` with only channel k of the explanation's relevance
    there kept, for every requested channel (default all), in batches; the first step
    from a single channel is a transposed convolution with that channel's weights only.
    Reuses the explanation's forward pass when it was made for this model and image.

    The maps of all channels sum to the pixel relevance of the whole layer; for SegNet
    (a chain) that is ``explanation.pixels``.

    ``dtype=torch.bfloat16`` runs the sweep in bfloat16 (faster on CPUs with bf16
    arithmetic; about 1e-2 relative error, see docs/lrp.md); the maps are
    returned in the image's dtype either way.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise SegscopeError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    state = _state_for(model, image, explanation, _rule_of(explanation))
    graph = state.graph
    node = graph.layer_node(layer)
    rel = explanation.layers.get(layer)
    if rel is None:
        rel = _layer_relevance(state, explanation.initial, node)
    rel = rel.to(state.device, state.image.dtype)
    if rel.dim() != 3:
        raise SegscopeError(f"layer {layer!r} has no feature maps (shape {tuple(rel.shape)})")
    c = rel.shape[0]
    if channels is None:
        chans = list(range(c))
    else:
        chans = [int(k) for k in channels]
        bad = [k for k in chans if not 0 <= k < c]
        if bad:
            raise SegscopeError(f"channel {bad[0]} out of range: layer {layer!r} has {c} channels")
    h, w = state.image.shape[-2:]
    pixels = torch.empty(len(chans), h, w, dtype=state.image.dtype)
    size = _auto_batch(state, node, len(chans), batch_size)
    work: dict = {}  # scratch buffers shared by the chunks
    with torch.no_grad():
        for lo, hi in _chunks(len(chans), size):
            ks = torch.tensor(chans[lo:hi], device=state.device)
            start = OneHot(rel[ks].unsqueeze(1).to(dtype or rel.dtype), ks, c)
            res = _sweep(state, {node: start}, absorbed=False, work=work)
            pixels[lo:hi] = res.input.to(pixels.dtype).sum(1).cpu()
        totals = rel.double().flatten(1).sum(1)[torch.tensor(chans, device=rel.device)]
    return FeatureMaps(pixels, chans, layer, totals.float().cpu())


def _rule_of(explanation: Explanation | None) -> Any:
    if explanation is None:
        return "alpha1beta0"
    if explanation.state is not None:
        return explanation.state.rule_spec
    return _rebuild_rule(explanation)


def _rebuild_rule(explanation: Explanation) -> Any:
    text = explanation.rule
    if "=" not in text:
        return text
    return [tuple(part.strip().split("=", 1)) for part in text.split(",")]


def _layer_relevance(state: ForwardState, initial: torch.Tensor, node: int) -> torch.Tensor:
    got: list[torch.Tensor] = []
    with torch.no_grad():
        _sweep(state, {state.graph.output: initial.unsqueeze(0).to(state.device)},
               {node: got.append})
    return got[0][0]


def propagate(
    model: nn.Module,
    image: torch.Tensor,
    layer: str,
    relevance: torch.Tensor,
    rule: Any = "alpha1beta0",
    batch_size: int | None = None,
    state: ForwardState | None = None,
) -> Propagation:
    """Propagate any relevance (B,C,h,w) (or (C,h,w)) placed at ``layer`` to the pixels.

    Returns :class:`Propagation` with ``pixels`` (B,H,W) and ``input`` (B,3,H,W).
    """
    if state is None:
        state = forward_state(model, image, rule)
    node = state.graph.layer_node(layer)
    rel = torch.as_tensor(relevance)
    want = tuple(state.shapes[node][1:])
    if tuple(rel.shape) == want:
        rel = rel.unsqueeze(0)
    if tuple(rel.shape[1:]) != want:
        raise SegscopeError(
            f"relevance for layer {layer!r} must be {want} or (B, *{want}), got "
            f"{tuple(rel.shape)}"
        )
    n = rel.shape[0]
    h, w = state.image.shape[-2:]
    inputs = torch.empty(n, 3, h, w, dtype=state.image.dtype)
    dropped = torch.zeros(n, dtype=torch.float64)
    absorbed: dict[str, torch.Tensor] = {}
    size = _auto_batch(state, node, n, batch_size)
    work: dict = {}  # scratch buffers shared by the chunks
    with torch.no_grad():
        for lo, hi in _chunks(n, size):
            start = rel[lo:hi].to(state.device, state.image.dtype)
            res = _sweep(state, {node: start}, work=work)
            _gather(res, lo, hi, inputs, dropped, absorbed)
    return Propagation(inputs.sum(1), inputs, absorbed, dropped)
