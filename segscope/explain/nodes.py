"""One small object per node kind: its forward, its boxes and its relevance step.

The graph (:mod:`.graph`) says what each node computes; :func:`node_kind` turns each
:class:`~.graph.Node` into the object of its kind (:data:`KINDS`). The forward pass
(:func:`.state.forward_state`) calls each object's :meth:`NodeKind.forward`, which
keeps what the relevance step will need (a convolution's input, a pool's indices, the
summands of an addition). The sweep (:mod:`.sweep`) then calls, from the output down,
:meth:`NodeKind.input_box` (where relevance can be non-zero) and
:meth:`NodeKind.backward` (the relevance of the node's inputs).

Adding a node kind is one class here, one entry in :data:`KINDS` and, in
:mod:`.graph`, the line that recognises the module (docs/extending.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import SegscopeError
from ..models import fold_padding
from .boxes import Box, area, clip, crop, inside, pair, union, window
from .graph import Node
from .ops import ConvOp, LinearMapOp, WindowOp
from .rules import Rule, SplitRule
from .sparse import LAYOUT, Boxed, OneHot, Relevance, buffer, dense, flat, values, zeros

if TYPE_CHECKING:
    from .state import ForwardState


@dataclass
class Step:
    """What one relevance step knows besides the relevance itself.

    ``boxes`` {node: box or None} says where relevance can be non-zero (empty: anywhere);
    ``owned``: the sweep made the relevance and the step may overwrite it; ``work``: the
    scratch buffers the chunks of one call share; ``full_share``: see
    :data:`.sweep.FULL_SHARE`; ``stats`` counts the boxed steps.
    """

    boxes: dict[int, Box | None]
    owned: bool = False
    work: dict | None = None
    full_share: float = 0.5
    stats: dict[str, int] | None = None

    def count(self, what: str) -> None:
        if self.stats is not None:
            self.stats[what] = self.stats.get(what, 0) + 1


class NodeKind:
    """Base class of the node kinds (one object per node and forward pass).

    Class attributes: ``kind`` (the :class:`~.graph.Node` kind it implements), ``fresh``
    (the relevance step returns new tensors, which later steps may overwrite),
    ``absorbs`` (relevance lost at this node is reported per layer, eq 6.13),
    ``takes_rule`` (the node gets a rule from the specification, in ``self.rule``),
    ``new_output`` (the forward returns a new tensor that the node does not keep, which
    its only consumer may then overwrite).
    """

    kind: ClassVar[str]
    takes_rule: ClassVar[bool] = False
    fresh: ClassVar[bool] = False
    absorbs: ClassVar[bool] = False
    is_input: ClassVar[bool] = False
    new_output: ClassVar[bool] = False
    #: the forward keeps the output for the rule (so nothing may overwrite it in place)
    keeps_output: ClassVar[bool] = False

    def __init__(self, index: int, node: Node) -> None:
        self.index, self.node = index, node
        self.name, self.inputs, self.params = node.name, node.inputs, node.params
        self.rule: Rule | None = None

    def forward(self, state: ForwardState, ins: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def nonneg(self, state: ForwardState) -> bool:
        """Whether the output is >= 0 by construction (the rules then skip x⁺/x⁻)."""
        return all(state.nonneg[j] for j in self.inputs)

    def input_box(self, state: ForwardState, box: Box, j: int) -> Box | None:
        """The box of input ``j`` that feeds output ``box``; ``None``: anywhere."""
        return None

    def dropped(self, state: ForwardState, r: Relevance) -> torch.Tensor | None:
        """(B,) relevance that leaves the sweep here (SegNet's padding), or ``None``."""
        return None

    def release(self) -> None:
        """Drop what only this node's relevance step needed, once the sweep has passed
        it (a state explained once: its memory comes back as the sweep goes down)."""

    def backward(self, state: ForwardState, r: Relevance,
                 step: Step) -> list[tuple[int, Relevance]]:
        """The relevance of each input node from ``r`` at this node's output."""
        raise NotImplementedError  # pragma: no cover


class Input(NodeKind):
    """The image: where the sweep ends."""

    kind = "input"
    is_input = True

    def forward(self, state: ForwardState, ins: list[torch.Tensor]) -> torch.Tensor:
        image = state.image if state.batched else state.image.unsqueeze(0)
        return image.contiguous(memory_format=LAYOUT)

    def nonneg(self, state: ForwardState) -> bool:
        return bool((state.image >= 0).all())

    def backward(self, state, r, step):  # pragma: no cover - the sweep stops here
        return []


class ReLU(NodeKind):
    """ReLU passes relevance unchanged (SPEC §3)."""

    kind = "relu"
    #: set by the forward pass when this node is the only reader of a new tensor
    overwrite = False

    def forward(self, state, ins):
        # in place on a convolution's output that nothing else reads: no second map
        return ins[0].relu_() if self.overwrite else torch.relu(ins[0])

    def nonneg(self, state):
        return True

    def input_box(self, state, box, j):
        return clip(box, state.shapes[j][-2:])

    def backward(self, state, r, step):
        return [(self.inputs[0], r)]


# -- weighted layers ---------------------------------------------------------------------
@dataclass
class Back:
    """A rule term ready for the sweep: ``a ⊙ Wᵀ(R ⊙ s)`` with Wᵀ's weight prepared."""

    a: torch.Tensor | None
    s: torch.Tensor | None
    wb: torch.Tensor


@dataclass
class Terms:
    """A weighted layer's backward terms on the output ``box`` (None: the whole map).

    ``s`` is held on ``box``, ``a`` on ``in_box``, the box's input window clipped to the
    map.
    """

    box: Box | None
    in_box: Box | None
    backs: list[Back]
    casts: dict[torch.dtype, list[Back]] = field(default_factory=dict)

    def backs_as(self, dtype: torch.dtype) -> list[Back]:
        """The terms in ``dtype`` (the relevance's), converted once and cached."""
        if dtype == self.backs[0].wb.dtype:
            return self.backs
        if dtype not in self.casts:
            def cast(t: torch.Tensor | None) -> torch.Tensor | None:
                return None if t is None else t.to(dtype)
            self.casts[dtype] = [Back(cast(b.a), cast(b.s), cast(b.wb)) for b in self.backs]
        return self.casts[dtype]


class Weighted(NodeKind):
    """A layer with weights (convolution, linear map): its rule gives the step.

    The forward keeps the layer's input; the rule's terms (denominators included) are
    computed on first use and cached (:meth:`terms`), so that every later sweep on the
    image reuses them.
    """

    takes_rule = True
    fresh = True
    absorbs = True
    new_output = True
    op: Any

    def __init__(self, index: int, node: Node) -> None:
        super().__init__(index, node)
        self.x: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.cached: Terms | None = None

    @property
    def keeps_output(self) -> bool:
        """The rule's denominators are this layer's outputs: the forward keeps them (and
        the ReLU after it must not overwrite them)."""
        return self.rule is not None and self.rule.uses_output

    def _kept(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.x = x  # the denominators come later, on what the sweep needs
        if self.keeps_output:
            self.z = z
        return z

    def nonneg(self, state):
        return False

    def release(self) -> None:
        self.x = self.z = self.cached = None

    def terms(self, state: ForwardState, box: Box | None, full_share: float) -> Terms:
        """The backward terms covering output ``box`` (None: all).

        Cached: computed on the whole map when ``box`` covers at least ``full_share`` of
        it, else on the box (grown to the union with an earlier box). Only convolutions
        have boxes; other layers compute them on the whole output once.
        """
        return self.cached if self.cached is not None else self._terms(state, None)

    def _terms(self, state: ForwardState, box: Box | None) -> Terms:
        op, x = self.op, self.x
        nonneg = state.nonneg[self.inputs[0]]
        kw = {} if self.z is None else {"z": self.z if box is None else crop(self.z, box)}
        if box is None:
            terms, in_box = self.rule.terms(x, op, nonneg, **kw), None
        else:
            win = op.window(box)
            in_box = clip(win, x.shape[-2:])
            pads = (in_box[2] - win[2], win[3] - in_box[3], in_box[0] - win[0],
                    win[1] - in_box[1])
            terms = self.rule.terms(crop(x, in_box), WindowOp(op, pads), nonneg, **kw)
        self.cached = Terms(box, in_box, [Back(t.a, t.s, op.back_weight(t.w)) for t in terms])
        return self.cached

    def backward(self, state, r, step):
        op = self.op
        if isinstance(r, OneHot) and not op.onehot_ok:
            r = r.dense()
        r = dense(r) if isinstance(r, Boxed) else r
        backs = self.terms(state, None, step.full_share).backs_as(values(r).dtype)
        out = None
        for t in backs:
            if isinstance(r, OneHot):
                v = r.values if t.s is None else r.values * t.s[0, r.channels].unsqueeze(1)
                part = op.back_onehot(v, t.wb, r.channels)
            else:
                if t.s is not None:
                    # one term: the relevance is not needed afterwards, scale it in place
                    v = r.mul_(t.s) if step.owned and len(backs) == 1 else r * t.s
                else:
                    v = r
                part = op.back(v, t.wb)
            if t.a is not None:
                part.mul_(t.a)  # part is a fresh conv output: no new allocation
            out = part if out is None else out.add_(part)
        return [(self.inputs[0], out)]


class Linear(Weighted):
    """A fully connected layer ``x Wᵀ + b``."""

    kind = "linear"

    def forward(self, state, ins):
        self.op = LinearMapOp(self.params, self.node.cache)
        return self._kept(ins[0], F.linear(ins[0], self.op.weight, self.op.bias))


class Conv(Weighted):
    """A 2-d convolution (BatchNorm folded in). Relevance inside a box is sent back on the
    box only, with denominators on the box (:meth:`terms`)."""

    kind = "conv"

    def forward(self, state, ins):
        x, p = ins[0], self.params
        if x.dim() != 4:
            raise SegscopeError(f"layer {self.name!r} expects (N,C,H,W) input, got "
                                f"{tuple(x.shape)}")
        z = F.conv2d(x, p["weight"], p["bias"], p["stride"], p["padding"], p["dilation"],
                     p["groups"])
        self.op = ConvOp(p, x.shape, z.shape, self.node.cache)
        return self._kept(x, z)

    def input_box(self, state, box, j):
        return clip(self.op.window(box), state.shapes[j][-2:])

    def terms(self, state, box, full_share):
        cached = self.cached
        whole = full_share * math.prod(state.shapes[self.index][-2:])
        if box is not None and area(box) >= whole:
            box = None
        if cached is not None:
            if cached.box is None or (box is not None and inside(box, cached.box)):
                return cached
            box = union(box, cached.box)  # recomputed on both boxes, the old one dropped
            if box is not None and area(box) >= whole:
                box = None
        return self._terms(state, box)

    def backward(self, state, r, step):
        box = step.boxes.get(self.index)
        if box is not None and area(box) < math.prod(state.shapes[self.index][-2:]):
            step.count("conv boxed")
            return [(self.inputs[0], self._back_box(state, r, box, step))]
        return super().backward(state, r, step)

    def _back_box(self, state: ForwardState, r: Relevance, box: Box, step: Step) -> Boxed:
        """The step for relevance that is zero outside output ``box``.

        Runs the transposed convolution on the box only: the same numbers as the whole-map
        step, for the work of the box, returned as the input window's :class:`Boxed`.
        """
        op = self.op
        entry = self.terms(state, box, step.full_share)
        win = op.window(box)
        in_hw = op.in_shape[-2:]
        in_box = clip(win, in_hw)
        inner = (in_box[0] - win[0], in_box[1] - win[0], in_box[2] - win[2],
                 in_box[3] - win[2])
        if isinstance(r, Boxed) and not inside(box, r.box):
            r = r.dense()
        acc = None
        backs = entry.backs_as(values(r).dtype)
        for t in backs:
            s = None if t.s is None else crop(t.s, box, entry.box)
            if isinstance(r, OneHot):
                v = crop(r.values, box)
                if s is not None:
                    v = v * s[0, r.channels].unsqueeze(1)
                part = op.back_onehot(v, t.wb, r.channels, full=True)
            else:
                v = crop(r.values, box, r.box) if isinstance(r, Boxed) else crop(r, box)
                if s is not None:
                    v = v.mul_(s) if step.owned and len(backs) == 1 else v * s
                part = op.back(v, t.wb, full=True)
            part = crop(part, inner)
            a = None if t.a is None else crop(t.a, in_box, entry.in_box)
            if acc is None and not part.is_contiguous(memory_format=LAYOUT):
                # the window was clipped at the border: write the crop out contiguously
                # (the next convolution would copy it anyway), multiplying on the way
                acc = buffer(step.work, (self.index, "back"), part.shape, part)
                torch.mul(part, a, out=acc) if a is not None else acc.copy_(part)
            elif acc is None:
                acc = part if a is None else part.mul_(a)  # part is a fresh conv output
            else:
                acc.add_(part if a is None else part.mul_(a))
        return Boxed(acc, in_box, (values(r).shape[0], op.in_shape[1], *in_hw))


# -- pooling -----------------------------------------------------------------------------
class MaxPool(NodeKind):
    """Max-pool sends relevance to the input that won the max (stored indices)."""

    kind = "maxpool"
    fresh = True
    new_output = True

    def forward(self, state, ins):
        p = self.params
        out, idx = F.max_pool2d(ins[0], p["kernel_size"], p["stride"], p["padding"],
                                p["dilation"], p["ceil_mode"], return_indices=True)
        self.indices = flat(idx.contiguous(memory_format=LAYOUT))  # (N,h*w,C)
        return out

    def release(self) -> None:
        self.indices = None  # its unpools come later in the forward: already swept

    def input_box(self, state, box, j):
        p = self.params
        return clip(window(box, p["kernel_size"], p["stride"], p["padding"], p["dilation"]),
                    state.shapes[j][-2:])

    def backward(self, state, r, step):
        src = self.inputs[0]
        idx = self.indices
        in_shape = state.shapes[src]
        box, in_box = step.boxes.get(self.index), step.boxes.get(src)
        if not isinstance(r, OneHot) and box is not None and in_box is not None \
                and area(in_box) < in_shape[-2:].numel():
            step.count("maxpool boxed")
            return [(src, self._back_box(state, r, box, in_box, step.work))]
        r = dense(r) if isinstance(r, Boxed) else r
        if isinstance(r, OneHot):
            v = r.values.flatten(-2)
            ix = idx[0, :, r.channels].t().unsqueeze(1).contiguous()
            out = v.new_zeros(v.shape[0], 1, in_shape[-2:].numel()).scatter_add_(-1, ix, v)
            return [(src, OneHot(out.view(-1, 1, *in_shape[-2:]), r.channels,
                                 r.num_channels))]
        out = zeros((r.shape[0], *in_shape[1:]), r)
        flat(out).scatter_add_(1, idx.expand(r.shape[0], -1, -1), flat(r))
        return [(src, out)]

    def _back_box(self, state: ForwardState, r: Relevance, box: Box, in_box: Box,
                  work: dict | None) -> Boxed:
        """The step for relevance inside output ``box``, into the input's ``in_box``.

        The winners' flat indices are turned into positions inside ``in_box`` (which holds
        every window of ``box``), so the scatter writes a box-sized map only.
        """
        i = self.index
        in_hw = state.shapes[self.inputs[0]][-2:]
        key = (i, "local", box, in_box)
        local = None if work is None else work.get(key)
        if local is None:
            h, w = state.shapes[i][-2:]
            idx = crop(self.indices.transpose(1, 2).view(state.images, -1, h, w), box)
            local = flat((idx // in_hw[1] - in_box[0]) * (in_box[3] - in_box[2])
                         + (idx % in_hw[1] - in_box[2]))
            if work is not None:
                work[key] = local
        v = crop(r.values, box, r.box) if isinstance(r, Boxed) and inside(box, r.box) \
            else crop(dense(r), box)
        n, c = v.shape[:2]
        fv = flat(v)
        out = buffer(work, (i, "pool"), (n, c, in_box[1] - in_box[0], in_box[3] - in_box[2]),
                     v).zero_()
        p = self.params
        span = [d * (k - 1) + 1 for k, d in zip(pair(p["kernel_size"]), pair(p["dilation"]),
                                                 strict=True)]
        if all(sp <= st for sp, st in zip(span, pair(p["stride"] or p["kernel_size"]),
                                          strict=True)):
            # windows that do not overlap have distinct winners: a plain scatter is exact
            # (and, unlike scatter_add_, does not round-trip bfloat16 through float32)
            flat(out).scatter_(1, local.expand(n, -1, -1), fv)
        else:
            flat(out).scatter_add_(1, local.expand(n, -1, -1), fv)
        return Boxed(out, in_box, (n, c, *in_hw))


class MaxUnpool(NodeKind):
    """Max-unpool passes relevance back from the scattered position to the pooled neuron."""

    kind = "maxunpool"
    fresh = True
    new_output = True

    def _pool(self, state: ForwardState) -> MaxPool:
        return state.kinds[self.params["pool"]]

    def forward(self, state, ins):
        x = ins[0]
        pool = self.params["pool"]
        idx = self._pool(state).indices
        if (idx.shape[0], idx.shape[2], idx.shape[1]) != (*x.shape[:2], x.shape[-2:].numel()):
            raise SegscopeError(
                f"{self.name!r} gets a {tuple(x.shape)} input but its pool "
                f"{state.graph.nodes[pool].name!r} produced {tuple(state.shapes[pool])}"
            )
        target = state.shapes[state.graph.nodes[pool].inputs[0]]
        out = zeros(target, x)
        flat(out).scatter_(1, idx, flat(x))
        return out

    def input_box(self, state, box, j):
        p = self._pool(state).params
        k, st = pair(p["kernel_size"]), pair(p["stride"])
        pd, dl = pair(p["padding"]), pair(p["dilation"])
        cells = []
        for a in range(2):
            lo, hi = box[2 * a], box[2 * a + 1]
            cells += [-((-(lo + pd[a] - dl[a] * (k[a] - 1))) // st[a]),
                      (hi - 1 + pd[a]) // st[a] + 1]
        return clip(tuple(cells), state.shapes[j][-2:])

    def backward(self, state, r, step):
        src = self.inputs[0]
        r = r.dense() if isinstance(r, Boxed) else r
        idx = self._pool(state).indices
        in_shape = state.shapes[src]
        if isinstance(r, OneHot):
            ix = idx[0, :, r.channels].t().unsqueeze(1).contiguous()
            out = r.values.flatten(-2).gather(-1, ix)
            return [(src, OneHot(out.view(-1, 1, *in_shape[-2:]), r.channels,
                                 r.num_channels))]
        out = flat(r.contiguous(memory_format=LAYOUT)).gather(
            1, idx.expand(r.shape[0], -1, -1))  # (B,hw,C): channels-last
        return [(src, out.transpose(1, 2).view(-1, *in_shape[1:]))]


# -- SegNet's padding to multiples of 32 --------------------------------------------------
class Pad(NodeKind):
    """Edge-replicating padding at the bottom/right to a multiple (SegNet's ``pad``).

    A padded pixel is a copy of the last row/column: its relevance goes back to the pixel
    it copies, so nothing is lost here.
    """

    kind = "pad"

    def forward(self, state, ins):
        m = self.params["multiple"]
        h, w = ins[0].shape[-2:]
        if not (-h % m or -w % m):
            return ins[0].contiguous(memory_format=LAYOUT)
        return F.pad(ins[0], (0, -w % m, 0, -h % m),
                     mode="replicate").contiguous(memory_format=LAYOUT)

    def input_box(self, state, box, j):
        h, w = state.shapes[j][-2:]
        # a box reaching into the padding reaches the last row/column it copies
        return clip((min(box[0], h - 1), box[1], min(box[2], w - 1), box[3]), (h, w))

    def backward(self, state, r, step):
        src = self.inputs[0]
        r = r.dense() if isinstance(r, Boxed) else r
        h, w = state.shapes[src][-2:]
        if isinstance(r, OneHot):
            return [(src, r.map(lambda v: fold_padding(v, h, w)))]
        return [(src, fold_padding(r, h, w))]


class Crop(NodeKind):
    """The scores cropped back to the image size (the inverse of :class:`Pad`)."""

    kind = "crop"

    def forward(self, state, ins):
        h, w = state.shapes[self.params["ref"]][-2:]
        return ins[0][..., :h, :w]

    def input_box(self, state, box, j):
        return clip(box, state.shapes[j][-2:])

    def backward(self, state, r, step):
        src = self.inputs[0]
        r = r.dense() if isinstance(r, Boxed) else r
        ph, pw = state.shapes[src][-2:]
        h, w = state.shapes[self.index][-2:]
        if isinstance(r, OneHot):
            return [(src, r.map(lambda v: F.pad(v, (0, pw - w, 0, ph - h))))]
        return [(src, F.pad(r, (0, pw - w, 0, ph - h)))]


# -- merging and reshaping ---------------------------------------------------------------
class Merge(NodeKind):
    """A node that merges its inputs; its :class:`~.rules.SplitRule` splits the relevance."""

    takes_rule = True
    rule: SplitRule

    def backward(self, state, r, step):
        return list(zip(self.inputs, self.rule.split(self.parts, dense(r)), strict=True))


class Cat(Merge):
    """Channel concatenation (split by channel, :class:`~.rules.ChannelSplit`)."""

    kind = "cat"
    new_output = True

    def forward(self, state, ins):
        # the split needs the inputs' shapes only: meta tensors hold no memory
        self.parts = [torch.empty(t.shape, device="meta") for t in ins]
        return torch.cat(ins, dim=1)


class Add(Merge):
    """Addition of two tensors (split in proportion, :class:`~.rules.Proportional`)."""

    kind = "add"
    fresh = True
    absorbs = True
    new_output = True

    def forward(self, state, ins):
        a, b = ins
        self.parts = [a, b]
        return a + b

    def release(self) -> None:
        self.parts = None


class Flatten(NodeKind):
    """``torch.flatten``: relevance is reshaped back."""

    kind = "flatten"

    def forward(self, state, ins):
        return torch.flatten(ins[0], self.params["start"], self.params["end"])

    def backward(self, state, r, step):
        src = self.inputs[0]
        r = dense(r)
        return [(src, r.reshape(r.shape[0], *state.shapes[src][1:]))]


#: Node kind name -> class (one entry per kind).
KINDS: dict[str, type[NodeKind]] = {
    k.kind: k for k in (Input, ReLU, Conv, Linear, MaxPool, MaxUnpool, Pad, Crop, Cat, Add,
                        Flatten)
}


def node_kind(index: int, node: Node) -> NodeKind:
    """The object of ``node``'s kind."""
    cls = KINDS.get(node.kind)
    if cls is None:  # pragma: no cover - the graph builders make known kinds only
        raise SegscopeError(f"internal: unknown node kind {node.kind!r}")
    return cls(index, node)
