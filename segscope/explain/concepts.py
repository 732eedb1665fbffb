"""Concepts: which output neurons an explanation starts from, and with what relevance.

A concept (SPEC §3, thesis §8.2) selects output neurons of one class — a single pixel, a
mask of pixels, or the true/false positives/negatives of a prediction — and assigns them
an initial relevance: the pre-softmax ``score``, the softmax ``prob``, or ``one``. Every
other output neuron starts at 0. :meth:`Concept.tensor` takes any user relevance tensor.

Concepts are resolved lazily against the model's scores, because ``from_prediction``
needs the prediction and ``score``/``prob`` need the output values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import SegscopeError

ASSIGNMENTS = ("score", "prob", "one")
PREDICTION_KINDS = ("tp", "fp", "fn")
IGNORE = 255


@dataclass(frozen=True, eq=False)
class Concept:
    """Initial relevance on the output scores (K,H,W); build with the class methods.

    Attributes
    ----------
    kind
        ``"pixel"``, ``"mask"``, ``"prediction"`` or ``"tensor"``.
    cls
        Class name or index (``None`` for ``"tensor"``).
    assign
        ``"score"``, ``"prob"`` or ``"one"`` (ignored for ``"tensor"``).
    """

    kind: str
    cls: int | str | None = None
    assign: str = "score"
    y: int | None = None
    x: int | None = None
    pixels: torch.Tensor | None = None  # bool (H,W) for "mask"
    prediction_kind: str | None = None  # tp / fp / fn
    label: torch.Tensor | None = None  # int64 (H,W) for "prediction"
    relevance: torch.Tensor | None = None  # (K,H,W) for "tensor"

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def pixel(cls, class_: int | str, y: int, x: int, assign: str = "one") -> Concept:
        """One output neuron: class ``class_`` at pixel (y, x); relevance 1 by default."""
        _check_assign(assign)
        if not (_is_whole(y) and _is_whole(x)):
            raise SegscopeError(f"pixel coordinates must be integers, got y={y!r}, x={x!r}")
        return cls(kind="pixel", cls=_class_key(class_), assign=assign, y=int(y), x=int(x))

    @classmethod
    def mask(cls, class_: int | str, mask: Any, assign: str = "score") -> Concept:
        """The pixels where ``mask`` (H,W) is true/non-zero, for class ``class_``."""
        _check_assign(assign)
        pixels = _as_bool_mask(mask)
        if not bool(pixels.any()):
            raise SegscopeError("the mask selects no pixels")
        return cls(kind="mask", cls=_class_key(class_), assign=assign, pixels=pixels)

    @classmethod
    def from_prediction(
        cls, class_: int | str, kind: str, label: Any, assign: str = "score"
    ) -> Concept:
        """True positives (``tp``), false positives (``fp``) or false negatives (``fn``)
        of class ``class_``, comparing the model's prediction with ``label`` (H,W).

        Label pixels equal to 255 are ignored. Whether the set is empty is known only once
        the model has run; an empty set is then a :class:`SegscopeError`.
        """
        _check_assign(assign)
        if kind not in PREDICTION_KINDS:
            raise SegscopeError(
                f"unknown prediction kind {kind!r}; choose one of {', '.join(PREDICTION_KINDS)}"
            )
        label_t = torch.as_tensor(np.asarray(label))
        if label_t.is_floating_point() and not bool(torch.isfinite(label_t).all()):
            raise SegscopeError("the label has NaN or infinite values; a label holds "
                                "class ids")
        label_t = label_t.long()
        if label_t.dim() != 2:
            raise SegscopeError(f"a label must be (H,W), got shape {tuple(label_t.shape)}")
        return cls(
            kind="prediction", cls=_class_key(class_), assign=assign,
            prediction_kind=kind, label=label_t,
        )

    @classmethod
    def tensor(cls, relevance: Any) -> Concept:
        """Any user-given initial relevance on the output scores: (K,H,W) for a
        segmentation model, (K,) for a classifier."""
        rel = torch.as_tensor(np.asarray(relevance) if not torch.is_tensor(relevance)
                              else relevance).float()
        if rel.dim() not in (1, 3):
            raise SegscopeError(f"initial relevance must be (K,H,W) (or (K,) for a "
                                f"classifier), got {tuple(rel.shape)}")
        if not bool(torch.isfinite(rel).all()):
            raise SegscopeError("initial relevance has NaN or infinite values")
        return cls(kind="tensor", relevance=rel)

    # -- resolution ----------------------------------------------------------------------
    def class_index(self, class_names: Sequence[str]) -> int:
        """The class index of this concept for a model with ``class_names``."""
        if self.cls is None:
            raise SegscopeError("a tensor concept has no single class")
        return resolve_class(self.cls, class_names)

    def selection(self, scores: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """Bool (H,W): the output pixels this concept selects, given scores (K,H,W)."""
        if self.kind == "tensor":
            return (self._checked_tensor(scores) != 0).any(dim=0)
        if scores.dim() != 3:
            raise SegscopeError(
                f"a {self.kind} concept selects output pixels, but this model outputs scores "
                f"of shape {tuple(scores.shape)} (a classifier, not a segmentation model); "
                "use Concept.tensor() with one relevance per output instead"
            )
        k, h, w = scores.shape
        c = self.class_index(class_names)
        if self.kind == "pixel":
            if not (0 <= self.y < h and 0 <= self.x < w):
                raise SegscopeError(
                    f"pixel ({self.y}, {self.x}) is outside the {h}x{w} image "
                    f"(y in 0..{h - 1}, x in 0..{w - 1})"
                )
            sel = torch.zeros(h, w, dtype=torch.bool, device=scores.device)
            sel[self.y, self.x] = True
            return sel
        if self.kind == "mask":
            if tuple(self.pixels.shape) != (h, w):
                raise SegscopeError(
                    f"mask is {tuple(self.pixels.shape)[0]}x{tuple(self.pixels.shape)[1]}, "
                    f"the image is {h}x{w}"
                )
            return self.pixels.to(scores.device)
        # prediction
        label = self.label.to(scores.device)
        if tuple(label.shape) != (h, w):
            raise SegscopeError(
                f"label is {label.shape[0]}x{label.shape[1]}, the image is {h}x{w}"
            )
        valid = label != IGNORE
        # An id the model has no class for would silently count as "not class c".
        bad = valid & ((label < 0) | (label >= k))
        if bool(bad.any()):
            raise SegscopeError(
                f"label has id {int(label[bad][0])}, which is not a class of this model "
                f"(0..{k - 1}, or {IGNORE} for ignore)"
            )
        pred = scores.argmax(dim=0)
        if self.prediction_kind == "tp":
            sel = (pred == c) & (label == c)
        elif self.prediction_kind == "fp":
            sel = (pred == c) & (label != c) & valid
        else:
            sel = (pred != c) & (label == c)
        if not bool(sel.any()):
            raise SegscopeError(
                f"no {_KIND_WORDS[self.prediction_kind]} of class {class_names[c]!r} in this "
                "image: the concept selects no pixels"
            )
        return sel

    def output_weights(self, scores: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """(K,H,W): 1 on the selected neurons, 0 elsewhere (the user tensor for "tensor")."""
        if self.kind == "tensor":
            return self._checked_tensor(scores).to(scores.dtype)
        sel = self.selection(scores, class_names)
        weights = torch.zeros_like(scores)
        weights[self.class_index(class_names)] = sel.to(scores.dtype)
        return weights

    def initial_relevance(
        self, scores: torch.Tensor, class_names: Sequence[str]
    ) -> torch.Tensor:
        """(K,H,W) relevance on the output scores (before softmax), SPEC §3."""
        if self.kind == "tensor":
            return self._checked_tensor(scores).to(scores.dtype)
        weights = self.output_weights(scores, class_names)
        if self.assign == "one":
            return weights
        if self.assign == "score":
            return weights * scores
        return weights * torch.softmax(scores, dim=0)

    def describe(self, class_names: Sequence[str] | None = None) -> str:
        """A short human-readable name, for figure titles and reports."""
        if self.kind == "tensor":
            return "user relevance tensor"
        name = self.cls
        if class_names is not None:
            name = class_names[resolve_class(self.cls, class_names)]
        if self.kind == "pixel":
            return f"{name} at pixel ({self.y}, {self.x})"
        if self.kind == "mask":
            return f"{name} mask ({int(self.pixels.sum())} px, {self.assign})"
        return f"{name} {_KIND_WORDS[self.prediction_kind]} ({self.assign})"

    def _checked_tensor(self, scores: torch.Tensor) -> torch.Tensor:
        if tuple(self.relevance.shape) != tuple(scores.shape):
            raise SegscopeError(
                f"initial relevance has shape {tuple(self.relevance.shape)}, the model's "
                f"output is {tuple(scores.shape)}"
            )
        return self.relevance.to(scores.device)


_KIND_WORDS = {"tp": "true positives", "fp": "false positives", "fn": "false negatives"}


def resolve_class(class_: int | str, class_names: Sequence[str]) -> int:
    """Index of ``class_`` (a name or an index) among ``class_names``."""
    if isinstance(class_, str) and not class_.isdigit():
        if class_ not in class_names:
            raise SegscopeError(
                f"unknown class {class_!r}; the model's classes are {', '.join(class_names)}"
            )
        return list(class_names).index(class_)
    index = int(class_)
    if not 0 <= index < len(class_names):
        raise SegscopeError(
            f"class index {index} out of range: the model has {len(class_names)} classes"
        )
    return index


def _class_key(class_: int | str) -> int | str:
    if isinstance(class_, bool) or not isinstance(class_, int | str | np.integer):
        raise SegscopeError(f"a class is a name or an index, got {class_!r}")
    return int(class_) if isinstance(class_, int | np.integer) else class_


def _check_assign(assign: str) -> None:
    if assign not in ASSIGNMENTS:
        raise SegscopeError(
            f"unknown assignment {assign!r}; choose one of {', '.join(ASSIGNMENTS)}"
        )


def _as_bool_mask(mask: Any) -> torch.Tensor:
    m = mask if torch.is_tensor(mask) else torch.as_tensor(np.asarray(mask))
    if m.dim() == 3 and m.shape[0] == 1:
        m = m[0]
    if m.dim() != 2:
        raise SegscopeError(f"a mask must be (H,W), got shape {tuple(m.shape)}")
    if m.is_floating_point() and not bool(torch.isfinite(m).all()):
        raise SegscopeError("the mask has NaN or infinite values; a mask is 0 (out) or "
                            "non-zero (in)")
    return m != 0


def _is_whole(v: Any) -> bool:
    """Whether ``v`` is an integer number (an int, or a float with no fraction)."""
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        return False
    return bool(np.isfinite(v)) and int(v) == v
