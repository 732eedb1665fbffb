"""The numbers of the thesis's chapter 9, computed from relevance tensors.

Everything here is plain numpy on relevance that LRP already produced, so each function
can be checked on hand-made tensors:

- :func:`layer_sum` — the layer-sum map Σ_k R_(k,y,x) (eq 9.1, §9.4);
- :func:`feature_values` — fv_k = (Σ_xy R_k / Σ_k Σ_xy R_k) · C (eq 9.3, §9.6);
- :func:`switch_off_curve` — switch pixels off from the least relevant up (§9.7, fig 9.8);
- :func:`common_threshold` — one relevance threshold over a block of maps (§9.8);
- :func:`unit_points` — class-comparison points scaled to unit length (eq 9.4, §9.9);
- :func:`cosine_distance`, :func:`jensen_shannon` — how far two fv profiles are (§9.10);
- :func:`pearson`, :func:`spearman` — the bias-absorption correlation (§9.11).

Relevance shares (§9.7-9.8) are computed on the positive part R⁺ = max(R, 0). With the
α1β0 rule and inputs x ≥ 0 every pixel's relevance has the sign of the relevance it
started from, so for a concept with positive initial relevance R⁺ = R and the share is
the thesis's share of the score. Negative relevance (a negative score, or β > 0) cannot be
"kept" in a share that must end at 100 %, so it is left out of the shares and its size is
reported separately by :func:`negative_share`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import DTypeLike

#: The relevance shares whose pixel shares a study reports (§9.7: "99 % in 24.8 %").
REPORTED_SHARES = (0.5, 0.9, 0.99)


def as_numpy(a, dtype: DTypeLike | None = np.float64) -> np.ndarray:
    """A tensor or array-like as a numpy array, detached and on the CPU.

    The one tensor-to-numpy helper of segscope. ``dtype`` is the result's dtype (float64
    for the numbers of a study); ``None`` keeps an array's own dtype and gives a tensor as
    float32, the dtype relevance is stored in.
    """
    if torch.is_tensor(a):
        a = a.detach()
        if dtype is None:
            return a.to("cpu", torch.float32).numpy()
        return a.to("cpu", torch.float64).numpy().astype(dtype, copy=False)
    return np.asarray(a, dtype=dtype)


# -- eq 9.1 and 9.3 ------------------------------------------------------------------------
def layer_sum(relevance) -> np.ndarray:
    """The layer-sum map of eq 9.1: (C,h,w) relevance -> (h,w) Σ_k R_(k,y,x)."""
    r = as_numpy(relevance)
    if r.ndim != 3:
        raise ValueError(f"layer relevance must be (C,h,w), got shape {r.shape}")
    return r.sum(axis=0)


def channel_totals(relevance) -> np.ndarray:
    """(C,h,w) -> (C,): the relevance Σ_xy R_(k,y,x) of each feature."""
    r = as_numpy(relevance)
    if r.ndim != 3:
        raise ValueError(f"layer relevance must be (C,h,w), got shape {r.shape}")
    return r.sum(axis=(1, 2))


def feature_values(relevance) -> np.ndarray:
    """Feature values of eq 9.3: fv_k = (Σ_xy R_k / Σ_k Σ_xy R_k) · C.

    The factor C makes values of layers with different widths comparable: a feature
    holding an average share has fv 1 whatever C is, and the fv of a layer sum to C.
    A layer whose total relevance is zero (nothing reached it) has all fv 0.
    """
    totals = channel_totals(relevance)
    total = totals.sum()
    if total == 0 or not np.isfinite(total):
        return np.zeros_like(totals)
    return totals / total * totals.size


def layer_profiles(layers: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Feature values of every layer of an explanation: {name: (C,)}."""
    return {name: feature_values(r) for name, r in layers.items()}


def rank_features(fv) -> np.ndarray:
    """Channel indices from the highest feature value to the lowest (stable on ties)."""
    return np.argsort(-as_numpy(fv), kind="stable")


