"""LRP rules as small data objects (SPEC §3, thesis §6).

A rule looks at one weighted layer (convolution or linear map) once per image and
returns its backward step as a list of :class:`Term` ``(a, s, w)``: the relevance R of the
layer's outputs goes back to its inputs as

    R_in = Σ_t  a_t ⊙ Wᵀ_t (R ⊙ s_t)

where ``s_t`` (output-shaped) holds everything that depends on the forward pass only —
the reciprocal denominators 1/z_j with the 0/0 = 0 guard, times α or −β — ``w_t`` is the
weight variant (W⁺, W⁻, W + γW⁺, ...), ``Wᵀ`` the transposed operation
(``conv_transpose``) and ``a_t`` (input-shaped) the input activations x, x⁺, x⁻ or a bound.
All of that is computed once per image; the relevance sweep is then one transposed
convolution per term for a whole batch of concepts.

Notation as in SPEC §3: z_ij = x_i w_ij, f⁺ = max(f, 0), f⁻ = min(f, 0).

Nodes without weights that merge inputs have rules too (:class:`SplitRule`): an
addition splits its relevance in proportion to the summands (:class:`Proportional`), a
concatenation by channel (:class:`ChannelSplit`).

Every rule can be written as a string: ``alpha1beta0``, ``alpha2beta1``,
``alpha1beta0:nobias``, ``epsilon``, ``epsilon:0.01``, ``zplus``, ``gamma``,
``gamma:0.25``, ``flat``, ``wsquare``, ``zbox``, ``zbox:-1:1``, ``proportional``.
A whole specification — one rule, or rules per layer such as
``conv1_1=zbox,conv=alpha1beta0,default=epsilon:0.01`` or the same as a dict — is parsed
in one place, :func:`parse_rules`, into a :class:`RuleSpec`; every ``rule=`` argument and
every command's ``--rule`` goes through it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from ..errors import SegscopeError


class LinearOp(Protocol):
    """The forward map of one weighted layer: ``fwd(x, w, b) = conv(x, w) + b``."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def fwd(self, x: torch.Tensor, w: torch.Tensor,
            b: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass
class Term:
    """One term ``a ⊙ Wᵀ(R ⊙ s)`` of a rule's backward step (``None`` means 1)."""

    a: torch.Tensor | None
    s: torch.Tensor | None
    w: torch.Tensor


def recip(z: torch.Tensor) -> torch.Tensor:
    """1/z with the 0/0 = 0 guard of SPEC §3: 0 where z is 0.

    (Also 0 where 1/z overflows, i.e. |z| below ~1e-38 in float32: such a denominator
    is a zero that rounding left over.)
    """
    return torch.nan_to_num_(torch.reciprocal(z), nan=0.0, posinf=0.0, neginf=0.0)


def recip_(z: torch.Tensor) -> torch.Tensor:
    """:func:`recip` in place, for a ``z`` made for the purpose (no second map)."""
    return torch.nan_to_num_(z.reciprocal_(), nan=0.0, posinf=0.0, neginf=0.0)


def _scaled(c: float, t: torch.Tensor) -> torch.Tensor:
    """``c · t``, in place (``t`` is a temporary) and skipped for c = 1."""
    return t if c == 1 else t.mul_(c)


def weight_part(op: LinearOp, sign: int) -> torch.Tensor:
    """W⁺ (``sign`` > 0) or W⁻ of the layer: cached per model by segscope's own ops,
    computed here for any other :class:`LinearOp`."""
    part = getattr(op, "part", None)
    if part is not None:
        return part(sign)
    return op.weight.clamp(min=0) if sign > 0 else op.weight.clamp(max=0)


