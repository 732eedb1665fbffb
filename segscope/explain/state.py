"""The forward interpreter: one pass over the graph that records what the sweep needs.

:func:`forward_state` builds the graph (:mod:`.graph`), makes one node-kind object per
node (:mod:`.nodes`), gives each weighted and merging node its rule (:mod:`.rules`) and
runs the image through the nodes once. The result, a :class:`ForwardState`, is reused by
every later call on the same image (another concept, feature separation,
:func:`~.relevance.propagate`): the denominators each weighted node computes on first use
stay cached in it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checkpoint import unwrap
from .boxes import Box
from .checks import check_image, check_images, check_scores, model_device_dtype
from .graph import Graph, build_graph
from .nodes import NodeKind, ReLU, Weighted, node_kind
from .rules import RuleLike, RuleSpec, parse_rules, resolve_rules


@dataclass
class ForwardState:
    """Everything the relevance sweep needs from one image's forward pass.

    Computed once by :func:`forward_state` and reused by :func:`~.relevance.lrp`,
    :func:`~.relevance.separate_features` and :func:`~.relevance.propagate` for the same
    image.

    Attributes
    ----------
    graph
        The model's node list.
    image
        (3,H,W) on the model's device, in its dtype; (N,3,H,W) for a batch of images
        (:func:`forward_batch`).
    scores
        (K,H,W) or (K,) output scores; (N,K,...) for a batch.
    shapes
        Each node's output shape (with the batch dimension: 1, or N for a batch).
    kinds
        One :class:`~.nodes.NodeKind` per node, with its rule and forward values.
    rule_spec
        The parsed rule specification; ``rule_name`` its text.
    stats
        How many relevance steps ran on a box only, per kind (``"conv boxed"``,
        ``"maxpool boxed"``): shows the restricted sweep at work.
    batched
        Whether the state holds a batch of images (:func:`forward_batch`).
    released
        Whether a sweep has dropped the forward values (``lrp_batch(release=True)``):
        the state cannot be explained again.
    """

    graph: Graph
    image: torch.Tensor
    scores: torch.Tensor
    shapes: list[torch.Size]
    kinds: list[NodeKind]
    rule_spec: RuleSpec
    nonneg: list[bool] = field(default_factory=list)  # node output known to be >= 0
    model_ref: Any = None
    stats: dict[str, int] = field(default_factory=dict)
    batched: bool = False
    released: bool = False  # a sweep with release=True dropped its forward values

    @property
    def device(self) -> torch.device:
        return self.image.device

    @property
    def images(self) -> int:
        """How many images the state holds (1 unless it is a batch)."""
        return int(self.image.shape[0]) if self.batched else 1

    @property
    def rule_name(self) -> str:
        return self.rule_spec.text

    def layer_shape(self, name: str) -> tuple[int, ...]:
        """Shape of layer ``name``'s activation without the batch dimension."""
        return tuple(self.shapes[self.graph.layer_node(name)][1:])

    def denominator_boxes(self) -> dict[str, Box | None]:
        """{weighted node: output box its cached denominators cover (None: the whole map)}
        for the nodes a sweep has reached so far."""
        return {k.name: k.cached.box for k in self.kinds
                if isinstance(k, Weighted) and k.cached is not None}

    def matches(self, model: nn.Module, image: torch.Tensor) -> bool:
        """Whether this state was made for ``model`` and ``image``."""
        return (self.model_ref is not None and self.model_ref() is model
                and tuple(self.image.shape) == tuple(image.shape)
                and torch.equal(self.image, image.to(self.image.device, self.image.dtype)))


def forward_state(
    model: nn.Module, image: torch.Tensor, rule: RuleLike = "alpha1beta0",
    graph: Graph | None = None,
) -> ForwardState:
    """Run ``model`` on ``image`` (3,H,W) and prepare every layer's backward step.

    ``rule`` is anything :func:`~.rules.parse_rules` accepts.
    """
    return _run(model, check_image(image), rule, graph, batched=False)


def forward_batch(
    model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor],
    rule: RuleLike = "alpha1beta0", graph: Graph | None = None,
) -> ForwardState:
    """:func:`forward_state` of a batch of images of one size, in one forward pass.

    ``images`` is (N,3,H,W) or a sequence of (3,H,W). The state is the batch's (its
    ``image`` is (N,3,H,W), its ``scores`` (N,K,...)); :func:`~.relevance.lrp_batch`
    explains one concept per image on it in one sweep.
    """
    return _run(model, check_images(images), rule, graph, batched=True)


def _run(model: nn.Module, image: torch.Tensor, rule: RuleLike, graph: Graph | None,
         batched: bool) -> ForwardState:
    spec = parse_rules(rule)
    model = unwrap(model)
    device, dtype = model_device_dtype(model)
    graph = graph if graph is not None else build_graph(model)
    nodes = graph.nodes
    kinds = [node_kind(i, n) for i, n in enumerate(nodes)]
    ruled = {i: (k.name, k.kind) for i, k in enumerate(kinds) if k.takes_rule}
    for i, rule_ in resolve_rules(spec, ruled, graph.layers, graph.first).items():
        kinds[i].rule = rule_
    x0 = image.to(device=device, dtype=dtype)
    state = ForwardState(graph, x0, x0, [], kinds, spec, batched=batched)
    try:
        state.model_ref = weakref.ref(model)
    except TypeError:  # pragma: no cover
        state.model_ref = None
    remaining = [0] * len(nodes)
    for n in nodes:
        for j in n.inputs:
            remaining[j] += 1
    for kind in kinds:
        if isinstance(kind, ReLU):
            (j,) = kind.inputs
            kind.overwrite = (kinds[j].new_output and remaining[j] == 1 and j != graph.output
                              and not kinds[j].keeps_output)
    outs: list[Any] = [None] * len(nodes)
    with torch.no_grad():
        for i, kind in enumerate(kinds):
            outs[i] = kind.forward(state, [outs[j] for j in kind.inputs])
            state.nonneg.append(kind.nonneg(state))
            state.shapes.append(outs[i].shape)
            for j in kind.inputs:
                remaining[j] -= 1
                if remaining[j] == 0 and j != graph.output:
                    outs[j] = None  # the node objects keep what the sweep needs
    scores = outs[graph.output]
    state.scores = check_scores(scores if batched else scores[0])
    return state
