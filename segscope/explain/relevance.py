"""Layer-wise Relevance Propagation: the public API and its result types (SPEC §3-§4).

How it works:

1. The model becomes a list of nodes (:mod:`.graph`), BatchNorm folded into the
   convolutions, and each node an object of its kind (:mod:`.nodes`) with its rule
   (:mod:`.rules`, parsed in one place by :func:`~.rules.parse_rules`).
2. One forward pass per image records the activations and pool indices
   (:func:`~.state.forward_state`). What does not depend on the relevance — the clamped
   weights, the reciprocal denominators 1/z_j (0/0 = 0) — is computed on first use and
   cached in the state, so that every later call on the image (another concept, feature
   separation, :func:`propagate`) reuses it.
3. Relevance then flows back in one sweep (:mod:`.sweep`) in which a batch of concepts
   (classes, pixels, masks, feature channels) is the batch dimension: per layer and rule
   term one transposed convolution for the whole batch, chunked to fit in memory, and
   restricted to the box where relevance can be non-zero.

Max-pool sends relevance to the input that won the max (scatter at the stored indices),
max-unpool gathers it back from the scattered position, ReLU passes it through,
concatenation splits it by channel and addition splits it in proportion to the two
summands (z_a / (z_a + z_b), no bias). At the pixels the three colour channels are
summed (eq 8.1).

SegNet pads its input to multiples of 32 by repeating the last row and column; relevance
that reaches a padded pixel goes back to the pixel it copies, so it stays in the image.
:attr:`Explanation.dropped` counts relevance that leaves the graph elsewhere (0 for SegNet).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_path
from ..checkpoint import unwrap
from ..errors import SegscopeError
from .checks import check_image
from .concepts import Concept
from .graph import Graph
from .rules import RuleLike, parse_rules
from .sparse import OneHot, Relevance, channel_totals, dense
from .state import ForwardState, forward_batch, forward_state
from .sweep import SweepResult, auto_batch, chunks, sweep

__all__ = ["lrp", "lrp_batch", "separate_features", "propagate", "forward_state",
           "forward_batch", "ForwardState", "Explanation", "FeatureMaps", "Propagation",
           "check_image"]

#: What ``keep=`` accepts besides layer names.
KEEP_CHOICES = ("all", "totals")

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
        Relevance that left the graph without reaching the input (0 for SegNet, whose
        padding folds relevance back onto the edge pixels it copies).
    concept
        The :class:`Concept` explained; ``description`` says it in words.
    rule
        The rule(s) used, as text (``alpha1beta0`` or ``conv1_1=zbox, default=...``),
        accepted back by every ``rule=`` argument.
    initial
        (K,H,W) initial relevance on the output scores.
    totals
        {layer name: (C,) float64 relevance per channel} of every layer, with
        ``keep="totals"`` (no maps are kept then).
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
    totals: dict[str, torch.Tensor] = field(default_factory=dict)

    method = "lrp"

    @property
    def input_total(self) -> float:
        """Total relevance that reached the pixels."""
        return float(self.input.double().sum())

    def layer_sum(self, name: str) -> torch.Tensor:
        """(h,w) map Σ_k R_(k,y,x) of a kept layer (eq 9.1)."""
        return self._kept(name).float().sum(0)

    def layer_totals(self, name: str) -> torch.Tensor:
        """(C,) relevance per feature map of a kept layer (or any layer with
        ``keep="totals"``)."""
        if name not in self.layers and name in self.totals:
            return self.totals[name].float()
        return self._kept(name).double().flatten(1).sum(1).float()

    def feature_values(self, name: str) -> torch.Tensor:
        """(C,) feature values fv_k = (Σ_xy R_k / Σ R) · C of a kept layer (eq 9.3)."""
        totals = self.totals[name] if name not in self.layers and name in self.totals \
            else self.layer_totals(name).double()
        whole = totals.sum()
        if whole == 0:
            return torch.zeros_like(totals).float()
        return (totals / whole * totals.numel()).float()

    def _kept(self, name: str) -> torch.Tensor:
        if name not in self.layers:
            kept = ", ".join(list(self.layers)[:4]) or "none"
            raise SegscopeError(f"layer {name!r} was not kept (kept: {kept}); pass keep=")
        return self.layers[name]

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
        if keep in KEEP_CHOICES:
            return list(graph.layers)
        keep = [keep]
    names = [str(k) for k in keep]
    for name in names:
        graph.layer_node(name)
    return list(dict.fromkeys(names))


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, path: Path | None,
           maps: list[np.memmap]) -> torch.Tensor:
    if path is None:
        return torch.empty(shape, dtype=dtype)
    np_dtype = {torch.float16: np.float16, torch.float32: np.float32,
                torch.float64: np.float64}.get(dtype)
    if np_dtype is None:
        raise SegscopeError(f"keep_dir cannot store {dtype}; use float16 or float32")
    maps.append(np.lib.format.open_memmap(path, mode="w+", dtype=np_dtype, shape=shape))
    return torch.from_numpy(maps[-1])


#: The rule of :func:`lrp` and :func:`lrp_batch` when neither a rule nor a state is given.
DEFAULT_RULE = "alpha1beta0"


def _same_rule(state: ForwardState, rule: RuleLike | None) -> None:
    """Refuse a ``rule`` other than the one a given ``state`` was prepared for."""
    if rule is None:
        return
    text = parse_rules(rule).text
    if text != state.rule_spec.text:
        raise SegscopeError(f"rule {text!r} differs from the rule the given state was "
                            f"prepared for ({state.rule_spec.text!r}); drop one, or prepare "
                            "the state with this rule")


def lrp(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept | Sequence[Concept],
    rule: RuleLike | None = None,
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
        Float tensor (3,H,W), pixels in [0,1], all finite.
    concept
        A :class:`Concept`, or a list of them: one forward pass and one batched sweep
        for all, one :class:`Explanation` each.
    rule
        Anything :func:`~segscope.explain.rules.parse_rules` accepts: a rule
        (``"alpha1beta0"``, ``"epsilon:0.01"``, a rule object), a per-layer text
        (``"conv1_1=zbox,conv=alpha1beta0,default=epsilon:0.01"``) or mapping
        (``{"conv1_1": "zbox", "default": "alpha1beta0"}``; keys: layer names, ``first``,
        ``conv``, ``linear``, ``add``, ``default``), or a parsed
        :class:`~segscope.explain.rules.RuleSpec`. Default: the rule of ``state`` when
        one is given, else ``"alpha1beta0"``; a rule other than ``state``'s is an error
        (the state's denominators are that rule's).
    keep
        Layers whose relevance to keep: ``None``, a list of names, ``"all"`` (every
        layer's map), or ``"totals"`` (every layer's per-channel totals only, computed
        inside the sweep: :meth:`Explanation.layer_totals` and
        :meth:`Explanation.feature_values` work for every layer in O(Σ channels) memory).
    batch_size
        Concepts per sweep chunk; by default as many as fit in about 2 GiB.
    dtype_keep
        dtype of the kept layers (``torch.float16`` halves their memory).
    keep_dir
        Write each kept layer to ``keep_dir/<layer>.npy`` (memory-mapped) instead of RAM;
        each file appears under its name only once complete.
    state
        A :class:`ForwardState` of this image and rule to reuse (see :func:`forward_state`).

    Returns
    -------
    Explanation or list of Explanation
        One for a single :class:`Concept`, a list for a list.
    """
    single = isinstance(concept, Concept)
    concepts = _concepts([concept] if single else list(concept))
    model = unwrap(model)
    if state is None:
        state = forward_state(model, image, DEFAULT_RULE if rule is None else rule)
    else:
        _same_rule(state, rule)
    _single_image(state, "lrp")
    class_names = _class_names(state)
    initial = torch.stack([c.initial_relevance(state.scores, class_names) for c in concepts])
    size = auto_batch(state, state.graph.output, len(concepts), batch_size)
    results = _explain(state, concepts, initial, keep, size, dtype_keep, keep_dir)
    return results[0] if single else results