def _bias_map(b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Bias ``b`` (C,) shaped to broadcast over an output ``z`` (B,C,...)."""
    return b.reshape((-1,) + (1,) * (z.dim() - 2))


def _pos(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


def _num(v: float) -> str:
    return f"{v:g}"


class Rule:
    """Base class: ``terms(x, op)`` gives the backward step of one layer.

    ``applies_to`` names the node kinds the rule can be given to.
    """

    applies_to: ClassVar[tuple[str, ...]] = ("conv", "linear")
    #: The rule's denominators are the layer's own outputs: the forward pass keeps them
    #: and hands them to :meth:`terms` as ``z`` (no second convolution).
    uses_output: ClassVar[bool] = False

    def terms(self, x: torch.Tensor, op: LinearOp,
              nonneg: bool | None = None) -> list[Term]:  # pragma: no cover
        """The backward terms of one layer with input ``x`` (batch 1).

        ``nonneg`` says whether ``x`` is known to be >= 0 (post-ReLU); ``None``: check.
        Rules with :attr:`uses_output` also take ``z=``, the layer's output ``op.fwd(x,
        op.weight, op.bias)`` as the forward pass computed it (``None``: computed here).
        """
        raise NotImplementedError

    @property
    def name(self) -> str:  # pragma: no cover
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """The α-β rule of eq 6.7 with the bias in the denominators (SPEC §3).

    R_i = Σ_j R_j (α z_ij⁺ / z_j⁺ − β z_ij⁻ / z_j⁻), z_j⁺ = Σ_i z_ij⁺ + b_j⁺,
    z_j⁻ = Σ_i z_ij⁻ + b_j⁻; α − β = 1, β ≥ 0. ``bias=False`` leaves the biases out of
    the denominators (then a layer conserves relevance up to the 0/0 guard).
    """

    alpha: float = 1.0
    beta: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise SegscopeError(
                f"the alpha-beta rule needs alpha - beta = 1 and beta >= 0, got "
                f"alpha={_num(self.alpha)}, beta={_num(self.beta)}"
            )

    @property
    def name(self) -> str:
        return f"alpha{_num(self.alpha)}beta{_num(self.beta)}" + ("" if self.bias else ":nobias")

    def terms(self, x: torch.Tensor, op: LinearOp,
              nonneg: bool | None = None) -> list[Term]:
        b = op.bias if self.bias else None
        wp = weight_part(op, 1)
        if nonneg is None:
            nonneg = bool((x >= 0).all())
        if nonneg:
            # Post-ReLU inputs: z_ij⁺ = x_i w_ij⁺, so one transposed conv per sign.
            out = [Term(x, _scaled(self.alpha, recip_(op.fwd(x, wp, _pos(b)))), wp)]
            if self.beta:
                wn = weight_part(op, -1)
                out.append(Term(x, _scaled(-self.beta, recip_(op.fwd(x, wn, _neg(b)))), wn))
            return out
        wn = weight_part(op, -1)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        sp = _scaled(self.alpha, recip_(op.fwd(xp, wp, _pos(b)).add_(op.fwd(xn, wn))))
        out = [Term(xp, sp, wp), Term(xn, sp, wn)]
        if self.beta:
            sn = _scaled(-self.beta, recip_(op.fwd(xp, wn, _neg(b)).add_(op.fwd(xn, wp))))
            out += [Term(xp, sn, wn), Term(xn, sn, wp)]
        return out


@dataclass(frozen=True)
class ZPlus(Rule):
    """The z⁺ rule: positive contributions only, biases left out (= α1β0 without bias)."""

    @property
    def name(self) -> str:
        return "zplus"

    def terms(self, x: torch.Tensor, op: LinearOp,
              nonneg: bool | None = None) -> list[Term]:
        return AlphaBeta(1.0, 0.0, bias=False).terms(x, op, nonneg)


@dataclass(frozen=True)
class Epsilon(Rule):
    """The ε rule: R_i = Σ_j z_ij / (z_j + ε sign(z_j)) R_j, z_j with the bias.

    sign(0) is taken as +1, so the denominator is never 0 for ε > 0.
    """

    eps: float = 1e-6
    bias: bool = True
    uses_output: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise SegscopeError(f"epsilon must be >= 0, got {self.eps}")

    @property
    def name(self) -> str:
        return f"epsilon:{_num(self.eps)}" + ("" if self.bias else ":nobias")

    def terms(self, x: torch.Tensor, op: LinearOp, nonneg: bool | None = None,
              z: torch.Tensor | None = None) -> list[Term]:
        if z is None:
            z = op.fwd(x, op.weight, op.bias if self.bias else None)
        elif not self.bias and op.bias is not None:
            z = z - _bias_map(op.bias, z)
        # z may be the forward's output, which others read: left as it is
        shift = torch.where(z >= 0, 1.0, -1.0).to(z.dtype).mul_(self.eps)
        return [Term(x, recip_(shift.add_(z)), op.weight)]


@dataclass(frozen=True)
class Gamma(Rule):
    """The γ rule: weights w + γw⁺ and bias b + γb⁺, R_i = Σ_j x_i w'_ij / z'_j R_j.

    Meant for non-negative inputs (post-ReLU); for mixed signs it is applied as written.
    """

    gamma: float = 0.25
    bias: bool = True

    def __post_init__(self) -> None:
        if not self.gamma >= 0:
            raise SegscopeError(f"gamma must be >= 0, got {self.gamma}")

    @property
    def name(self) -> str:
        return f"gamma:{_num(self.gamma)}" + ("" if self.bias else ":nobias")

    def terms(self, x: torch.Tensor, op: LinearOp,
              nonneg: bool | None = None) -> list[Term]:
        w = op.weight + self.gamma * op.weight.clamp(min=0)
        b = None
        if self.bias and op.bias is not None:
            b = op.bias + self.gamma * op.bias.clamp(min=0)
        return [Term(x, recip_(op.fwd(x, w, b)), w)]


@dataclass(frozen=True)
class Flat(Rule):
    """The flat rule: every connected input gets an equal share, z_ij = 1."""

    @property
    def name(self) -> str:
        return "flat"

    def terms(self, x: torch.Tensor, op: LinearOp,
              nonneg: bool | None = None) -> list[Term]:
        ones = torch.ones_like(op.weight)
        return [Term(None, recip_(op.fwd(torch.ones_like(x), ones)), ones)]


@dataclass(frozen=True)
class WSquare(Rule):
    """The w² rule: shares proportional to the squared weights, z_ij = w_ij²."""

    @property
    def name(self) -> str:
        return "wsquare"

    def terms(self, x: torch.Tensor, op: LinearOp,
              nonneg: bool | None = None) -> list[Term]:
        w2 = op.weight * op.weight
        return [Term(None, recip_(op.fwd(torch.ones_like(x), w2)), w2)]


@dataclass(frozen=True)
class ZBox(Rule):
    """The z^B rule for the pixel layer, inputs bounded in [low, high].

    z_ij = x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻ (no bias). ``low``/``high`` are scalars or
    one value per input channel; the default [0, 1] is the range of segscope images.
    """

    low: float | tuple[float, ...] = 0.0
    high: float | tuple[float, ...] = 1.0

    @property
    def name(self) -> str:
        if self.low == 0.0 and self.high == 1.0:
            return "zbox"
        return f"zbox:{self.low}:{self.high}"

    def terms(self, x: torch.Tensor, op: LinearOp,
              nonneg: bool | None = None) -> list[Term]:
        w = op.weight
        wp, wn = weight_part(op, 1), weight_part(op, -1)
        lo, hi = _bound(self.low, x), _bound(self.high, x)
        s = recip_(op.fwd(x, w).sub_(op.fwd(lo, wp)).sub_(op.fwd(hi, wn)))
        return [Term(x, s, w), Term(-lo, s, wp), Term(-hi, s, wn)]


def _bound(value: Any, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.dim() == 1 and x.dim() == 4:
        if t.numel() != x.shape[1]:
            raise SegscopeError(
                f"zbox bounds have {t.numel()} values, the layer has {x.shape[1]} input channels"
            )
        t = t.view(1, -1, 1, 1)
    return t.expand_as(x).contiguous()


# -- rules of the nodes without weights ---------------------------------------------------
class SplitRule(Rule):
    """Base class of the rules of nodes that merge several inputs (``add``, ``cat``).

    ``split(parts, r)`` gives each input's relevance from the relevance ``r`` of the
    node's output and the forward values ``parts`` of its inputs (batch 1).
    """

    def split(self, parts: Sequence[torch.Tensor],
              r: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Proportional(SplitRule):
    """Addition ``a + b``: each summand gets its share z_a / (z_a + z_b) (no bias, 0/0 = 0)."""

    applies_to: ClassVar[tuple[str, ...]] = ("add",)

    @property
    def name(self) -> str:
        return "proportional"

    def split(self, parts: Sequence[torch.Tensor], r: torch.Tensor) -> list[torch.Tensor]:
        a, b = parts
        share = r * recip_(a + b)
        return [share * a, share * b]


@dataclass(frozen=True)
class ChannelSplit(SplitRule):
    """Channel concatenation: each input gets the relevance of its own channels."""

    applies_to: ClassVar[tuple[str, ...]] = ("cat",)

    @property
    def name(self) -> str:
        return "channels"

    def split(self, parts: Sequence[torch.Tensor], r: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(r, [p.shape[1] for p in parts], dim=1))


# -- parsing -----------------------------------------------------------------------------
#: Rule names and their classes; the parameters after ``:`` are the class's fields in
#: order (``epsilon:0.01`` is ``Epsilon(0.01)``). Adding a rule is one line here.
RULES: dict[str, Callable[..., Rule]] = {
    "epsilon": Epsilon,
    "zplus": ZPlus,
    "gamma": Gamma,
    "flat": Flat,
    "wsquare": WSquare,
    "zbox": ZBox,
    "proportional": Proportional,
    "channels": ChannelSplit,
}

#: Rule names shown in help texts and error messages.
RULE_NAMES = ("alpha1beta0", "alpha2beta1", "epsilon", "zplus", "gamma", "flat", "wsquare",
              "zbox")

#: Default rule of the nodes of each kind without an explicit one.
DEFAULTS: dict[str, Rule] = {"conv": AlphaBeta(), "linear": AlphaBeta(),
                             "add": Proportional(), "cat": ChannelSplit()}

#: Keys of a per-layer rule mapping that are not layer names.
TYPE_KEYS = ("first", "conv", "linear", "add", "default")

_ALPHA_BETA = re.compile(r"^alpha([0-9.]+)beta([0-9.]+)(:nobias)?$")


def _float(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SegscopeError(f"bad number {text!r} in rule {spec!r}") from None
    if not math.isfinite(value):  # inf zeroes every share, nan poisons them
        raise SegscopeError(f"bad number {text!r} in rule {spec!r}: not finite")
    return value


def parse_rule(spec: Rule | str) -> Rule:
    """A :class:`Rule` from a rule object or its string form (see the module docstring)."""
    if isinstance(spec, Rule):
        return spec
    if not isinstance(spec, str):
        raise SegscopeError(f"a rule is a name or a Rule object, got {spec!r}")
    text = spec.strip().lower()
    m = _ALPHA_BETA.match(text)
    if m:
        return AlphaBeta(_float(m.group(1), spec), _float(m.group(2), spec),
                         bias=m.group(3) is None)
    head, *args = text.split(":")
    nobias = "nobias" in args
    args = [a for a in args if a != "nobias"]
    if head not in RULES:
        raise SegscopeError(
            f"unknown LRP rule {spec.strip()!r}; choose one of {', '.join(RULE_NAMES)} "
            "(e.g. epsilon:0.01, gamma:0.25, alpha2beta1)"
        )
    make = RULES[head]
    numeric = [f.name for f in dataclasses.fields(make) if f.name != "bias"] \
        if dataclasses.is_dataclass(make) else None
    if numeric is not None and len(args) > len(numeric):
        raise SegscopeError(f"rule {spec.strip()!r} has too many parameters "
                            f"({head} takes {', '.join(numeric) or 'none'})")
    try:
        rule = make(*(_float(a, spec) for a in args))
    except TypeError:
        raise SegscopeError(f"rule {spec.strip()!r} has too many parameters") from None
    if nobias and hasattr(rule, "bias"):
        rule = dataclasses.replace(rule, bias=False)
    return rule


@dataclass(frozen=True)
class RuleSpec:
    """A parsed rule specification: one rule for every layer, or per-layer entries.

    Build it with :func:`parse_rules`. ``entries`` is ``(("*", rule),)`` for one rule,
    else ``((key, rule), ...)`` with keys layer names or :data:`TYPE_KEYS`.
    """

    entries: tuple[tuple[str, Rule], ...]

    @property
    def single(self) -> Rule | None:
        """The one rule of every layer, or ``None`` for a per-layer spec."""
        (key, rule), *rest = self.entries
        return rule if key == "*" and not rest else None

    @property
    def text(self) -> str:
        """The spec as text, accepted back by :func:`parse_rules`."""
        if self.single is not None:
            return self.single.name
        return ", ".join(f"{k}={r.name}" for k, r in self.entries)

    def __str__(self) -> str:
        return self.text


#: Every form a rule specification can take (see :func:`parse_rules`).
RuleLike = RuleSpec | Rule | str | Mapping[str, Rule | str] | Sequence[tuple[str, Rule | str]]


def parse_rules(spec: RuleLike) -> RuleSpec:
    """The typed rule specification from any form the API and the CLI accept.

    ``spec`` is a :class:`RuleSpec`, a :class:`Rule`, a rule name (``"alpha1beta0"``,
    ``"epsilon:0.01"``), a per-layer text (``"conv1_1=zbox,conv=alpha1beta0,
    default=epsilon:0.01"``), a mapping ``{layer or kind key: rule}`` or a list of
    ``(key, rule)`` pairs. Errors name the bad part in one line.
    """
    if isinstance(spec, RuleSpec):
        return spec
    if isinstance(spec, Rule):
        return RuleSpec((("*", spec),))
    if isinstance(spec, str):
        if "=" not in spec:
            return RuleSpec((("*", parse_rule(spec)),))
        pairs: list[Any] = []
        for part in spec.split(","):
            if "=" not in part:
                raise SegscopeError(f"rule {spec!r}: expected layer=rule pairs separated by "
                                    f"commas, got {part.strip()!r}")
            key, value = part.split("=", 1)
            pairs.append((key.strip(), value.strip()))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    elif isinstance(spec, Sequence):
        pairs = list(spec)
    else:
        raise SegscopeError(f"a rule is a name, a per-layer text or mapping, or a Rule "
                            f"object; got {type(spec).__name__}")
    if not pairs:
        raise SegscopeError("the per-layer rule specification is empty")
    entries: list[tuple[str, Rule]] = []
    for item in pairs:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise SegscopeError(f"a per-layer rule is a (layer, rule) pair, got {item!r}")
        key = str(item[0]).strip()
        if not key:
            raise SegscopeError(f"a per-layer rule has an empty layer name: {item!r}")
        if key in (k for k, _ in entries):
            raise SegscopeError(f"rule given twice for {key!r}")
        try:
            entries.append((key, parse_rule(item[1])))
        except SegscopeError as exc:
            raise SegscopeError(f"{key}={item[1]}: {exc}") from None
    return RuleSpec(tuple(entries))


def resolve_rules(
    spec: RuleSpec,
    nodes: Mapping[int, tuple[str, str]],
    aliases: Mapping[str, int],
    first: int,
) -> dict[int, Rule]:
    """The rule of every node that has one (weighted layers, additions, concatenations).

    A layer name beats ``first`` (the pixel layer), ``first`` beats the node's kind
    (``conv``, ``linear``, ``add``), the kind beats ``default``; without ``default``,
    weighted layers get ``alpha1beta0``. ``default`` and ``first`` reach weighted layers
    only; an addition keeps :class:`Proportional` and a concatenation
    :class:`ChannelSplit` unless named.

    Parameters
    ----------
    nodes
        node index -> (node name, kind) of the nodes that take a rule.
    aliases
        Other names (public layer names) -> node index.
    first
        The node index of the pixel layer.
    """
    weighted = ("conv", "linear")
    if spec.single is not None:
        by_key = {"default": spec.single}
        by_node: dict[int, Rule] = {}
    else:
        by_key, by_node = {}, {}
        names = {name: i for i, (name, _) in nodes.items()}
        for key, rule in spec.entries:
            if key in TYPE_KEYS:
                by_key[key] = rule
                continue
            index = names.get(key, aliases.get(key))
            if index is None or index not in nodes:
                sample = ", ".join(n for n, k in list(nodes.values()) if k in weighted)
                sample = ", ".join(sample.split(", ")[:4])
                raise SegscopeError(
                    f"rule given for {key!r}, which is not a conv/linear/add layer of this "
                    f"model (e.g. {sample}; or one of {', '.join(TYPE_KEYS)})"
                )
            by_node[index] = rule
    out: dict[int, Rule] = {}
    for i, (name, kind) in nodes.items():
        if i in by_node:
            rule, key = by_node[i], name
        elif i == first and "first" in by_key:
            rule, key = by_key["first"], "first"
        elif kind in by_key:
            rule, key = by_key[kind], kind
        elif kind in weighted and "default" in by_key:
            rule, key = by_key["default"], "default"
        else:
            rule, key = DEFAULTS[kind], ""
        if kind not in rule.applies_to:
            if key in ("default", "first") and kind not in weighted:
                rule = DEFAULTS[kind]
            else:
                raise SegscopeError(
                    f"rule {rule.name!r} (for {key!r}) does not apply to {name!r}, a {kind} "
                    f"node (it applies to {', '.join(rule.applies_to)})"
                )
        out[i] = rule
    return out
