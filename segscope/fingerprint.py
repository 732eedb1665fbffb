"""Fingerprints: what one image does to the network, in a few thousand numbers.

For each batch of images, one LRP forward pass and one sweep for a class concept
(default: the pixels predicted as road, ``score`` assignment), with the images as the
sweep's batch dimension, give for each image:

- ``fv``: the feature-value profile (eq 9.3) of every layer, concatenated in layer order
  (:class:`Layout` says where each layer's channels sit);
- ``act``: the per-channel mean activation of every layer the forward pass keeps (the
  layers that feed a convolution, the image and the class scores);
- confidence: the mean max-softmax, the mean entropy and a histogram of the per-pixel
  max-softmax (for ATC);
- the predicted share of each class, a colour histogram of the input, whether the concept
  was empty, and — when a label is given — the concept class's IoU and the pixel accuracy.

Only each layer's per-channel relevance totals are kept, never the relevance maps, so a
fingerprint costs the same memory at any image size. :data:`RELEVANCE_KEEP` is the one
place that says how the sweep hands those totals over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .data.classes import IGNORE, MARKINGS, ROAD
from .errors import SegscopeError

#: What :func:`~segscope.explain.lrp` keeps to give the per-channel totals of all layers:
#: ``"totals"`` sums each layer inside the sweep (``"all"`` would keep every map and give
#: the same numbers).
RELEVANCE_KEEP = "totals"

#: The LRP rule of a diagnosis unless the user names another. ε, not the study's α1β0:
#: it takes its denominators from the forward pass, so a fingerprint costs two
#: convolution passes instead of three, and on the three CamVid val runs of
#: docs/diagnose.md its distance ranked the failures the right way on every model, where
#: α1β0's pointed the wrong way on two.
DIAGNOSE_RULE = "epsilon"

#: Bins of the per-pixel max-softmax histogram (ATC's threshold is fitted on them).
CONFIDENCE_BINS = 1000
#: Bins per colour channel of the input histogram.
COLOUR_BINS = 16
#: The scalar fields of a fingerprint, in :attr:`Fingerprints.scalars` column order.
SCALARS = ("max_softmax", "entropy", "empty", "iou", "correct", "valid", "output_total")


@dataclass(frozen=True)
class Layout:
    """Where each layer's channels sit in the concatenated ``fv`` and ``act`` vectors."""

    layers: tuple[str, ...]
    channels: tuple[int, ...]
    act_layers: tuple[str, ...]
    act_channels: tuple[int, ...]

    def slices(self, act: bool = False) -> dict[str, slice]:
        """{layer: slice} into ``fv`` (or ``act``)."""
        names, sizes = (self.act_layers, self.act_channels) if act else \
            (self.layers, self.channels)
        out, start = {}, 0
        for name, c in zip(names, sizes, strict=True):
            out[name] = slice(start, start + c)
            start += c
        return out

    def as_dict(self) -> dict:
        return {"layers": list(self.layers), "channels": list(self.channels),
                "act_layers": list(self.act_layers), "act_channels": list(self.act_channels)}


@dataclass
class Fingerprints:
    """The fingerprints of a set of images, one row each (see the module notes).

    Attributes
    ----------
    fv, act
        (N, D) feature values of all layers, (N, Da) mean activations.
    confidence
        (N, :data:`CONFIDENCE_BINS`) histogram counts of the per-pixel max-softmax.
    colour
        (N, 3·:data:`COLOUR_BINS`) colour histogram, each channel summing to 1.
    shares
        (N, K) predicted share of each class.
    scalars
        (N, len(:data:`SCALARS`)) the scalar fields; ``iou`` is NaN without a label.
    """

    fv: np.ndarray
    act: np.ndarray
    confidence: np.ndarray
    colour: np.ndarray
    shares: np.ndarray
    scalars: np.ndarray
    layout: Layout | None = field(default=None, compare=False)

    ARRAYS = ("fv", "act", "confidence", "colour", "shares", "scalars")

    def __len__(self) -> int:
        return int(self.fv.shape[0])

    def scalar(self, name: str) -> np.ndarray:
        """(N,) column ``name`` of :data:`SCALARS`."""
        return self.scalars[:, SCALARS.index(name)]

    def layer_fv(self, name: str) -> np.ndarray:
        """(N, C) feature values of layer ``name``."""
        return self.fv[:, self.layout.slices()[name]]

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.ARRAYS}

    @classmethod
    def concat(cls, parts: Sequence[Fingerprints], layout: Layout | None = None) -> Fingerprints:
        """Rows of ``parts`` one after the other."""
        if not parts:
            raise SegscopeError("no fingerprints to join")
        return cls(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in cls.ARRAYS},
                   layout=layout or parts[0].layout)

    def take(self, index) -> Fingerprints:
        """The rows at ``index`` (an index array or a boolean mask)."""
        return Fingerprints(**{k: getattr(self, k)[index] for k in self.ARRAYS},
                            layout=self.layout)