def lrp_batch(
    model: nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor],
    concepts: Sequence[Concept],
    rule: RuleLike | None = None,
    keep: str | Sequence[str] | None = None,
    dtype_keep: torch.dtype = torch.float32,
    keep_dir: str | os.PathLike | None = None,
    state: ForwardState | None = None,
    release: bool | None = None,
) -> list[Explanation]:
    """Explain ``concepts[b]`` on ``images[b]`` for a batch of images at once.

    One forward pass for the whole batch (:func:`~.state.forward_batch`) and one
    relevance sweep in which the images are the batch dimension: every layer's step is
    one transposed convolution for all of them. The results equal those of
    ``lrp(model, images[b], concepts[b], ...)`` one by one (up to float rounding); on a
    GPU the batch runs much faster than the images one by one.

    Parameters
    ----------
    images
        (N,3,H,W), or a sequence of N (3,H,W) images of one size.
    concepts
        N concepts, one per image.
    rule, keep, dtype_keep, keep_dir
        As for :func:`lrp`. The whole batch is one sweep: choose N to fit in memory.
    state
        A state of this batch from :func:`~.state.forward_batch` to reuse (``images``
        is then not read).
    release
        Drop each layer's forward values as soon as the sweep has passed the layer, so
        that the memory of the layers swept serves the next ones; the state cannot be
        explained again afterwards. Default: when the state is made here.

    Returns
    -------
    list of Explanation
        One per image, in order (their ``state`` is ``None``: a batch's state serves
        no single image).
    """
    concepts = _concepts(list(concepts))
    model = unwrap(model)
    if release is None:
        release = state is None
    if state is None:
        state = forward_batch(model, images, DEFAULT_RULE if rule is None else rule)
    else:
        _same_rule(state, rule)
    if not state.batched:
        raise SegscopeError("lrp_batch needs the state of a batch (forward_batch); use "
                            "lrp for one image")
    if len(concepts) != state.images:
        raise SegscopeError(f"lrp_batch needs one concept per image: {state.images} images, "
                            f"{len(concepts)} concepts")
    class_names = _class_names(state)
    initial = torch.stack([c.initial_relevance(state.scores[b], class_names)
                           for b, c in enumerate(concepts)])
    results = _explain(state, concepts, initial, keep, len(concepts), dtype_keep, keep_dir,
                       release=release)
    for e in results:
        e.state = None
    return results


