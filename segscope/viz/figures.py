"""The figures of the chapter-9 study, drawn with matplotlib's Agg canvas.

Every figure is a :class:`matplotlib.figure.Figure` given an explicit Agg canvas
(:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`); ``pyplot`` is never imported,
so no global figure state or GUI backend is involved and the process-wide backend a user
chose (say, in a notebook) is left alone. :func:`save_png` writes atomically and clears
the figure.

Heatmaps use the blue-white-red scale of eq 8.2 (:func:`segscope.viz.cmap.heatmap_rgb`);
the maps of one figure share one scale (eq 9.2) whenever they are compared, and keep
their own scale where only their shapes matter (the layer-wise grid, whose totals differ
by orders of magnitude and are printed in the titles).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._io import atomic_path
from ..analysis import SwitchOff, as_numpy, rank_features
from .cmap import heatmap_rgb, image_rgb, overlay_rgb, symmetric_limit

#: Colour of switched-off pixels in the switch-off frames and the separation grid.
OFF_RGB = np.array([40, 40, 48], dtype=np.uint8)
#: One colour per class for plots (background, road, markings, ...).
CLASS_COLOURS = ("#555555", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b")


def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG atomically (temp file + rename) and release it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    fig.clear()
    return path


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def _grid_adjust(fig: Figure, suptitle: bool, hspace: float = 0.55,
                 wspace: float = 0.08) -> None:
    """Fixed margins for a grid of panels (``tight_layout`` costs a full draw per call)."""
    top = 1 - (0.7 if suptitle else 0.35) / fig.get_figheight()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=top, hspace=hspace,
                        wspace=wspace)


def _off_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


# -- the chosen images ----------------------------------------------------------------------
def images_figure(rows: Sequence[dict], colours: Sequence[Sequence[int]]) -> Figure:
    """One row per image: the image, its label and the model's prediction.

    ``rows`` are dicts with ``title``, ``image`` (3,H,W), ``label`` (H,W) and
    ``prediction`` (H,W); ``colours`` the RGB of each class (255 is drawn black).
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i, c in enumerate(colours):
        palette[i] = c
    h, w = np.asarray(rows[0]["label"]).shape[-2:]
    fig = new_figure(9, len(rows) * (2.9 * h / w + 0.35) + 0.1)
    for i, row in enumerate(rows):
        for j, (what, arr) in enumerate(
            (("image", None), ("label", row["label"]), ("prediction", row["prediction"]))
        ):
            ax = fig.add_subplot(len(rows), 3, 3 * i + j + 1)
            if arr is None:
                ax.imshow(image_rgb(row["image"]))
                ax.set_title(row["title"], fontsize=8)
            else:
                ax.imshow(palette[np.asarray(arr, dtype=np.int64).clip(0, 255)])
                ax.set_title(what, fontsize=8)
            _off_axes(ax)
    _grid_adjust(fig, suptitle=False, hspace=0.25, wspace=0.05)
    return fig


# -- §8.4 pixel relevance ---------------------------------------------------------------------
def pixel_overlay_figure(image, pixels, concept: str) -> Figure:
    """The pixel relevance (eq 8.1) on its own scale (eq 8.2), and blended over the image."""
    fig = new_figure(9, 3.4)
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(heatmap_rgb(pixels), interpolation="nearest")
    ax.set_title("pixel relevance (eq 8.1, 8.2)", fontsize=8)
    _off_axes(ax)
    ax = fig.add_subplot(1, 2, 2)
    ax.imshow(overlay_rgb(image, pixels))
    ax.set_title(f"over the image: {concept}", fontsize=8)
    _off_axes(ax)
    fig.tight_layout()
    return fig


