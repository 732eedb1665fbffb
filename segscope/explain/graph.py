"""The model as an explicit list of nodes for the LRP sweep, with BatchNorm folded away.

LRP needs to know, for every layer, what it computes: a convolution with which weights, a
max-pool and where its indices go, a concatenation of which inputs. Rather than hooking
autograd, segscope walks the model once and writes that down as a :class:`Graph` — a list
of :class:`Node` in forward order (SPEC §3, thesis §8.1):

* ``conv`` / ``linear`` with BatchNorm folded in (``w' = w·γ/σ``,
  ``b' = (b − μ)·γ/σ + β``): the same forward output, no BN layers left;
* ``relu``, ``maxpool`` (keeps its indices), ``maxunpool`` (uses the indices of its pool),
  ``cat`` (channel concatenation), ``add`` (two tensors), ``flatten``;
* for SegNet, ``pad`` and ``crop`` for its padding to multiples of 32.

SegNet gets a dedicated builder from its known structure (its forward keeps pool indices
in a dict, which tracing cannot follow). Any other ``nn.Module`` is traced with
:mod:`torch.fx`; anything the sweep cannot handle is a :class:`SegscopeError` naming it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import unwrap
from ..errors import SegscopeError
from ..models import SegNet

SUPPORTED = (
    "Conv2d, BatchNorm2d, ReLU, MaxPool2d, MaxUnpool2d, Linear, Flatten, Dropout, "
    "Identity, cat, add"
)


@dataclass
class Node:
    """One operation of the model.

    Attributes
    ----------
    kind
        ``input``, ``conv``, ``linear``, ``relu``, ``maxpool``, ``maxunpool``, ``cat``,
        ``add``, ``flatten``, ``pad`` or ``crop``.
    name
        Unique name: the layer name for SegNet (``conv1_1``), the module's qualified name
        or the fx node name for traced models.
    inputs
        Indices of the nodes whose outputs this node reads.
    params
        Kind-specific values: ``weight``/``bias`` (folded) and the convolution geometry,
        the pool geometry, the index of the pool a ``maxunpool`` takes indices from, ...
    cache
        What the node computes once per model and every image reuses (the weight
        variants of the rules: W⁺, the transposed weights; :mod:`.ops`).
    """

    kind: str
    name: str
    inputs: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_linear(self) -> bool:
        """Whether this node is a weighted layer that LRP rules apply to."""
        return self.kind in ("conv", "linear")


@dataclass
class Graph:
    """Nodes in forward order, the public layer names and the output node."""

    nodes: list[Node]
    layers: dict[str, int]  # public layer name -> node whose output is that layer
    output: int
    first: int  # the first weighted node (the pixel layer)
    class_names: tuple[str, ...] | None = None

    def layer_node(self, name: str) -> int:
        """Index of the node holding layer ``name``; SegscopeError for an unknown name."""
        if name not in self.layers:
            names = list(self.layers)
            sample = ", ".join(names[:4]) + (f", …, {names[-1]}" if len(names) > 4 else "")
            raise SegscopeError(f"unknown layer {name!r} (layers: {sample})")
        return self.layers[name]


# -- BatchNorm folding -------------------------------------------------------------------
def fold_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``bn(conv(x))`` as one convolution (thesis §8.1).

    ``w' = w·γ/σ`` and ``b' = (b − μ)·γ/σ + β`` with ``σ = sqrt(var + eps)``, using the
    running statistics (the model in eval mode).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise SegscopeError("BatchNorm without running statistics cannot be folded for LRP")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.to(weight.dtype) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.to(weight.dtype)
        shift = bn.bias.to(weight.dtype) if bn.bias is not None else torch.zeros_like(scale)
        b = bias if bias is not None else torch.zeros_like(scale)
        w = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        b = (b - bn.running_mean.to(weight.dtype)) * scale + shift
    return w.detach().clone(), b.detach().clone()


def _conv_params(conv: nn.Conv2d, name: str) -> dict[str, Any]:
    if conv.padding_mode != "zeros":
        raise SegscopeError(
            f"unsupported module {name!r} (Conv2d with padding_mode={conv.padding_mode!r}): "
            "segscope LRP supports zero padding only"
        )
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same" with stride 1: symmetric for odd kernels
            k, d = conv.kernel_size, conv.dilation
            if any((k_ - 1) * d_ % 2 for k_, d_ in zip(k, d, strict=True)):
                raise SegscopeError(
                    f"unsupported module {name!r} (Conv2d padding='same' with an even kernel)"
                )
            padding = tuple((k_ - 1) * d_ // 2 for k_, d_ in zip(k, d, strict=True))
    return {
        "weight": conv.weight.detach().clone(),
        "bias": None if conv.bias is None else conv.bias.detach().clone(),
        "stride": tuple(conv.stride),
        "padding": tuple(padding),
        "dilation": tuple(conv.dilation),
        "groups": conv.groups,
    }


def _pool_params(pool: nn.MaxPool2d) -> dict[str, Any]:
    return {
        "kernel_size": pool.kernel_size,
        "stride": pool.stride,
        "padding": pool.padding,
        "dilation": pool.dilation,
        "ceil_mode": pool.ceil_mode,
    }


def _unsupported(name: str, what: str) -> SegscopeError:
    return SegscopeError(
        f"unsupported module {name!r} ({what}): segscope LRP supports {SUPPORTED}"
    )


def _check(module: nn.Module, types: tuple[type, ...], name: str) -> None:
    if not isinstance(module, types):
        raise _unsupported(name, type(module).__name__)


# -- SegNet ------------------------------------------------------------------------------
def segnet_graph(model: SegNet) -> Graph:
    """The node list of a :class:`~segscope.models.SegNet`, from its known structure.

    ``data`` is the image as given; a ``pad`` node pads it to multiples of 32 by edge
    replication (relevance of padded pixels returns to the pixels they copy, see
    :class:`segscope.explain.nodes.Pad`), and a ``crop``
    node after ``conv1_1_D`` crops the scores back; layer ``conv1_1_D`` is the cropped
    scores (K,H,W). A conv layer's relevance is taken at its ReLU output.
    """
    from ..models import ConvBNReLU

    nodes: list[Node] = [Node("input", "data", [])]
    layers = {"data": 0}
    nodes.append(Node("pad", "data.pad", [0], {"multiple": 32}))
    pools: dict[str, int] = {}
    first = None
    for name in model.layer_names[1:]:
        module = getattr(model, name)
        prev = len(nodes) - 1
        if name.startswith("conv"):
            if isinstance(module, ConvBNReLU):
                _check(module.conv, (nn.Conv2d,), f"{name}.conv")
                _check(module.bn, (nn.BatchNorm2d,), f"{name}.bn")
                _check(module.relu, (nn.ReLU,), f"{name}.relu")
                params = _conv_params(module.conv, f"{name}.conv")
                params["weight"], params["bias"] = fold_bn(
                    params["weight"], params["bias"], module.bn
                )
                nodes.append(Node("conv", name, [prev], params))
                first = len(nodes) - 1 if first is None else first
                nodes.append(Node("relu", f"{name}.relu", [len(nodes) - 1]))
            else:
                _check(module, (nn.Conv2d,), name)
                nodes.append(Node("conv", name, [prev], _conv_params(module, name)))
                nodes.append(Node("crop", f"{name}.crop", [len(nodes) - 1], {"ref": 0}))
        elif name.startswith("pool"):
            _check(module, (nn.MaxPool2d,), name)
            nodes.append(Node("maxpool", name, [prev], _pool_params(module)))
            pools[name[len("pool"):]] = len(nodes) - 1
        else:  # upsampleN
            _check(module, (nn.MaxUnpool2d,), name)
            nodes.append(Node("maxunpool", name, [prev], {"pool": pools[name[len("upsample"):]]}))
        layers[name] = len(nodes) - 1
    return Graph(nodes, layers, len(nodes) - 1, first, tuple(model.class_names))


# -- generic models via torch.fx ---------------------------------------------------------
_ADD = (operator.add, torch.add)
_CAT = (torch.cat, getattr(torch, "concat", torch.cat))
_RELU = (F.relu, torch.relu)
_FLATTEN = (torch.flatten,)


def fx_graph(model: nn.Module) -> Graph:
    """Trace ``model`` with :mod:`torch.fx` and translate it into a :class:`Graph`."""
    import torch.fx

    try:
        traced = torch.fx.symbolic_trace(model)
    except SegscopeError:
        raise
    except Exception as exc:  # noqa: BLE001 - tracing failures are the user's model
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise SegscopeError(
            f"cannot trace {type(model).__name__} for LRP ({msg}); segscope LRP supports "
            f"models built from {SUPPORTED}"
        ) from None
    modules = dict(traced.named_modules())
    nodes: list[Node] = []
    layers: dict[str, int] = {}
    where: dict[Any, Any] = {}  # fx node -> node index, or ("indices", pool index)
    users = {n: list(n.users) for n in traced.graph.nodes}
    output = None

    def add(node: Node, fx_node, public: str | None = None) -> int:
        nodes.append(node)
        where[fx_node] = len(nodes) - 1
        layers[public or node.name] = len(nodes) - 1
        return len(nodes) - 1

    def arg(a) -> int:
        if a not in where or isinstance(where[a], tuple):
            raise SegscopeError(f"unsupported use of {a} in the traced model for LRP")
        return where[a]

    for n in traced.graph.nodes:
        if n.op == "placeholder":
            if any(nd.kind == "input" for nd in nodes):
                raise SegscopeError("segscope LRP supports models with one input")
            add(Node("input", "data", []), n)
        elif n.op == "get_attr":
            raise _unsupported(str(n.target), "parameter used as a tensor")
        elif n.op == "output":
            output = arg(n.args[0])
        elif n.op == "call_module":
            name, m = str(n.target), modules[n.target]
            if isinstance(m, nn.Conv2d):
                add(Node("conv", name, [arg(n.args[0])], _conv_params(m, name)), n)
            elif isinstance(m, nn.BatchNorm2d):
                src = arg(n.args[0])
                prev = nodes[src]
                alone = len(users[n.args[0]]) == 1
                if prev.kind == "conv" and alone and not prev.params.get("folded"):
                    prev.params["weight"], prev.params["bias"] = fold_bn(
                        prev.params["weight"], prev.params["bias"], m
                    )
                    prev.params["folded"] = True
                    where[n] = src
                    layers[name] = src
                else:  # a lone BN is a per-channel affine map: a depthwise 1x1 conv
                    c = m.num_features
                    w, b = fold_bn(torch.ones(c, 1, 1, 1), None, m)
                    params = {"weight": w, "bias": b, "stride": (1, 1), "padding": (0, 0),
                              "dilation": (1, 1), "groups": c}
                    add(Node("conv", name, [src], params), n)
            elif isinstance(m, nn.ReLU):
                add(Node("relu", name, [arg(n.args[0])]), n)
            elif isinstance(m, nn.MaxPool2d):
                add(Node("maxpool", name, [arg(n.args[0])], _pool_params(m)), n)
                if m.return_indices:
                    nodes[-1].params["returns_indices"] = True
            elif isinstance(m, nn.MaxUnpool2d):
                idx = n.args[1] if len(n.args) > 1 else n.kwargs.get("indices")
                handle = where.get(idx)
                if not (isinstance(handle, tuple) and handle[0] == "indices"):
                    raise _unsupported(name, "MaxUnpool2d whose indices do not come from a "
                                             "MaxPool2d of the model")
                add(Node("maxunpool", name, [arg(n.args[0])], {"pool": handle[1]}), n)
            elif isinstance(m, nn.Linear):
                params = {"weight": m.weight.detach().clone(),
                          "bias": None if m.bias is None else m.bias.detach().clone()}
                add(Node("linear", name, [arg(n.args[0])], params), n)
            elif isinstance(m, nn.Flatten):
                add(Node("flatten", name, [arg(n.args[0])], {"start": m.start_dim,
                                                             "end": m.end_dim}), n)
            elif isinstance(m, nn.Identity | nn.Dropout | nn.Dropout2d):
                where[n] = arg(n.args[0])
                layers[name] = where[n]
            else:
                raise _unsupported(name, type(m).__name__)
        elif n.op == "call_function":
            f = n.target
            if f is operator.getitem and isinstance(where.get(n.args[0]), int) and \
                    nodes[where[n.args[0]]].params.get("returns_indices"):
                pool = where[n.args[0]]
                if n.args[1] == 0:
                    where[n] = pool
                elif n.args[1] == 1:
                    where[n] = ("indices", pool)
                else:
                    raise _unsupported(n.name, "index into a max-pool result")
            elif f in _ADD:
                a, b = n.args[:2]
                if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)) \
                        or n.kwargs.get("alpha", 1) != 1 or len(n.args) > 2:
                    raise _unsupported(n.name, "add with a constant")
                add(Node("add", n.name, [arg(a), arg(b)]), n)
            elif f in _CAT:
                tensors = n.args[0]
                dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
                if dim not in (1, -3):
                    raise _unsupported(n.name, f"cat along dim {dim}; only channels (dim=1)")
                add(Node("cat", n.name, [arg(t) for t in tensors]), n)
            elif f in _RELU:
                add(Node("relu", n.name, [arg(n.args[0])]), n)
            elif f in _FLATTEN:
                start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
                end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
                add(Node("flatten", n.name, [arg(n.args[0])], {"start": start, "end": end}), n)
            else:
                fname = getattr(f, "__name__", str(f))
                raise SegscopeError(
                    f"unsupported operation {n.name!r} ({fname}): segscope LRP supports "
                    f"{SUPPORTED}"
                )
        elif n.op == "call_method":
            if n.target == "relu":
                add(Node("relu", n.name, [arg(n.args[0])]), n)
            elif n.target == "flatten":
                start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
                add(Node("flatten", n.name, [arg(n.args[0])], {"start": start, "end": -1}), n)
            else:
                raise SegscopeError(
                    f"unsupported operation {n.name!r} (tensor.{n.target}): segscope LRP "
                    f"supports {SUPPORTED}"
                )
    if output is None:
        raise SegscopeError(f"{type(model).__name__} has no traceable output")
    for node in nodes:
        if node.kind == "flatten" and node.params["start"] == 0:
            raise _unsupported(node.name, "flatten over the batch dimension")
    linear = [i for i, nd in enumerate(nodes) if nd.is_linear]
    if not linear:
        raise SegscopeError(f"{type(model).__name__} has no Conv2d or Linear layer to explain")
    names = getattr(model, "class_names", None)
    return Graph(nodes, layers, output, linear[0], tuple(names) if names else None)


def build_graph(model: nn.Module) -> Graph:
    """The LRP node list of ``model``: SegNet by structure, anything else via torch.fx."""
    model = unwrap(model)
    if not isinstance(model, nn.Module):
        raise SegscopeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, SegNet):
        return segnet_graph(model)
    return fx_graph(model)