def _concepts(concepts: list) -> list[Concept]:
    if not concepts:
        raise SegscopeError("no concept given to explain")
    for c in concepts:
        if not isinstance(c, Concept):
            raise SegscopeError(f"a concept must be a segscope Concept, got {type(c).__name__}")
    return concepts


def _single_image(state: ForwardState, what: str) -> None:
    if state.batched:
        raise SegscopeError(f"{what} explains one image; this forward state holds a batch "
                            "of images (use lrp_batch)")


def _explain(state: ForwardState, concepts: list[Concept], initial: torch.Tensor, keep: Any,
             size: int, dtype_keep: torch.dtype, keep_dir: str | os.PathLike | None,
             release: bool = False) -> list[Explanation]:
    """The sweeps of ``initial`` (n,K,...) in chunks of ``size``, as Explanations."""
    graph = state.graph
    totals_only = isinstance(keep, str) and keep == "totals"
    names = _keep_nodes(graph, keep)
    class_names = _class_names(state)
    n = len(concepts)
    by_node: dict[int, list[str]] = {}
    for name in names:
        by_node.setdefault(graph.layers[name], []).append(name)
    h, w = state.image.shape[-2:]
    inputs = torch.empty(n, 3, h, w, dtype=state.image.dtype)
    absorbed: dict[str, torch.Tensor] = {}
    dropped = torch.zeros(n, dtype=torch.float64)
    work: dict = {}  # scratch buffers shared by the chunks
    store: dict[str, torch.Tensor] = {}
    maps: list[np.memmap] = []
    with contextlib.ExitStack() as files:
        if totals_only:
            store = {name: torch.zeros(n, _channels(state.shapes[graph.layers[name]]),
                                       dtype=torch.float64) for name in names}
        else:
            out_dir = None
            if keep_dir is not None and names:
                out_dir = Path(keep_dir)
                out_dir.mkdir(parents=True, exist_ok=True)
            for name in names:
                # written under a temporary name, renamed when the sweep is complete
                path = None if out_dir is None else files.enter_context(
                    atomic_path(out_dir / f"{name.replace(os.sep, '_')}.npy"))
                store[name] = _alloc((n, *state.shapes[graph.layers[name]][1:]), dtype_keep,
                                     path, maps)

        def saver(node_names: list[str], lo: int, hi: int) -> Callable[[Relevance], None]:
            def save(r: Relevance) -> None:
                if totals_only:
                    t = channel_totals(r).cpu()
                    for name in node_names:
                        store[name][lo:hi] = t
                    return
                d = dense(r)
                for name in node_names:
                    store[name][lo:hi] = d.to("cpu", dtype_keep)
            save.holds = False  # copies into the store: the sweep may overwrite r
            return save

        with torch.no_grad():
            for lo, hi in chunks(n, size):
                keep_fns = {i: saver(ns, lo, hi) for i, ns in by_node.items()}
                res = sweep(state, {graph.output: initial[lo:hi].to(state.device)}, keep_fns,
                            work=work, release=release)
                _gather(res, lo, hi, inputs, dropped, absorbed)
        for arr in maps:
            arr.flush()  # complete on disk before the rename
    sums = initial.double().flatten(1).sum(1)
    results = []
    for b, c in enumerate(concepts):
        results.append(Explanation(
            pixels=inputs[b].sum(0),
            input=inputs[b],
            layers={} if totals_only else {name: store[name][b] for name in names},
            output_total=float(sums[b]),
            absorbed={name: float(v[b]) for name, v in absorbed.items()},
            dropped=float(dropped[b]),
            concept=c,
            description=c.describe(class_names),
            rule=state.rule_name,
            initial=initial[b].cpu(),
            state=state,
            totals={name: store[name][b] for name in names} if totals_only else {},
        ))
    return results


