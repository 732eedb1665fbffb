"""Region perturbation for segmentation concepts: MoRF/LeRF, deletion and insertion curves.

A relevance map (H,W) orders the image's patches (``patch`` x ``patch`` tiles, or single
pixels with ``patch=1``) by their summed relevance. The image is then perturbed patch by
patch, replacing pixels with a *baseline* image, in one of two orders:

- MoRF, most relevant first: a faithful map makes the concept's score drop fast;
- LeRF, least relevant first: a faithful map keeps the score up longest.

The insertion curve starts from the baseline and puts the image's patches back in MoRF
order (a faithful map makes the score rise fast). The concept's score is the number the
explanation started from: Σ w·y over the selected output neurons, the class scores y, or
their softmax probabilities for ``assign="prob"`` (:func:`concept_weights`).

Summaries (Samek et al. 2017, eq 12): with L+1 curve points x⁽⁰⁾..x⁽ᴸ⁾,
``AOPC = 1/(L+1) Σₖ f(x⁽⁰⁾) − f(x⁽ᵏ⁾)``; the area between the perturbation curves
``ABPC = AOPC_MoRF − AOPC_LeRF``; the deletion and insertion areas are the trapezoid
areas under the curves over the perturbed share 0..1.

Speed: every perturbed image of one image — all steps of all curves of all maps — is
scored in a few large batches (:class:`ConceptScorer`), chunked to a memory budget, in
channels-last layout, with batch normalisation folded into the convolutions, without
autograd. A perturbed image identical to one already scored (the unperturbed image, the
all-baseline image, a step two maps share) is scored once. Each step is scored as its
curve's previous step plus the newly replaced patches: on a SegNet only the encoder tiles
around these patches are recomputed (:mod:`segscope.incremental`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import SegscopeError
from .explain.concepts import Concept
from .incremental import IncrementalSegNet, fold_batchnorm
from .models import SegNet

#: Baselines the perturbed pixels are replaced with (``colour:R,G,B`` and ``blur:SIGMA``
#: take a value).
BASELINES = ("mean", "blur", "noise", "colour")
#: Orders of :func:`patch_order`.
ORDERS = ("morf", "lerf")
#: Curves of :func:`perturbation_curves`.
CURVES = ("morf", "lerf", "insertion")
#: Blur of the ``blur`` baseline when no sigma is given (pixels).
DEFAULT_BLUR_SIGMA = 5.0
#: Memory for one batch of perturbed images on the CPU when nothing else is known (bytes).
DEFAULT_BUDGET = 1024**3


# -- concept score --------------------------------------------------------------------------------
def concept_weights(
    model: nn.Module, image: torch.Tensor, concept: Concept, scores: torch.Tensor | None = None
) -> tuple[torch.Tensor, bool, torch.Tensor]:
    """The concept's output weights on ``image``, fixed by the unperturbed prediction.

    Parameters
    ----------
    model
        The segmentation model (scores (N,K,H,W) for images (N,3,H,W)).
    image
        (3,H,W) in [0,1].
    concept
        What the explanation started from.
    scores
        The model's scores (K,H,W) on ``image`` when already known.

    Returns
    -------
    weights, softmax, selection
        (K,H,W) weights w, whether the score is taken after softmax (``assign="prob"``),
        and the (H,W) bool pixels the concept selects.
    """
    if not isinstance(concept, Concept):
        raise SegscopeError(f"expected a segscope Concept, got {type(concept).__name__}")
    if scores is None:
        device = next(model.parameters()).device
        if concept.kind != "prediction" and isinstance(model, SegNet):
            # only a prediction's pixels depend on the scores: spare the forward pass
            scores = torch.zeros(model.num_classes, *image.shape[-2:], device=device)
        else:
            with torch.inference_mode():
                scores = model(image[None].to(device))[0]
    names = getattr(model, "class_names", None) or tuple(str(k) for k in range(scores.shape[0]))
    weights = concept.output_weights(scores.detach(), names)
    selection = (weights != 0).any(0)
    if not bool(selection.any()):
        raise SegscopeError("the concept selects no pixels: nothing to perturb")
    return weights, concept.kind != "tensor" and concept.assign == "prob", selection


def frozen_concept(model: nn.Module, image: torch.Tensor, concept: Concept) -> Concept:
    """``concept`` with its pixels fixed by the model's prediction on ``image``.

    A true-positive concept depends on the prediction; once the image is perturbed or the
    model randomised, the pixels must stay those the explanation started from.
    """
    if concept.kind != "prediction":
        return concept
    _, _, selection = concept_weights(model, image, concept)
    return Concept.mask(concept.cls, selection.cpu(), assign=concept.assign)


class ConceptScorer:
    """f(x) = Σ w·y(x) (or Σ w·softmax(y(x))) for batches of images, chunked to memory.

    Parameters
    ----------
    model
        The model; a channels-last copy with batch normalisation folded into the
        convolutions is used, so that the caller's model is untouched.
    weights
        (K,H,W) concept weights (:func:`concept_weights`).
    softmax
        Score the probabilities instead of the class scores.
    budget
        Bytes for one chunk of images (default: half the free CUDA memory, or
        :data:`DEFAULT_BUDGET` on the CPU).
    incremental
        Score sequences of a :class:`~segscope.models.SegNet` incrementally
        (:meth:`sequence`); ``False`` runs every image whole.
    """

    def __init__(self, model: nn.Module, weights: torch.Tensor, softmax: bool = False,
                 budget: int | None = None, incremental: bool = True) -> None:
        self.device = next(model.parameters()).device
        self.weights = weights.to(self.device, torch.float64)
        self.softmax = softmax
        self.forwards = 0  # images run, for tests and benchmarks
        if budget is None:
            budget = DEFAULT_BUDGET
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                budget = free // 2
        self.budget = int(budget)
        self.engine = None
        if incremental and IncrementalSegNet.supports(model):
            self.engine = IncrementalSegNet(model, weights, softmax, self.budget)
        # The whole-image path (a copy of the model, its chunk size) is set up when first
        # used: scoring sequences of a SegNet never needs it. The copy is taken now, so
        # that later changes to the caller's model do not reach it.
        self._source = copy.deepcopy(model)
        self._model: nn.Module | None = None
        self._chunk: int | None = None

    @property
    def model(self) -> nn.Module:
        """The channels-last, batch-norm-folded copy of the model that scores whole images."""
        if self._model is None:
            self._model = fold_batchnorm(self._source.eval()).to(
                memory_format=torch.channels_last)
        return self._model

    @property
    def chunk(self) -> int:
        """Images per batch of the whole-image path."""
        if self._chunk is None:
            size = tuple(self.weights.shape[-2:])
            per_image = _activation_bytes(self.model, size, self.device)
            self._chunk = int(max(1, min(512, self.budget // max(per_image, 1))))
        return self._chunk

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) float64 concept scores of images (N,3,H,W)."""
        out = []
        for lo in range(0, images.shape[0], self.chunk):
            out.append(self._score(images[lo:lo + self.chunk].to(self.device)))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += x.shape[0]
        y = self.model(x.contiguous(memory_format=torch.channels_last))
        if self.softmax:
            y = torch.softmax(y, dim=1)
        return (y.double() * self.weights).sum((1, 2, 3)).cpu()

    @torch.inference_mode()
    def masked(self, image: torch.Tensor, baseline: torch.Tensor,
               keep: torch.Tensor) -> torch.Tensor:
        """Scores of ``baseline + (image − baseline)·keep`` for bool masks ``keep`` (N,H,W).

        The perturbed images are built chunk by chunk, so that only one chunk of them is in
        memory at a time.
        """
        x = image.to(self.device)
        b = baseline.to(self.device)
        d = x - b
        out = []
        for lo in range(0, keep.shape[0], self.chunk):
            k = keep[lo:lo + self.chunk].to(self.device, x.dtype)[:, None]
            out.append(self._score(b + d * k))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def sequence(self, image: torch.Tensor, baseline: torch.Tensor, keep: torch.Tensor,
                 parent: Sequence[int], cell: int) -> torch.Tensor:
        """Scores of the image, the baseline and each ``baseline + (image − baseline)·keep``.

        Parameters
        ----------
        image, baseline
            (3,H,W).
        keep
            (J,H,W) bool masks of the pixels taken from the image.
        parent
            For each mask, an earlier one it differs from in a few cells (the previous
            step of its curve), or -1 (the image) or -2 (the baseline).
        cell
            Side of the square cells the masks change in (the patch).

        Returns
        -------
        torch.Tensor
            (J+2,) float64: f(image), f(baseline), then one score per mask.
        """
        self.forwards += 2 + keep.shape[0]
        if self.engine is not None:
            return self.engine(image, baseline, keep, parent, cell)
        ends = self(torch.stack([image, baseline]))
        rest = self.masked(image, baseline, keep) if keep.shape[0] else ends[:0]
        return torch.cat([ends, rest])