# -- §9.7 switch-off ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SwitchOff:
    """The switch-off curve of §9.7.

    Pixels are sorted by relevance and switched off from the least relevant up;
    ``pixel_share[i]`` of the pixels is still on and holds ``relevance_share[i]`` of the
    relevance. Both run from 1 (all on) down to 0 (all off), so the arrays have N+1 points.

    Attributes
    ----------
    pixel_share, relevance_share
        (N+1,) float arrays, decreasing.
    order
        (N,) flat pixel indices from the most relevant to the least.
    shape
        (H,W) of the map.
    """

    pixel_share: np.ndarray
    relevance_share: np.ndarray
    order: np.ndarray
    shape: tuple[int, int]

    def pixels_holding(self, share: float) -> float:
        """The smallest share of pixels (the most relevant ones) holding ``share`` of the
        relevance: 0.99 -> e.g. 0.248 for "99 % of the relevance in 24.8 % of the pixels"."""
        if not 0 <= share <= 1:
            raise ValueError(f"a share is in [0, 1], got {share}")
        # relevance_share decreases; the smallest pixel share still reaching ``share``.
        ok = np.nonzero(self.relevance_share >= share - 1e-12)[0]
        return float(self.pixel_share[ok[-1]])

    def kept_mask(self, share: float) -> np.ndarray:
        """Bool (H,W): the pixels still on when only ``share`` of the relevance is kept."""
        n_on = int(round(self.pixels_holding(share) * self.order.size))
        mask = np.zeros(self.order.size, dtype=bool)
        mask[self.order[:n_on]] = True
        return mask.reshape(self.shape)


def switch_off_curve(pixels) -> SwitchOff:
    """Switch the pixels of an (H,W) relevance map off from the least relevant up.

    Shares are of the positive relevance R⁺ (see the module notes); a map with no positive
    relevance gives relevance share 0 everywhere but at the all-on point (1).
    """
    r = as_numpy(pixels)
    if r.ndim != 2:
        raise ValueError(f"a pixel relevance map is (H,W), got shape {r.shape}")
    flat = np.clip(r.ravel(), 0, None)
    order = np.argsort(-flat, kind="stable")  # most relevant first
    total = flat.sum()
    n = flat.size
    # kept[j] = relevance of the j most relevant pixels, j = 0..n.
    kept = np.concatenate([[0.0], np.cumsum(flat[order])])
    relevance_share = kept / total if total > 0 else np.where(np.arange(n + 1) == n, 1.0, 0.0)
    relevance_share = np.minimum(relevance_share, 1.0)
    relevance_share[-1] = 1.0
    pixel_share = np.arange(n + 1) / n
    # From all-on to all-off, as the pixels are switched off.
    return SwitchOff(pixel_share[::-1].copy(), relevance_share[::-1].copy(), order, r.shape)


def negative_share(relevance) -> float:
    """Σ|R⁻| / Σ|R|: how much of a map's relevance is negative (0 for an all-zero map)."""
    r = as_numpy(relevance)
    total = np.abs(r).sum()
    return float(-r[r < 0].sum() / total) if total > 0 else 0.0


# -- §9.8 feature separation ----------------------------------------------------------------
def common_threshold(maps, share: float) -> float:
    """The one relevance value above which the pixels of all ``maps`` hold ``share``.

    §9.8 lights the pixels of the whole block (C,H,W) together, from the most relevant
    down, until ``share`` of the block's positive relevance is on; features with little
    relevance then stay dark. Returns that pixel's value (``inf`` when nothing is positive).
    """
    flat = np.clip(as_numpy(maps).ravel(), 0, None)
    total = flat.sum()
    if total <= 0:
        return float("inf")
    values = np.sort(flat)[::-1]
    cum = np.cumsum(values)
    idx = int(np.searchsorted(cum, share * total - 1e-12 * total))
    return float(values[min(idx, values.size - 1)])


