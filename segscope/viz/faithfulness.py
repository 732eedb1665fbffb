"""Figures of the faithfulness evaluation: perturbation curves, sanity curves, the maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..analysis import as_numpy
from .cmap import image_rgb, overlay_rgb
from .figures import _grid, _grid_adjust, _off_axes, new_figure

_TITLES = {"morf": "deletion, most relevant first (MoRF)",
           "lerf": "deletion, least relevant first (LeRF)",
           "insertion": "insertion, most relevant first"}


def _style(label: str, i: int) -> dict[str, Any]:
    """Floors dashed grey, LRP rules solid, the other methods dotted."""
    if label in ("random", "edge"):
        return {"color": "0.35" if label == "random" else "0.6", "ls": "--", "lw": 1.6}
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {"color": cmap(i % 20), "ls": "-" if label.startswith("lrp") else ":", "lw": 1.3}


def curves_figure(mean_curves: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                  baseline: str, patch: int) -> Figure:
    """One row per image set, one panel per curve; each line a method's mean curve
    (the concept's score relative to its unperturbed value, averaged over images)."""
    sets = list(mean_curves)
    fig = new_figure(13, 3.3 * len(sets) + 0.8)
    legend = None
    for row, key in enumerate(sets):
        curves = mean_curves[key]
        for col, kind in enumerate(("morf", "lerf", "insertion")):
            ax = fig.add_subplot(len(sets), 3, 3 * row + col + 1)
            for i, (label, c) in enumerate(curves.items()):
                ax.plot(c["fraction"], c[kind], label=label, **_style(label, i))
            ax.set_title(f"{key}: {_TITLES[kind]}", fontsize=9)
            ax.set_xlabel(f"share of {patch}x{patch} patches replaced by {baseline}"
                          if kind != "insertion" else "share of patches put back", fontsize=8)
            ax.set_ylabel("score / unperturbed score", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            legend = ax.get_legend_handles_labels()
    if legend:
        fig.legend(*legend, loc="lower center", ncol=min(5, len(legend[1])), fontsize=7,
                   frameon=False)
    rows = len(sets)
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.5 / fig.get_figheight(),
                        bottom=(0.25 * (len(legend[1]) // 5 + 1) + 0.6) / fig.get_figheight()
                        if legend else 0.1, hspace=0.55 if rows > 1 else 0.2, wspace=0.25)
    return fig


def sanity_figure(sanity: Mapping[str, Any]) -> Figure:
    """Spearman and SSIM between each method's map on the trained and on the randomised
    model, per cascade step (layers randomised from the output down)."""
    fig = new_figure(12, 4.6)
    layers = sanity["layers"]
    x = np.arange(len(layers))
    legend = None
    for col, key in enumerate(("spearman", "ssim")):
        ax = fig.add_subplot(1, 2, col + 1)
        for i, (label, curve) in enumerate(sanity[key].items()):
            flagged = label in sanity.get("flagged", [])
            ax.plot(x, curve, marker="o", ms=3, label=label + (" (flagged)" if flagged else ""),
                    **_style(label, i))
        ax.set_xticks(x)
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("Spearman correlation" if key == "spearman" else "SSIM", fontsize=8)
        ax.set_xlabel("randomised down to layer", fontsize=8)
        ax.set_title(f"{key.upper() if key == 'ssim' else 'Spearman'} with the trained "
                     f"model's map ({sanity['images']} image(s))", fontsize=9)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        legend = ax.get_legend_handles_labels()
    fig.legend(*legend, loc="center right", fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.06, right=0.76, bottom=0.3, top=0.9, wspace=0.25)
    return fig


def maps_figure(image, maps: Mapping[str, Any], name: str, concept: str) -> Figure:
    """The image and each method's map over it (each map on its own scale)."""
    n = len(maps) + 1
    rows, cols = _grid(n, 5)
    h, w = as_numpy(image).shape[-2:]
    fig = new_figure(13, rows * (13 / cols) * h / w + rows * 0.35 + 0.5)
    ax = fig.add_subplot(rows, cols, 1)
    ax.imshow(image_rgb(image))
    ax.set_title(f"{name}", fontsize=8)
    _off_axes(ax)
    for i, (label, m) in enumerate(maps.items()):
        ax = fig.add_subplot(rows, cols, i + 2)
        ax.imshow(overlay_rgb(image, as_numpy(m)))
        ax.set_title(label, fontsize=7)
        _off_axes(ax)
    fig.suptitle(f"the maps scored: {concept}", fontsize=9)
    _grid_adjust(fig, suptitle=True, hspace=0.3, wspace=0.05)
    return fig