def _activation_bytes(model: nn.Module, size: tuple[int, int], device: torch.device) -> int:
    """Bytes of every leaf module's output for one image of ``size`` (a safe upper bound of
    what a forward pass holds at once without autograd)."""
    total = [0]

    def hook(_m, _i, out):
        if torch.is_tensor(out):
            total[0] += out.numel() * out.element_size()
        elif isinstance(out, tuple | list):
            total[0] += sum(o.numel() * o.element_size() for o in out if torch.is_tensor(o))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, *size, device=device))
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 3 * size[0] * size[1] * 4)


# -- baselines -------------------------------------------------------------------------------------
def parse_baseline(spec: str) -> tuple[str, Any]:
    """``mean``, ``blur[:SIGMA]``, ``noise`` or ``colour:R,G,B`` (in [0,1]) -> (kind, value)."""
    if not isinstance(spec, str):
        raise SegscopeError(f"a baseline is a name such as 'mean', got {spec!r}")
    text = spec.strip().lower().replace("color", "colour")
    head, _, arg = text.partition(":")
    if head not in BASELINES:
        raise SegscopeError(f"unknown baseline {spec!r}; choose one of mean, blur[:SIGMA], "
                            "noise, colour:R,G,B")
    if head == "blur":
        sigma = _number(arg, spec) if arg else DEFAULT_BLUR_SIGMA
        if not sigma > 0:
            raise SegscopeError(f"baseline {spec!r}: the blur sigma must be positive")
        return head, sigma
    if head == "colour":
        values = [_number(v, spec) for v in arg.split(",")] if arg else []
        if len(values) == 1:
            values *= 3
        if len(values) != 3 or not all(0 <= v <= 1 for v in values):
            raise SegscopeError(f"baseline {spec!r}: give colour:R,G,B with values in [0,1] "
                                "(or one grey value)")
        return head, tuple(values)
    if arg:
        raise SegscopeError(f"baseline {head!r} takes no value, got {spec!r}")
    return head, None