# -- §9.4 layer-wise propagation ----------------------------------------------------------------
def layerwise_figure(
    maps: Mapping[str, np.ndarray],
    totals: Mapping[str, float],
    scale: str = "own",
    max_cols: int = 7,
    title: str | None = None,
) -> Figure:
    """The layer-sum map (eq 9.1) of every layer, from the output to the pixels (fig 9.4).

    ``maps`` is {layer: (h,w)} in the order to draw; each panel is titled with the layer
    name and its total relevance. ``scale="own"`` gives every panel its own ±max|R|,
    ``"global"`` one scale for all (eq 9.2).
    """
    names = list(maps)
    rows, cols = _grid(len(names), max_cols)
    limit = symmetric_limit(*maps.values()) if scale == "global" else None
    fig = new_figure(1.9 * cols, 1.7 * rows + 0.5)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(heatmap_rgb(maps[name], limit), interpolation="nearest")
        ax.set_title(f"{name}\nΣR={_fmt(totals[name])}", fontsize=6.5)
        _off_axes(ax)
    if title:
        fig.suptitle(title, fontsize=9)
    _grid_adjust(fig, suptitle=bool(title))
    return fig


# -- §9.5 per-feature maps ----------------------------------------------------------------------
def feature_maps_figure(
    relevance, fv, layer: str, top: int = 8, bottom: int = 4, max_cols: int = 6
) -> Figure:
    """A layer's feature maps R_k on one global scale (eq 9.2): the ``top`` features by
    feature value, then the ``bottom`` ones (fig 9.5)."""
    r = as_numpy(relevance)
    fv = as_numpy(fv)
    order = rank_features(fv)
    top = min(top, r.shape[0])
    bottom = min(bottom, r.shape[0] - top)
    chosen = [*order[:top], *(order[len(order) - bottom:] if bottom else [])]
    limit = symmetric_limit(r)
    rows, cols = _grid(len(chosen), max_cols)
    fig = new_figure(2.0 * cols, 1.8 * rows + 0.5)
    for i, k in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(heatmap_rgb(r[k], limit), interpolation="nearest")
        tag = "top" if i < top else "bottom"
        ax.set_title(f"{tag}: feature {k}\nfv={fv[k]:.2f}", fontsize=7)
        _off_axes(ax)
    fig.suptitle(f"{layer}: feature maps on one scale ±{_fmt(limit)} (eq 9.2)", fontsize=9)
    _grid_adjust(fig, suptitle=True)
    return fig