def _channels(shape: torch.Size) -> int:
    """Channels of a node output (B,C,...); a vector's entries count as channels."""
    return int(shape[1])


def _gather(res: SweepResult, lo: int, hi: int, inputs: torch.Tensor, dropped: torch.Tensor,
            absorbed: dict[str, torch.Tensor]) -> None:
    """Copy one chunk's sweep result into rows ``lo:hi`` of the CPU outputs."""
    inputs[lo:hi] = res.input.cpu()
    dropped[lo:hi] = res.dropped.double().cpu()
    for name, v in res.absorbed.items():
        absorbed.setdefault(name, torch.zeros(len(dropped), dtype=torch.float64))[lo:hi] = \
            v.double().cpu()


def _state_for(model: nn.Module, image: torch.Tensor,
               explanation: Explanation) -> ForwardState:
    """The explanation's cached forward state when it matches, else a fresh one."""
    model = unwrap(model)
    image = check_image(image)
    st = explanation.state
    if st is not None and st.matches(model, image):
        return st
    rule = st.rule_spec if st is not None else parse_rules(explanation.rule)
    return forward_state(model, image, rule)


def _channel_list(channels: Any, c: int, layer: str) -> list[int]:
    if channels is None:
        return list(range(c))
    if isinstance(channels, int | np.integer) or torch.is_tensor(channels) and \
            channels.dim() == 0:
        channels = [channels]
    out = []
    for k in channels:
        kk = k.item() if torch.is_tensor(k) or isinstance(k, np.generic) else k
        if isinstance(kk, bool) or not isinstance(kk, int):
            raise SegscopeError(f"channels must be whole numbers, got {k!r}")
        if not 0 <= kk < c:
            raise SegscopeError(f"channel {kk} out of range: layer {layer!r} has {c} channels")
        out.append(kk)
    return out


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
    there kept, for every requested channel (default all; whole numbers in range), in
    batches; the first step from a single channel is a transposed convolution with that
    channel's weights only. Reuses the explanation's forward pass (and rule) when it was
    made for this model and image.

    The maps of all channels sum to the pixel relevance of the whole layer; for SegNet
    (a chain) that is ``explanation.pixels``.

    ``dtype=torch.bfloat16`` runs the sweep in bfloat16 (faster on CPUs with bf16
    arithmetic; about 1e-2 relative error, see docs/lrp.md); the maps are
    returned in the image's dtype either way.
    """
    if not isinstance(explanation, Explanation):
        raise SegscopeError(f"separate_features needs an Explanation from lrp(), got "
                            f"{type(explanation).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise SegscopeError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    state = _state_for(model, image, explanation)
    graph = state.graph
    node = graph.layer_node(layer)
    rel = explanation.layers.get(layer)
    if rel is None:
        got: list[torch.Tensor] = []
        with torch.no_grad():
            sweep(state, {graph.output: explanation.initial.unsqueeze(0).to(state.device)},
                  {node: lambda r: got.append(dense(r))})
        rel = got[0][0]
    rel = rel.to(state.device, state.image.dtype)
    if rel.dim() != 3:
        raise SegscopeError(f"layer {layer!r} has no feature maps (shape {tuple(rel.shape)})")
    c = rel.shape[0]
    chans = _channel_list(channels, c, layer)
    h, w = state.image.shape[-2:]
    pixels = torch.empty(len(chans), h, w, dtype=state.image.dtype)
    size = auto_batch(state, node, len(chans), batch_size)
    work: dict = {}  # scratch buffers shared by the chunks
    with torch.no_grad():
        for lo, hi in chunks(len(chans), size):
            ks = torch.tensor(chans[lo:hi], device=state.device)
            start = OneHot(rel[ks].unsqueeze(1).to(dtype or rel.dtype), ks, c)
            res = sweep(state, {node: start}, absorbed=False, work=work)
            pixels[lo:hi] = res.input.to(pixels.dtype).sum(1).cpu()
        totals = rel.double().flatten(1).sum(1)[torch.tensor(chans, device=rel.device,
                                                             dtype=torch.long)]
    return FeatureMaps(pixels, chans, layer, totals.float().cpu())


def propagate(
    model: nn.Module,
    image: torch.Tensor,
    layer: str,
    relevance: torch.Tensor,
    rule: RuleLike = "alpha1beta0",
    batch_size: int | None = None,
    state: ForwardState | None = None,
) -> Propagation:
    """Propagate any relevance (B,C,h,w) (or (C,h,w)) placed at ``layer`` to the pixels.

    Returns :class:`Propagation` with ``pixels`` (B,H,W) and ``input`` (B,3,H,W).
    """
    if state is None:
        state = forward_state(model, image, rule)
    _single_image(state, "propagate")
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
    if not bool(torch.isfinite(rel).all()):
        raise SegscopeError(f"the relevance given for layer {layer!r} has NaN or infinite "
                            "values")
    n = rel.shape[0]
    h, w = state.image.shape[-2:]
    inputs = torch.empty(n, 3, h, w, dtype=state.image.dtype)
    dropped = torch.zeros(n, dtype=torch.float64)
    absorbed: dict[str, torch.Tensor] = {}
    size = auto_batch(state, node, n, batch_size)
    work: dict = {}  # scratch buffers shared by the chunks
    with torch.no_grad():
        for lo, hi in chunks(n, size):
            start = rel[lo:hi].to(state.device, state.image.dtype)
            res = sweep(state, {node: start}, work=work)
            _gather(res, lo, hi, inputs, dropped, absorbed)
    return Propagation(inputs.sum(1), inputs, absorbed, dropped)