def _number(text: str, spec: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise SegscopeError(f"bad number {text!r} in baseline {spec!r}") from None
    if not math.isfinite(v):
        raise SegscopeError(f"bad number {text!r} in baseline {spec!r}")
    return v


def baseline_image(image: torch.Tensor, spec: str, seed: int = 0) -> torch.Tensor:
    """The (3,H,W) image the perturbed pixels are taken from.

    ``mean``: every pixel the image's mean colour; ``blur[:SIGMA]``: the image under a
    Gaussian blur (reflected borders); ``noise``: uniform noise in [0,1] from ``seed``;
    ``colour:R,G,B``: one fixed colour.
    """
    kind, value = parse_baseline(spec)
    if kind == "mean":
        return image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
    if kind == "blur":
        return gaussian_blur(image, value)
    if kind == "noise":
        g = torch.Generator().manual_seed(int(seed))
        return torch.rand(image.shape, generator=g, dtype=torch.float32).to(image)
    return torch.tensor(value, dtype=image.dtype, device=image.device).view(3, 1, 1) \
        .expand_as(image).clone()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C,H,W), kernel radius ⌈3σ⌉, borders reflected."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(image)
    c, h, w = image.shape
    x = image[None]
    # Reflection needs the pad smaller than the side; replicate beyond it.
    for dim, n in ((3, w), (2, h)):
        pad = [radius, radius, 0, 0] if dim == 3 else [0, 0, radius, radius]
        mode = "reflect" if radius < n else "replicate"
        x = F.pad(x, pad, mode=mode)
        kernel = k.view(1, 1, 1, -1) if dim == 3 else k.view(1, 1, -1, 1)
        x = F.conv2d(x, kernel.expand(c, 1, *kernel.shape[-2:]), groups=c)
    return x[0]


# -- patches and orders ----------------------------------------------------------------------------
def check_patch(patch: int, size: tuple[int, int]) -> int:
    """``patch`` as an int, or a one-line error when it is not 1..min(H,W)."""
    if isinstance(patch, bool) or int(patch) != patch or patch < 1:
        raise SegscopeError(f"the patch size must be a whole number of pixels >= 1, got {patch}")
    h, w = size
    if patch > min(h, w):
        raise SegscopeError(f"patch size {patch} is larger than the {h}x{w} image")
    return int(patch)


