"""Model-parameter randomisation tests for explanations (Adebayo et al. 2018).

Cascading randomisation: the weighted layers (convolutions, linear layers) are replaced
by random weights one after another, from the output layer down to the input. After
each step every explanation method explains the same concept again, and its map is
compared with the map of the trained model: Spearman rank correlation of the pixel
values and SSIM of the maps scaled to [-1, 1]. A method whose maps stay similar while
the network becomes noise does not explain the network; :func:`flag_unchanged` names
such methods.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .analysis import as_numpy, spearman
from .errors import SegscopeError

#: A method whose maps keep at least this Spearman correlation with the trained model's
#: map after every layer is randomised is flagged.
FLAG_SPEARMAN = 0.5


def ssim(a, b, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) of two (H,W) relevance maps.

    Each map is divided by its largest absolute value (so both lie in [-1, 1], data range
    2); local statistics use a Gaussian window (``window`` x ``window``, ``sigma``) over
    the positions where it fits, as ``skimage.metrics.structural_similarity`` with
    ``gaussian_weights=True`` does. Two all-zero maps are identical (1.0).
    """
    x = torch.as_tensor(as_numpy(a), dtype=torch.float64)
    y = torch.as_tensor(as_numpy(b), dtype=torch.float64)
    if x.shape != y.shape or x.dim() != 2:
        raise SegscopeError(f"SSIM needs two maps of one (H,W) shape, got {tuple(x.shape)} "
                            f"and {tuple(y.shape)}")
    x, y = _unit(x), _unit(y)
    h, w = x.shape
    win = min(window, h, w)
    win -= 1 - win % 2  # odd
    t = torch.arange(win, dtype=torch.float64) - (win - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).view(1, 1, win, win)

    def filt(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z[None, None], k)[0, 0]

    n = win * win
    cov_norm = n / (n - 1) if n > 1 else 1.0  # sample covariance, as skimage
    mx, my = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - mx * mx)
    vy = cov_norm * (filt(y * y) - my * my)
    vxy = cov_norm * (filt(x * y) - mx * my)
    data_range = 2.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def _unit(x: torch.Tensor) -> torch.Tensor:
    m = x.abs().max()
    return x / m if m > 0 else x


def similarity(a, b) -> dict[str, float]:
    """Spearman correlation and SSIM of two maps.

    A constant map orders no pixel: its Spearman correlation with another map is taken as
    0 (nothing of the ranking survived), and as 1 with an identical map (nothing changed).
    """
    x, y = as_numpy(a), as_numpy(b)
    r = spearman(x, y)
    if r != r:
        r = 1.0 if np.array_equal(x, y) else 0.0
    return {"spearman": r, "ssim": ssim(x, y)}


def weighted_layers(model: nn.Module, image: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers in the order the forward pass runs them on ``image``."""
    seen: dict[int, tuple[str, nn.Module]] = {}  # insertion order = first call order
    names = {id(m): n for n, m in model.named_modules()}

    def hook(mod: nn.Module, _i, _o) -> None:
        seen.setdefault(id(mod), (names[id(mod)], mod))

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, nn.Conv2d | nn.Linear | nn.ConvTranspose2d)]
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(image[None].to(device))
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise SegscopeError("the model has no convolution or linear layer to randomise")
    return list(seen.values())


def cascade_points(n_layers: int, steps: int | None) -> list[int]:
    """How many layers are randomised at each sanity step (the last step: all of them)."""
    if steps is None or steps >= n_layers:
        return list(range(1, n_layers + 1))
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise SegscopeError(f"the number of sanity steps must be at least 1, got {steps}")
    return sorted({int(v) for v in np.rint(np.linspace(n_layers / steps, n_layers, steps))})


def randomise_(layer: nn.Module, generator: torch.Generator) -> None:
    """Replace a layer's weights (and bias) in place by Gaussian noise of their own scale."""
    with torch.no_grad():
        for p in (layer.weight, getattr(layer, "bias", None)):
            if p is None:
                continue
            std = float(p.detach().float().std()) if p.numel() > 1 else 0.0
            std = std if std > 0 else 0.01
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32) * std
            p.copy_(noise.to(p))


@dataclass
class SanityResult:
    """Similarity of each method's map to the trained model's map, per cascade step.

    Attributes
    ----------
    layers
        The layer randomised last at each step (from the output down).
    counts
        Layers randomised at each step.
    spearman, ssim
        {method: (steps,) similarity to the trained model's map}.
    """

    layers: list[str]
    counts: list[int]
    spearman: dict[str, np.ndarray] = field(default_factory=dict)
    ssim: dict[str, np.ndarray] = field(default_factory=dict)


def cascading_randomisation(
    model: nn.Module,
    image: torch.Tensor,
    explain: Callable[[nn.Module, str], torch.Tensor],
    methods: Sequence[str],
    *,
    steps: int | None = None,
    seed: int = 0,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> SanityResult:
    """Randomise ``model``'s weighted layers from the output down and compare the maps.

    Parameters
    ----------
    model
        The trained model (left untouched: a copy is randomised).
    image
        (3,H,W) image the maps are computed on.
    explain
        ``explain(model, method) -> (H,W) map`` of the concept under test.
    methods
        Method names passed to ``explain``.
    steps
        Cascade points (default: one per layer).
    seed
        Seed of the random weights.
    reference
        The trained model's maps, when already computed.
    """
    layers = weighted_layers(model, image)
    order = list(reversed(layers))
    points = cascade_points(len(order), steps)
    ref = dict(reference or {})
    for m in methods:
        if m not in ref:
            ref[m] = explain(model, m)
    rand = copy.deepcopy(model).eval()
    modules = dict(rand.named_modules())
    g = torch.Generator().manual_seed(int(seed))
    out = SanityResult(layers=[order[c - 1][0] for c in points], counts=list(points))
    sp = {m: [] for m in methods}
    ss = {m: [] for m in methods}
    done = 0
    for count in points:
        for name, _ in order[done:count]:
            randomise_(modules[name], g)
        done = count
        for m in methods:
            s = similarity(ref[m], explain(rand, m))
            sp[m].append(s["spearman"])
            ss[m].append(s["ssim"])
    out.spearman = {m: np.array(v) for m, v in sp.items()}
    out.ssim = {m: np.array(v) for m, v in ss.items()}
    return out


def flag_unchanged(spearman_curves: Mapping[str, np.ndarray],
                   threshold: float = FLAG_SPEARMAN) -> list[str]:
    """Methods whose map still correlates with the trained model's (|Spearman| ≥
    threshold) once every layer is random: their maps do not depend on what the network
    learned. The magnitude counts (Adebayo et al. 2018 report it too): a map that turns
    into the negative of the trained one keeps the image's structure, only inverted."""
    flagged = []
    for m, curve in spearman_curves.items():
        last = np.asarray(curve, dtype=np.float64)
        last = np.abs(last[..., -1] if last.ndim else last)
        value = float(np.nanmean(last)) if np.any(np.isfinite(last)) else float("nan")
        if value >= threshold:
            flagged.append(m)
    return flagged