def layout_of(model: nn.Module, image_size: tuple[int, int], graph=None) -> Layout:
    """The :class:`Layout` of ``model`` for images of ``image_size`` (H, W)."""
    from .explain import forward_batch

    state = forward_batch(model, torch.zeros(1, 3, *image_size), graph=graph)
    return _layout(state)


def _layout(state) -> Layout:
    graph = state.graph
    layers = tuple(graph.layers)
    channels = tuple(int(state.shapes[graph.layers[n]][1]) for n in layers)
    acts = _activations(state)
    return Layout(layers, channels, tuple(acts),
                  tuple(int(v.shape[1]) for v in acts.values()))


def _activations(state) -> dict[str, np.ndarray]:
    """{layer: (N,C) mean activation} from the state of a batch (``forward_batch``), for
    the layers whose activation the forward pass keeps: the image, every layer that
    feeds a convolution (its input, kept for the rules' denominators) and the class
    scores. Layers that feed only a pool are not kept there and are left out rather
    than recomputed."""
    from .explain.sparse import map_totals

    graph = state.graph
    name_of = {node: name for name, node in graph.layers.items()}
    found: dict[int, torch.Tensor] = {graph.layers["data"]: state.image} if "data" in \
        graph.layers else {}
    for kind in state.kinds:
        x = getattr(kind, "x", None)  # a weighted node keeps its input for the sweep
        if x is None or not kind.inputs:
            continue
        j = kind.inputs[0]
        if j in name_of and j not in found and x.dim() == 4:
            found[j] = x
    found[graph.output] = state.scores
    out = {}
    for node in sorted(found):
        if node in name_of:
            x = found[node]
            # float64 totals without a float64 copy of the activation (map_totals)
            out[name_of[node]] = (map_totals(x) / x[0, 0].numel() if x.dim() == 4
                                  else x.flatten(1).double()).cpu().numpy()
    return out


def _iou(pred: torch.Tensor, label: torch.Tensor, c: int) -> float:
    valid = label != IGNORE
    p, t = (pred == c) & valid, (label == c) & valid
    union = int((p | t).sum())
    return int((p & t).sum()) / union if union else float("nan")


def image_fingerprint(
    model: nn.Module,
    image: torch.Tensor,
    cls: int,
    *,
    assign: str = "score",
    rule: str = DIAGNOSE_RULE,
    label: torch.Tensor | None = None,
    road_surface: bool = False,
    graph=None,
    layout: Layout | None = None,
) -> Fingerprints:
    """The fingerprint of one image (3,H,W): :func:`image_fingerprints` of a batch of
    one (same parameters, ``label`` for ``labels``). Returns one row."""
    return image_fingerprints(model, [image], cls, assign=assign, rule=rule,
                              labels=None if label is None else [label],
                              road_surface=road_surface, graph=graph, layout=layout)


