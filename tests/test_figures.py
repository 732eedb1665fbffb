"""Figures from hand-made relevance: what each panel shows, and how PNGs are written."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segscope import analysis as A
from segscope.viz import figures as F
from segscope.viz.cmap import heatmap_rgb


def _png_ok(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_save_png_is_atomic_and_leaves_no_temp(tmp_path):
    fig = F.feature_values_figure(np.array([0.5, 1.5, 2.0]), "conv1_1")
    path = F.save_png(fig, tmp_path / "sub" / "fv.png")
    assert _png_ok(path) == (800, 280)
    assert sorted(p.name for p in path.parent.iterdir()) == ["fv.png"]


def test_no_pyplot_and_no_backend_change():
    code = (
        # get_backend() would itself resolve the backend through pyplot: read the raw value.
        "import matplotlib; raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend');"
        "before = raw();"
        "import sys, numpy as np, tempfile, os;"
        "from segscope.viz import figures as F;"
        "F.save_png(F.bias_figure(np.r_[0.1, 0.9], np.r_[0.5, 0.1], -1.0, -1.0, 'road'),"
        " os.path.join(tempfile.mkdtemp(), 'b.png'));"
        "assert 'matplotlib.pyplot' not in sys.modules;"
        "assert raw() == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_overlay_blends_by_relevance():
    image = np.zeros((3, 2, 2))
    image[:, 0, 0] = [0.3, 0.6, 0.9]  # grey 0.6
    rel = np.array([[0.0, 2.0], [-2.0, 0.0]])
    out = F.overlay_rgb(image, rel, limit=2.0, alpha=0.5)
    np.testing.assert_allclose(out[0, 0], [0.6, 0.6, 0.6])  # R = 0: the grey image
    np.testing.assert_allclose(out[1, 1], [0.0, 0.0, 0.0])
    # |R| = limit: half grey (0) and half pure red / pure blue.
    np.testing.assert_allclose(out[0, 1], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(out[1, 0], [0.0, 0.0, 0.5])


def test_layerwise_titles_and_own_scale():
    maps = {"conv1_1_D": np.array([[1.0, 0.0]]), "data": np.array([[0.0, 0.01]])}
    fig = F.layerwise_figure(maps, {"conv1_1_D": 1.0, "data": 0.01})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["conv1_1_D\nΣR=1", "data\nΣR=0.01"]
    # Own scale: each map's maximum is full red.
    for ax in fig.axes:
        assert (ax.images[0].get_array().reshape(-1, 3) == [255, 0, 0]).all(axis=1).any()
    glob = F.layerwise_figure(maps, {"conv1_1_D": 1.0, "data": 0.01}, scale="global")
    data_panel = glob.axes[1].images[0].get_array()
    np.testing.assert_array_equal(data_panel[0, 1], heatmap_rgb(np.array([[0.01]]), 1.0)[0, 0])


def test_feature_maps_pick_top_and_bottom_on_one_scale():
    r = np.zeros((5, 2, 2))
    for k, v in enumerate([1.0, 5.0, 3.0, 0.5, 2.0]):
        r[k, 0, 0] = v
    fv = A.feature_values(r)
    fig = F.feature_maps_figure(r, fv, "conv3_1_D", top=2, bottom=1)
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes]
    assert titles == ["top: feature 1", "top: feature 2", "bottom: feature 3"]
    # One global scale (eq 9.2): feature 2 (3 of max 5) is not full red.
    px = fig.axes[1].images[0].get_array()[0, 0]
    np.testing.assert_array_equal(px, heatmap_rgb(np.array([[3.0]]), 5.0)[0, 0])


def test_switch_off_frames_show_only_the_kept_pixels():
    r = np.full((10, 10), 1 / 90)
    r.ravel()[:10] = 9.9
    curve = A.switch_off_curve(r)
    fig = F.switch_off_figure(curve, r, [0.99, 0.5])
    assert "in 10.0 % of the pixels" in fig.axes[1].get_title()
    frame = fig.axes[1].images[0].get_array()
    off = (frame.reshape(-1, 3) == F.OFF_RGB).all(axis=1)
    assert off.sum() == 90 and not off[:10].any()


def test_separation_lights_pixels_at_the_common_threshold():
    maps = np.zeros((2, 3, 3))
    maps[0, 0, 0], maps[0, 1, 1] = 4.0, 3.0
    maps[1, 2, 2], maps[1, 0, 2] = 2.0, 1.0
    t = A.common_threshold(maps, 0.7)  # 4 + 3 = 70 % of 10
    assert t == 3.0
    fig = F.separation_figure(maps, t, 0.7, "conv2_1", fv=A.feature_values(maps))
    lit = [~(ax.images[0].get_array().reshape(-1, 3) == F.OFF_RGB).all(axis=1)
           for ax in fig.axes]
    assert lit[0].sum() == 2 and lit[0][0] and lit[0][4]
    assert lit[1].sum() == 0  # the weaker feature stays dark at this threshold


def test_other_figures_render(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.random((12, 3))
    figs = {
        "classes": F.class_scatter_figure(points, A.unit_points(points),
                                          ["road", "markings", "background"], "conv2_1_D"),
        "profiles": F.profiles_figure(
            {"a": {"conv1_1": rng.random(4)}, "b": {"conv1_1": rng.random(4)}}, ["conv1_1"]),
        "divergence": F.divergence_figure(
            {"a vs b": {"conv1_1": {"cosine": 0.1, "js": 0.2}}}, ["conv1_1", "pool1"]),
        "bias": F.bias_figure(rng.random(20), rng.random(20), 0.1, 0.2, "road"),
        "absorbed": F.absorbed_figure({"conv1_1": 0.2, "conv1_2": -0.1}, 1.0),
        "all_fv": F.all_feature_values_figure({"data": rng.random(3),
                                               "conv1_1": rng.random(8)}),
        "images": F.images_figure(
            [{"title": "x", "image": rng.random((3, 8, 12)),
              "label": np.full((8, 12), 255), "prediction": np.zeros((8, 12), int)}],
            [(0, 0, 0), (255, 0, 0), (0, 0, 255)]),
    }
    for name, fig in figs.items():
        w, h = _png_ok(F.save_png(fig, tmp_path / f"{name}.png"))
        assert w > 100 and h > 100


@pytest.mark.parametrize("n", [1, 7, 37])
def test_layer_grid_has_one_panel_per_layer(n):
    maps = {f"l{i}": np.ones((2, 2)) * i for i in range(n)}
    fig = F.layerwise_figure(maps, {k: float(v.sum()) for k, v in maps.items()})
    assert len(fig.axes) == n