def patch_grid(size: tuple[int, int], patch: int) -> torch.Tensor:
    """(H,W) int64: the index of the patch each pixel falls in, row-major over the grid.

    Patches are ``patch`` x ``patch`` tiles from the top-left corner; those at the right
    and bottom edges are cut by the image border when the size is not a multiple.
    """
    h, w = size
    cols = -(-w // patch)
    ys = torch.arange(h) // patch
    xs = torch.arange(w) // patch
    return ys[:, None] * cols + xs[None, :]


def patch_scores(relevance: torch.Tensor, patch: int) -> torch.Tensor:
    """(P,) float64 summed relevance of each patch of the (H,W) map."""
    rel = torch.as_tensor(relevance).detach().double().cpu()
    if rel.dim() != 2:
        raise SegscopeError(f"a relevance map must be (H,W), got shape {tuple(rel.shape)}")
    if not bool(torch.isfinite(rel).all()):
        raise SegscopeError("the relevance map holds NaN or infinite values")
    grid = patch_grid(tuple(rel.shape), patch)
    n = int(grid.max()) + 1
    return torch.zeros(n, dtype=torch.float64).index_add_(0, grid.flatten(), rel.flatten())


def patch_order(relevance: torch.Tensor, patch: int, order: str = "morf") -> torch.Tensor:
    """Patch indices, most relevant first (``morf``) or least relevant first (``lerf``).

    Ties keep the grid order, so that MoRF of a map is exactly LeRF of its negation.
    """
    if order not in ORDERS:
        raise SegscopeError(f"unknown order {order!r}; choose morf or lerf")
    s = patch_scores(relevance, patch)
    return torch.argsort(-s if order == "morf" else s, stable=True)


def step_counts(n_patches: int, steps: int | None, regions: int | None = None) -> np.ndarray:
    """Patches perturbed at each of the steps+1 curve points: 0 .. ``regions``."""
    regions = n_patches if regions is None else regions
    if isinstance(regions, bool) or int(regions) != regions or not 1 <= regions <= n_patches:
        raise SegscopeError(f"regions must be 1..{n_patches} (the number of patches), "
                            f"got {regions}")
    steps = min(int(regions), 20) if steps is None else steps
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise SegscopeError(f"the number of steps must be at least 1, got {steps}")
    if steps > regions:
        raise SegscopeError(f"{steps} steps but only {regions} patches to perturb: use at most "
                            f"{regions} steps or a smaller patch")
    return np.rint(np.linspace(0, int(regions), int(steps) + 1)).astype(np.int64)


def cumulative_masks(order: torch.Tensor, grid: torch.Tensor,
                     counts: Sequence[int]) -> torch.Tensor:
    """(len(counts),H,W) bool: the pixels of the first ``counts[k]`` patches of ``order``."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    pixel_rank = rank[grid]  # (H,W): when each pixel's patch comes up
    c = torch.as_tensor(np.asarray(counts), dtype=torch.int64).view(-1, 1, 1)
    return pixel_rank[None] < c


# -- curves ----------------------------------------------------------------------------------------
@dataclass
class Curves:
    """Perturbation curves of one relevance map on one image and concept.

    Attributes
    ----------
    fraction
        (L+1,) share of the patches perturbed (of all patches) at each point.
    morf, lerf
        (L+1,) concept score after deleting (replacing by the baseline) the first patches
        in MoRF / LeRF order; point 0 is the unperturbed score.
    insertion
        (L+1,) score of the baseline with the first patches in MoRF order put back.
    """

    fraction: np.ndarray
    morf: np.ndarray
    lerf: np.ndarray
    insertion: np.ndarray

    @property
    def score(self) -> float:
        """The unperturbed concept score f(x)."""
        return float(self.morf[0])

    def summary(self) -> dict[str, float]:
        """AOPC (MoRF, LeRF), ABPC, deletion and insertion areas, raw and relative to |f(x)|."""
        f0 = self.score
        raw = {
            "aopc_morf": aopc(self.morf),
            "aopc_lerf": aopc(self.lerf),
            "abpc": aopc(self.morf) - aopc(self.lerf),
            "deletion": area(self.morf, self.fraction),
            "insertion": area(self.insertion, self.fraction),
        }
        scale = abs(f0) if f0 != 0 else float("nan")
        out = {"score": f0, "baseline_score": float(self.insertion[0])}
        out.update({f"{k}_raw": v for k, v in raw.items()})
        out.update({k: v / scale for k, v in raw.items()})
        return out


def aopc(curve: Sequence[float]) -> float:
    """Samek et al.'s AOPC of one curve: the mean of f(x⁽⁰⁾) − f(x⁽ᵏ⁾) over its L+1 points."""
    c = np.asarray(curve, dtype=np.float64)
    return float(np.mean(c[0] - c))


def area(curve: Sequence[float], fraction: Sequence[float]) -> float:
    """Trapezoid area under ``curve`` over ``fraction`` rescaled to 0..1."""
    c = np.asarray(curve, dtype=np.float64)
    x = np.asarray(fraction, dtype=np.float64)
    span = x[-1] - x[0]
    if span <= 0:
        return float(c[0])
    return float(np.sum((c[1:] + c[:-1]) * np.diff(x)) / 2 / span)


def perturbation_curves(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept,
    maps: Mapping[str, torch.Tensor],
    *,
    patch: int = 8,
    steps: int | None = None,
    regions: int | None = None,
    baseline: str = "mean",
    seed: int = 0,
    curves: Sequence[str] = CURVES,
    scorer: ConceptScorer | None = None,
) -> dict[str, Curves]:
    """MoRF, LeRF and insertion curves of every map in ``maps``, in batched forward passes.

    Parameters
    ----------
    model
        The segmentation model, in eval mode, on its device.
    image
        (3,H,W) in [0,1].
    concept
        The concept the maps explain; its pixels are fixed by the unperturbed prediction.
    maps
        {name: (H,W) relevance map}.
    patch
        Side of the square patches (1: single pixels).
    steps
        Curve points after the first (default: min(regions, 20)).
    regions
        Patches perturbed at the last point (default: all of them).
    baseline
        ``mean``, ``blur[:SIGMA]``, ``noise``, or ``colour:R,G,B``.
    seed
        Seed of the ``noise`` baseline.
    curves
        Which curves to compute (any of ``morf``, ``lerf``, ``insertion``); the others
        are returned as NaN.
    scorer
        A :class:`ConceptScorer` for this image and concept to reuse.

    Returns
    -------
    dict
        {name: :class:`Curves`}.
    """
    image = _check_image(image)
    size = tuple(image.shape[-2:])
    patch = check_patch(patch, size)
    unknown = [c for c in curves if c not in CURVES]
    if unknown:
        raise SegscopeError(f"unknown curve {unknown[0]!r}; choose from {', '.join(CURVES)}")
    base = baseline_image(image, baseline, seed)
    grid = patch_grid(size, patch)
    n_patches = int(grid.max()) + 1
    counts = step_counts(n_patches, steps, regions)
    for name, m in maps.items():
        if tuple(torch.as_tensor(m).shape) != size:
            raise SegscopeError(f"map {name!r} is {tuple(torch.as_tensor(m).shape)}, the image "
                                f"is {size[0]}x{size[1]}")
    if scorer is None:
        weights, soft, _ = concept_weights(model, image, concept)
        scorer = ConceptScorer(model, weights, soft)

    # Every job is a mask of the pixels taken from the image (the rest from the baseline),
    # scored as the previous step of its curve (its parent) plus the newly replaced
    # patches. A mask is scored once however many curves reach it: the all-image and
    # all-baseline masks end every curve, and two maps may share their first patches.
    jobs: list[torch.Tensor] = []
    parents: list[int] = []
    seen: dict[bytes, int] = {}
    where: dict[tuple[str, str], list[int]] = {}
    full, empty = -1, -2
    for name, m in maps.items():
        for curve in curves:
            order = patch_order(m, patch, "lerf" if curve == "lerf" else "morf")
            masks = cumulative_masks(order, grid, counts)
            keep = masks if curve == "insertion" else ~masks
            idx: list[int] = []
            for k in range(len(counts)):
                if bool(keep[k].all()):
                    i = full
                elif not bool(keep[k].any()):
                    i = empty
                else:
                    key = np.packbits(keep[k].numpy()).tobytes()
                    i = seen.setdefault(key, len(jobs))
                    if i == len(jobs):
                        jobs.append(keep[k])
                        parents.append(idx[-1] if idx else empty)
                idx.append(i)
            where[(name, curve)] = idx
    keep_all = torch.stack(jobs) if jobs else torch.zeros(0, *size, dtype=torch.bool)
    every = scorer.sequence(image, base, keep_all, parents, patch)
    scores = every[2:]
    lookup = {full: float(every[0]), empty: float(every[1])}
    fraction = counts / n_patches
    nan = np.full(len(counts), np.nan)
    out = {}
    for name in maps:
        vals = {}
        for curve in CURVES:
            if (name, curve) not in where:
                vals[curve] = nan.copy()
                continue
            vals[curve] = np.array([lookup[i] if i < 0 else float(scores[i])
                                    for i in where[(name, curve)]])
        out[name] = Curves(fraction, vals["morf"], vals["lerf"], vals["insertion"])
    return out


def _check_image(image: Any) -> torch.Tensor:
    if not torch.is_tensor(image) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise SegscopeError(f"an image must be a (3,H,W) tensor, got {shape}")
    if not bool(torch.isfinite(image).all()):
        raise SegscopeError("the image holds NaN or infinite values")
    return image.float()