def image_fingerprints(
    model: nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor],
    cls: int,
    *,
    assign: str = "score",
    rule: str = DIAGNOSE_RULE,
    labels: Sequence[torch.Tensor | None] | None = None,
    road_surface: bool = False,
    graph=None,
    layout: Layout | None = None,
) -> Fingerprints:
    """The fingerprints of a batch of images of one size: one forward pass and one LRP
    sweep for the whole batch (:func:`~segscope.explain.lrp_batch`).

    The rows equal those of the images one by one, up to float rounding.

    Parameters
    ----------
    model
        The segmentation model (eval mode), on its device.
    images
        Float (N,3,H,W) in [0,1], or N images (3,H,W) of one size.
    cls
        Index of the concept class: the concept is the pixels predicted as ``cls``.
    assign, rule
        LRP initial relevance assignment and rule (text; see :func:`segscope.explain.lrp`).
    labels
        Optional N (H,W) ROAD3 labels (an entry may be ``None``): fill ``iou`` (of
        ``cls``) and the pixel accuracy.
    road_surface
        Score road and markings as one class (datasets without a markings class).
    graph, layout
        The model's LRP graph and layout, built once per model by the caller.

    Returns
    -------
    Fingerprints
        N rows, in order.
    """
    from .explain import Concept, forward_batch, lrp_batch
    from .explain.checks import check_images

    batch = check_images(images)
    n = batch.shape[0]
    if labels is not None and len(labels) != n:
        raise SegscopeError(f"{n} images but {len(labels)} labels")
    state = forward_batch(model, batch, rule, graph=graph)
    layout = layout or _layout(state)
    # before the sweep, which drops each layer's input once it has passed the layer
    acts = _activations(state)
    act = np.concatenate([acts[name] for name in layout.act_layers], axis=1)
    scores = state.scores.float()
    probs = torch.softmax(scores, dim=1)
    conf, pred = probs.max(dim=1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(1)
    k = scores.shape[1]
    masks = pred == cls
    empty = [not bool(m.any()) for m in masks]
    fv = np.zeros((n, sum(layout.channels)))
    output_total = np.zeros(n)
    if not all(empty):
        names = list(state.graph.class_names or range(k))
        # an empty concept starts from zero relevance: zero totals, an fv of zeros
        concepts = [Concept.tensor(torch.zeros_like(scores[b])) if empty[b] else
                    Concept.mask(names[cls], masks[b].cpu(), assign=assign) for b in range(n)]
        for b, expl in enumerate(lrp_batch(model, None, concepts, rule=rule,
                                           keep=RELEVANCE_KEEP, state=state, release=True)):
            output_total[b] = expl.output_total
            parts = []
            for name in layout.layers:
                totals = expl.totals[name].numpy()
                whole = totals.sum()
                parts.append(totals / whole * totals.size if whole != 0 and np.isfinite(whole)
                             else np.zeros_like(totals))
            fv[b] = np.concatenate(parts)
    del state
    rows = [_statistics(conf[b], entropy[b], pred[b], batch[b], k, cls,
                        None if labels is None else labels[b], road_surface)
            for b in range(n)]
    scalars = np.array([[{**row, "empty": float(empty[b]), "output_total": output_total[b]}[name]
                         for name in SCALARS] for b, row in enumerate(rows)])
    return Fingerprints(
        fv=fv, act=act, confidence=np.stack([row["confidence"] for row in rows]),
        colour=np.stack([row["colour"] for row in rows]),
        shares=np.stack([row["shares"] for row in rows]), scalars=scalars, layout=layout)


def _statistics(conf: torch.Tensor, entropy: torch.Tensor, pred: torch.Tensor,
                image: torch.Tensor, k: int, cls: int, label: torch.Tensor | None,
                road_surface: bool) -> dict:
    """One image's confidence, colour, share and label statistics."""
    hist = torch.histc(conf.double().cpu(), bins=CONFIDENCE_BINS, min=0.0, max=1.0).numpy()
    pixels = image.detach().double().cpu().clamp(0, 1)
    colour = np.concatenate([
        torch.histc(pixels[ch], bins=COLOUR_BINS, min=0.0, max=1.0).numpy() / pixels[ch].numel()
        for ch in range(3)])
    shares = torch.bincount(pred.flatten().cpu(), minlength=k).double().numpy() / pred.numel()
    iou, correct, valid = float("nan"), 0.0, 0.0
    if label is not None:
        lab = torch.as_tensor(label).to(pred.device).long()
        p, c = pred, cls
        if road_surface:
            from .data.real import merge_road_surface

            p, lab = merge_road_surface(pred, lab)
            c = 1 if cls in (ROAD, MARKINGS) else 0
        iou = _iou(p, lab, c)
        ok = lab != IGNORE
        correct, valid = float(((p == lab) & ok).sum()), float(ok.sum())
    return {"confidence": hist, "colour": colour, "shares": shares,
            "max_softmax": float(conf.double().mean()),
            "entropy": float(entropy.double().mean()),
            "iou": iou, "correct": correct, "valid": valid}
