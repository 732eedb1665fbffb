"""Rank correlations with bootstrap intervals, for tables that compare scores.

- :func:`kendall` — Kendall's τ-b (ties corrected, as ``scipy.stats.kendalltau``);
- :func:`bootstrap_interval` — a percentile bootstrap interval of any paired statistic;
- :func:`correlation_row` — Spearman and Kendall of one score with a target, each with
  its interval, as one table row.

Spearman and the tie-averaged ranks live in :mod:`segscope.analysis`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .analysis import as_numpy, spearman


def kendall(x, y) -> float:
    """Kendall's τ-b of paired samples; NaN when either is constant or n < 2.

    τ-b = (P − Q) / sqrt((n0 − n1)(n0 − n2)) with P/Q the concordant/discordant pairs,
    n0 = n(n−1)/2 and n1, n2 the pairs tied in x and in y.
    """
    x, y = as_numpy(x).ravel(), as_numpy(y).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    n = x.size
    if n < 2:
        return float("nan")
    iu = np.triu_indices(n, 1)
    dx = np.sign(x[:, None] - x[None, :])[iu]
    dy = np.sign(y[:, None] - y[None, :])[iu]
    s = float((dx * dy).sum())
    n0 = n * (n - 1) / 2
    tx, ty = float((dx == 0).sum()), float((dy == 0).sum())
    den = np.sqrt((n0 - tx) * (n0 - ty))
    return s / den if den > 0 else float("nan")


def bootstrap_interval(
    stat: Callable[[np.ndarray, np.ndarray], float],
    x,
    y,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)`` over resampled pairs.

    Resamples whose statistic is NaN (e.g. a constant resample) are left out; when fewer
    than half remain the interval is (NaN, NaN), as it is for ``n_boot=0`` (no interval).
    The same ``seed`` gives the same interval.
    """
    x, y = as_numpy(x).ravel(), as_numpy(y).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    n = x.size
    if n < 3 or n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    values = np.array([stat(x[i], y[i]) for i in idx])
    values = values[np.isfinite(values)]
    if values.size < n_boot / 2:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def correlation_row(score, target, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Spearman and Kendall of ``score`` with ``target`` (NaN pairs dropped), with 95 %
    bootstrap intervals: {spearman, spearman_lo, spearman_hi, kendall, kendall_lo,
    kendall_hi, n}."""
    s, t = as_numpy(score).ravel(), as_numpy(target).ravel()
    ok = np.isfinite(s) & np.isfinite(t)
    s, t = s[ok], t[ok]
    row = {"n": int(s.size), "spearman": spearman(s, t) if s.size >= 2 else float("nan"),
           "kendall": kendall(s, t)}
    for name, fn in (("spearman", spearman), ("kendall", kendall)):
        lo, hi = bootstrap_interval(fn, s, t, n_boot=n_boot, seed=seed)
        row[f"{name}_lo"], row[f"{name}_hi"] = lo, hi
    return row