# -- §9.6 feature values -------------------------------------------------------------------------
def feature_values_figure(fv, layer: str) -> Figure:
    """The feature values of one layer over its channels (fig 9.6), as a stem plot."""
    fv = as_numpy(fv)
    fig = new_figure(8, 2.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.vlines(np.arange(fv.size), 0, fv, color="#d62728", lw=1)
    ax.plot(np.arange(fv.size), fv, ".", color="#d62728", ms=3)
    ax.axhline(1.0, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("feature (channel)")
    ax.set_ylabel("feature value (eq 9.3)")
    ax.set_title(f"{layer}: feature values of its {fv.size} features (they sum to {fv.size})",
                 fontsize=9)
    fig.tight_layout()
    return fig


def all_feature_values_figure(profiles: Mapping[str, np.ndarray]) -> Figure:
    """The feature values of every layer along the network (fig 9.6 for all layers).

    One panel: each layer gets an equal slot on the x axis, its features spread evenly
    in it, drawn as stems; the slots are separated and named. High, isolated peaks mean
    that a few features carry the decision in that layer.
    """
    names = list(profiles)
    xs, ys = [], []
    for i, name in enumerate(names):
        fv = as_numpy(profiles[name])
        xs.append(i + (np.arange(fv.size) + 0.5) / max(fv.size, 1))
        ys.append(fv)
    x, y = np.concatenate(xs), np.concatenate(ys)
    fig = new_figure(12, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.vlines(x, 0, y, color="#d62728", lw=0.6)
    for i in range(1, len(names)):
        ax.axvline(i, color="#bbbbbb", lw=0.5)
    ax.axhline(1.0, color="grey", lw=0.5, ls="--")
    ax.set_xlim(0, len(names))
    ax.set_xticks(np.arange(len(names)) + 0.5)
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("feature value (eq 9.3)", fontsize=8)
    ax.set_title("feature values of every layer (input → output; within a layer, features in "
                 "channel order)", fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.9, bottom=0.28)
    return fig


# -- §9.7 switch-off ---------------------------------------------------------------------------
def switch_off_figure(curve: SwitchOff, pixels, shares: Sequence[float]) -> Figure:
    """The switch-off curve and frames (fig 9.8): the pixel-relevance map with only the
    most relevant pixels on, at each relevance share in ``shares``."""
    r = as_numpy(pixels)
    limit = symmetric_limit(r)
    heat = heatmap_rgb(r, limit)
    n = len(shares)
    cols = min(4, n + 1)
    rows = math.ceil((n + 1) / cols)
    fig = new_figure(3.0 * cols, 2.6 * rows + 0.2)
    ax = fig.add_subplot(rows, cols, 1)
    ax.plot(100 * curve.pixel_share, 100 * curve.relevance_share, color="#d62728")
    for s in shares:
        p = curve.pixels_holding(s)
        ax.plot([100 * p], [100 * s], "o", color="black", ms=3)
    ax.set_xlabel("pixels still on (%)", fontsize=7)
    ax.set_ylabel("relevance kept (%)", fontsize=7)
    ax.set_title("switching off from the least relevant", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    for i, s in enumerate(shares):
        mask = curve.kept_mask(s)
        frame = np.where(mask[..., None], heat, OFF_RGB)
        ax = fig.add_subplot(rows, cols, i + 2)
        ax.imshow(frame, interpolation="nearest")
        ax.set_title(f"{100 * s:g} % of the relevance\nin {100 * curve.pixels_holding(s):.1f} %"
                     " of the pixels", fontsize=7)
        _off_axes(ax)
    _grid_adjust(fig, suptitle=False, hspace=0.35)
    return fig


# -- §9.8 feature separation --------------------------------------------------------------------
def separation_figure(
    maps, threshold: float, share: float, layer: str, fv=None,
    channels: Sequence[int] | None = None, max_cols: int = 8,
) -> Figure:
    """Each feature's relevance projected to the pixels, lit at one common threshold
    (fig 9.9): pixels at or above ``threshold`` show their heatmap colour, the others
    are off. ``channels`` names the channel of each map (default 0..C-1)."""
    m = as_numpy(maps)
    channels = list(range(m.shape[0])) if channels is None else list(channels)
    limit = symmetric_limit(m)
    rows, cols = _grid(m.shape[0], max_cols)
    fig = new_figure(1.6 * cols, 1.35 * rows + 0.5)
    for i in range(m.shape[0]):
        ax = fig.add_subplot(rows, cols, i + 1)
        on = m[i] >= threshold
        ax.imshow(np.where(on[..., None], heatmap_rgb(m[i], limit), OFF_RGB),
                  interpolation="nearest")
        label = f"#{channels[i]}" + (f" fv={as_numpy(fv)[i]:.2f}" if fv is not None else "")
        ax.set_title(label, fontsize=6)
        _off_axes(ax)
    fig.suptitle(f"{layer}: each feature's relevance at the pixels, lit down to a common "
                 f"threshold holding {100 * share:g} % of the block's relevance", fontsize=8)
    _grid_adjust(fig, suptitle=True)
    return fig


# -- §9.9 class comparison ----------------------------------------------------------------------
def class_scatter_figure(points, unit, names: Sequence[str], layer: str) -> Figure:
    """Each feature as the point of its feature values for three classes (fig 9.11), raw
    and scaled to unit length (eq 9.4, fig 9.12)."""
    from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the 3d projection)

    p, u = as_numpy(points), as_numpy(unit)
    owner = u.argmax(axis=1)
    colours = [CLASS_COLOURS[(j + 1) % len(CLASS_COLOURS)] for j in owner]
    fig = new_figure(10, 4.8)
    for i, (data, what) in enumerate(((p, "feature values"), (u, "unit length (eq 9.4)"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        ax.scatter(data[:, 0], data[:, 1], data[:, 2], c=colours, s=10, depthshade=False)
        ax.set_xlabel(names[0], fontsize=7)
        ax.set_ylabel(names[1], fontsize=7)
        ax.set_zlabel(names[2], fontsize=7)
        ax.tick_params(labelsize=5)
        ax.set_title(f"{layer}: {what}", fontsize=8)
        top = 1.0 if i == 1 else max(1e-9, float(np.abs(data).max()))
        for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
            setter(0, top * 1.05)
        if i == 0:
            for j, name in enumerate(names):
                ax.scatter([], [], [], color=CLASS_COLOURS[(j + 1) % len(CLASS_COLOURS)],
                           label=f"largest for {name}")
            ax.legend(fontsize=6, loc="upper left")
    fig.subplots_adjust(left=0.02, right=0.95, bottom=0.05, top=0.92, wspace=0.15)
    return fig


# -- §9.10 synthetic vs real --------------------------------------------------------------------
def profiles_figure(
    profiles: Mapping[str, Mapping[str, np.ndarray]], layers: Sequence[str], max_cols: int = 3
) -> Figure:
    """Feature-value profiles of several explanations overlaid, one panel per layer in
    ``layers`` (fig 9.14-9.16). ``profiles`` is {label: {layer: fv}}."""
    rows, cols = _grid(len(layers), max_cols)
    fig = new_figure(3.4 * cols, 1.9 * rows + 0.5)
    for i, name in enumerate(layers):
        ax = fig.add_subplot(rows, cols, i + 1)
        for j, (label, prof) in enumerate(profiles.items()):
            fv = as_numpy(prof[name])
            ax.plot(np.arange(fv.size), fv, lw=0.9, label=label,
                    color=CLASS_COLOURS[(j + 1) % len(CLASS_COLOURS)], alpha=0.85)
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=5)
        if i == 0:
            ax.legend(fontsize=5)
    _grid_adjust(fig, suptitle=False, hspace=0.4, wspace=0.2)
    return fig


def divergence_figure(
    comparisons: Mapping[str, Mapping[str, Mapping[str, float]]], layers: Sequence[str]
) -> Figure:
    """1 − cosine and Jensen-Shannon divergence of fv profiles over the layers, one line
    per comparison. ``comparisons`` is {label: {layer: {"cosine": .., "js": ..}}}."""
    fig = new_figure(10, 5.2)
    x = np.arange(len(layers))
    for row, key, what in ((0, "cosine", "1 − cosine"), (1, "js", "Jensen-Shannon")):
        ax = fig.add_subplot(2, 1, row + 1)
        for j, (label, per_layer) in enumerate(comparisons.items()):
            y = [per_layer.get(name, {}).get(key, np.nan) for name in layers]
            ax.plot(x, y, "o-", ms=2.5, lw=1, label=label,
                    color=CLASS_COLOURS[(j + 1) % len(CLASS_COLOURS)])
        ax.set_ylabel(what, fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(layers if row == 1 else [], rotation=90, fontsize=6)
        ax.tick_params(axis="y", labelsize=6)
        ax.grid(alpha=0.3)
        if row == 0:
            ax.legend(fontsize=7)
            ax.set_title("feature-value profiles compared, layer by layer (input → output)",
                         fontsize=9)
    fig.tight_layout()
    return fig


# -- §9.11 bias -----------------------------------------------------------------------------------
def bias_figure(prob, share, pearson_r: float, spearman_r: float, class_name: str) -> Figure:
    """Share of the output relevance reaching the pixels vs the class probability."""
    fig = new_figure(5.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(as_numpy(prob), 100 * as_numpy(share), s=6, alpha=0.6, color="#d62728")
    ax.set_xlabel(f"probability of {class_name!r} at the pixel", fontsize=8)
    ax.set_ylabel("relevance reaching the pixels (% of output)", fontsize=8)
    ax.set_title(f"bias absorption: Pearson {pearson_r:.2f}, Spearman {spearman_r:.2f}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def absorbed_figure(absorbed: Mapping[str, float], output_total: float) -> Figure:
    """Relevance lost to the biases in each layer, as a share of the output relevance."""
    names = list(absorbed)
    vals = np.array([absorbed[n] for n in names], dtype=np.float64)
    vals = 100 * vals / output_total if output_total else vals * 0
    fig = new_figure(10, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(len(names)), vals, color=np.where(vals >= 0, "#d62728", "#1f77b4"))
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("% of output relevance", fontsize=8)
    ax.set_title("relevance absorbed by the biases, per layer", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