# -- §9.9 class comparison ---------------------------------------------------------------------
def class_points(fv_by_class: Mapping[str, Sequence[float]]) -> np.ndarray:
    """(C, n_classes): one point per feature, one coordinate per class (§9.9)."""
    cols = [as_numpy(v) for v in fv_by_class.values()]
    if not cols:
        raise ValueError("no classes to compare")
    return np.stack(cols, axis=1)


def unit_points(points) -> np.ndarray:
    """Scale each row to unit length (eq 9.4); a row at the origin stays there."""
    p = as_numpy(points)
    norm = np.linalg.norm(p, axis=1, keepdims=True)
    return np.divide(p, norm, out=np.zeros_like(p), where=norm > 0)


def specific_features(points, names: Sequence[str], top: int = 5) -> dict[str, list[int]]:
    """For each class, the features most specific to it: the largest unit-length
    component along that class's axis, among features whose largest component it is."""
    unit = unit_points(points)
    owner = unit.argmax(axis=1)
    out: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        cand = np.nonzero((owner == j) & (unit[:, j] > 0))[0]
        cand = cand[np.argsort(-unit[cand, j], kind="stable")]
        out[name] = [int(k) for k in cand[:top]]
    return out


# -- §9.10 profile divergence --------------------------------------------------------------------
def cosine_distance(a, b) -> float:
    """1 − cos(a, b): 0 for profiles of the same shape; 1 when exactly one is all zero."""
    a, b = as_numpy(a).ravel(), as_numpy(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"profiles differ in length: {a.size} vs {b.size}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return float(max(0.0, 1.0 - a @ b / (na * nb)))


def jensen_shannon(a, b) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of the normalised positive parts.

    Each profile becomes a distribution p = a⁺ / Σ a⁺. Two all-zero profiles are 0 apart,
    an all-zero and a non-zero one are 1 apart.
    """
    p, q = np.clip(as_numpy(a).ravel(), 0, None), np.clip(as_numpy(b).ravel(), 0, None)
    if p.shape != q.shape:
        raise ValueError(f"profiles differ in length: {p.size} vs {q.size}")
    sp, sq = p.sum(), q.sum()
    if sp == 0 or sq == 0:
        return 0.0 if sp == sq else 1.0
    p, q = p / sp, q / sq
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float((x[nz] * np.log2(x[nz] / m[nz])).sum())

    return float(min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q))))


def profile_divergence(
    a: Mapping[str, object], b: Mapping[str, object], layers: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Per layer, how far two explanations' fv profiles are: {layer: {cosine, js}}.

    ``a`` and ``b`` map layer names to fv profiles (C,) or to relevance (C,h,w).
    """
    names = [n for n in (layers or a.keys()) if n in a and n in b]
    out = {}
    for name in names:
        fa, fb = _profile(a[name]), _profile(b[name])
        out[name] = {"cosine": cosine_distance(fa, fb), "js": jensen_shannon(fa, fb)}
    return out


def _profile(x) -> np.ndarray:
    x = as_numpy(x)
    return feature_values(x) if x.ndim == 3 else x


# -- §9.11 correlation ---------------------------------------------------------------------------
def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata)."""
    x = as_numpy(x).ravel()
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    # Average the ranks within each run of equal values.
    sorted_x = x[order]
    start = 0
    for i in range(1, x.size + 1):
        if i == x.size or sorted_x[i] != sorted_x[start]:
            if i - start > 1:
                ranks[order[start:i]] = (start + 1 + i) / 2.0
            start = i
    return ranks


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either variable is constant or fewer than 2 points."""
    x, y = as_numpy(x).ravel(), as_numpy(y).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    if x.size < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / den) if den > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson on the (tie-averaged) ranks."""
    return pearson(rankdata(x), rankdata(y))


def share_reaching_input(pixel_total: float, output_total: float) -> float:
    """The share of the output relevance that reaches the pixels (§9.11); NaN for 0 output."""
    return float(pixel_total / output_total) if output_total != 0 else float("nan")
