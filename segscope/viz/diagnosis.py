"""The figures of ``segscope diagnose``: scores against IoU, per-layer shift, top channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .cmap import symmetric_limit
from .figures import _grid, _off_axes, new_figure, overlay_rgb


def scores_figure(scores: Mapping[str, np.ndarray], iou: np.ndarray,
                  rho: Mapping[str, float], empty: np.ndarray | None = None,
                  max_cols: int = 4) -> Figure:
    """One panel per score: each real image's score (x) against its IoU (y), with the
    Spearman agreement in the title; images with an empty concept drawn as crosses."""
    names = list(scores)
    rows, cols = _grid(len(names), max_cols)
    fig = new_figure(3.0 * cols, 2.5 * rows + 0.3)
    empty = np.zeros(len(iou), bool) if empty is None else np.asarray(empty, bool)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        x = np.asarray(scores[name])
        ax.scatter(x[~empty], iou[~empty], s=9, alpha=0.7, color="#1f77b4", linewidths=0)
        if empty.any():
            ax.scatter(x[empty], iou[empty], s=16, marker="x", color="#d62728",
                       label="empty concept")
        r = rho.get(name, float("nan"))
        ax.set_title(f"{name}  ρ={r:+.2f}" if np.isfinite(r) else name, fontsize=8)
        ax.tick_params(labelsize=6)
        if i % cols == 0:
            ax.set_ylabel("IoU", fontsize=7)
    fig.suptitle("Each score against the real images' IoU (ρ: Spearman agreement, +1 = "
                 "ranks the images exactly by failure)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def layer_shift_figure(shift: Mapping[str, Mapping[str, float]], by: str) -> Figure:
    """Per layer, the mean JS divergence of real, best and worst real images' fv profiles
    from the mean synthetic profile, against synthetic images' own spread."""
    layers = list(shift)
    x = np.arange(len(layers))
    fig = new_figure(11, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    styles = (("synthetic", "synthetic (leave-one-out)", "#888888", "--"),
              ("real", "real, all", "#1f77b4", "-"),
              ("best", f"real, best quarter by {by}", "#2ca02c", "-"),
              ("worst", f"real, worst quarter by {by}", "#d62728", "-"))
    for key, label, colour, ls in styles:
        y = [shift[n].get(key, float("nan")) for n in layers]
        ax.plot(x, y, ls, color=colour, label=label, marker="o", markersize=2.5, linewidth=1.2)
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90, fontsize=6)
    ax.set_ylabel("JS divergence from the\nmean synthetic profile", fontsize=7)
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def channel_maps_figure(panels: Sequence[Mapping]) -> Figure:
    """One row per top channel: a real and a synthetic image, each with the channel's
    feature-separation map (§9.8) over it. Each panel dict has ``title``, ``image``
    (3,H,W) and ``map`` (H,W)."""
    rows = max(1, -(-len(panels) // 2))
    fig = new_figure(2.6 * 4, 2.1 * rows + 0.3)
    for i, p in enumerate(panels):
        img = np.clip(np.moveaxis(np.asarray(p["image"], np.float64), 0, -1), 0, 1)
        m = np.asarray(p["map"], np.float64)
        ax = fig.add_subplot(rows, 4, 2 * i + 1)
        ax.imshow(img)
        ax.set_title(p["title"], fontsize=6)
        _off_axes(ax)
        ax = fig.add_subplot(rows, 4, 2 * i + 2)
        # a single channel's relevance is thin and spread: scale to its 99.5th percentile
        # (the peak would leave the pattern invisible)
        nz = np.abs(m[m != 0])
        limit = float(np.percentile(nz, 99.5)) if nz.size else symmetric_limit(m)
        ax.imshow(overlay_rgb(img.transpose(2, 0, 1), m, limit if limit > 0 else 1.0))
        ax.set_title("its relevance at the pixels", fontsize=6)
        _off_axes(ax)
    fig.suptitle("Top channels: what each responds to on a badly segmented real image and "
                 "on a synthetic one (feature separation, §9.8)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig
