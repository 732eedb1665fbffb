"""The procedural road-scene generator: determinism, geometry of the labels, the
labels' agreement with the picture, the dataset wrapper and ``segscope synth``."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from segscope.cli import main
from segscope.data import PRESETS, ROAD3, SyntheticRoads, render_scene
from segscope.data.synthetic import scene_params
from segscope.errors import SegscopeError
from segscope.viz.contact import contact_sheet, label_overlay

SIZE = (64, 96)
#: A straight, flat, unrolled, empty road: the pinhole model predicts every label edge.
PLAIN = dict(curvature=0.0, slope=0.0, yaw=0.0, roll=0.0, vehicles=0, trees=0)


def _luma(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


@pytest.mark.parametrize("preset", PRESETS)
def test_pure_function_of_seed_index_and_settings(preset):
    a_img, a_lab = render_scene(3, 5, SIZE, preset)
    b_img, b_lab = render_scene(3, 5, SIZE, preset)
    assert a_img.tobytes() == b_img.tobytes()
    assert a_lab.tobytes() == b_lab.tobytes()
    c_img, c_lab = render_scene(3, 6, SIZE, preset)
    assert a_img.tobytes() != c_img.tobytes()
    assert a_lab.tobytes() != c_lab.tobytes()
    d_img, _ = render_scene(4, 5, SIZE, preset)
    assert a_img.tobytes() != d_img.tobytes()
    # an override changes only what it names
    e_img, _ = render_scene(3, 5, SIZE, preset, vehicles=0)
    assert scene_params(3, 5, preset, vehicles=0).curvature == scene_params(3, 5, preset).curvature
    assert e_img.shape == a_img.shape


def test_global_rng_is_neither_used_nor_disturbed():
    np.random.seed(1)
    before = np.random.random()
    np.random.seed(1)
    render_scene(0, 0, SIZE, "randomized")
    assert np.random.random() == before


@pytest.mark.parametrize("preset", PRESETS)
def test_output_types_and_ranges(preset):
    image, label = render_scene(1, 2, SIZE, preset)
    assert image.shape == SIZE + (3,) and image.dtype == np.float32
    assert label.shape == SIZE and label.dtype == np.uint8
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(np.unique(label)) <= {0, 1, 2}


def test_road_edges_and_lane_lines_follow_the_pinhole_model():
    """On a straight flat road the surface and the solid lines sit where the pinhole
    model puts them: row v sees the ground at z = f h / (v - v_h), and road coordinate x
    appears at column c_x + f (x - x_cam) / z."""
    H, W = 120, 160
    settings = dict(PLAIN, lanes=3, ego_lane=1, ego_offset=0.3, lane_style="solid",
                    pitch=0.06, hfov=70.0, cam_height=1.5, lane_width=3.6,
                    shoulder_left=0.8, shoulder_right=2.5)
    _, label = render_scene(0, 0, (H, W), "narrow", **settings)
    f = (W / 2) / math.tan(math.radians(70.0) / 2)
    v_h = H / 2 - f * math.tan(0.06)
    x_cam = 1.5 * 3.6 + 0.3
    assert not (label[: int(math.floor(v_h)) - 1] != 0).any(), "road above the horizon"
    for row in (int(v_h) + 12, int(v_h) + 20, H - 30):
        z = f * 1.5 / (row + 0.5 - v_h)

        def col(x, z=z):
            return W / 2 + f * (x - x_cam) / z

        surface = np.nonzero(label[row] != 0)[0]
        assert abs(surface[0] - max(col(-0.8), 0)) <= 1.0
        assert abs(surface[-1] + 1 - min(col(3 * 3.6 + 2.5), W)) <= 1.0
        marks = np.nonzero(label[row] == 2)[0]
        runs = np.split(marks, np.nonzero(np.diff(marks) > 1)[0] + 1)
        centres = [0.5 * (r[0] + r[-1]) + 0.5 for r in runs]
        expected = [col(i * 3.6) for i in range(4) if 0 <= col(i * 3.6) < W]
        assert len(centres) == len(expected)
        assert np.allclose(centres, expected, atol=1.0)


def test_dashes_shrink_with_distance():
    H, W = 360, 480
    _, label = render_scene(0, 0, (H, W), "narrow", **PLAIN, lanes=2, ego_lane=0,
                            ego_offset=0.0, dash_phase=0.0)
    # the lane line between the two lanes; per row, does the row hold a marking near it?
    f = (W / 2) / math.tan(math.radians(65.0) / 2)
    v_h = H / 2 - f * math.tan(0.05)
    rows = np.arange(int(v_h) + 3, H)
    z = f * 1.5 / (rows + 0.5 - v_h)
    cols = np.round(W / 2 + f * (3.6 - 1.8) / z - 0.5).astype(int)
    ok = cols < W - 2
    on = np.array([(label[r, max(c - 2, 0): c + 3] == 2).any()
                   for r, c in zip(rows, cols, strict=True)])
    rows, on = rows[ok], on[ok]
    flips = np.nonzero(np.diff(on.astype(int)))[0] + 1
    runs = [r for r in np.split(np.arange(len(on)), flips) if on[r[0]]]
    runs = [r for r in runs if r[0] > 0 and r[-1] < len(on) - 1]  # whole dashes only
    assert len(runs) >= 3
    lengths = [len(r) for r in runs]  # ordered far (top) to near (bottom)
    # non-decreasing up to one row of rounding
    assert all(b >= a - 1 for a, b in zip(lengths, lengths[1:], strict=False)), lengths
    assert lengths[-1] > 3 * lengths[0], lengths
    # a dash covers z in [12k, 12k + 4.5] m: its nearest row sees z = 12k
    z_near = f * 1.5 / (rows[[r[-1] for r in runs]] + 0.5 - v_h)
    assert np.allclose(np.diff(z_near[::-1]), 12.0, atol=1.5)


@pytest.mark.parametrize("preset", PRESETS)
def test_markings_are_enclosed_by_road_in_their_row(preset):
    for i in range(12):
        _, label = render_scene(7, i, SIZE, preset)
        surface = label != 0
        ys, xs = np.nonzero(label == 2)
        assert (xs > 0).all() and (xs < SIZE[1] - 1).all()
        assert surface[ys, xs - 1].all() and surface[ys, xs + 1].all()


@pytest.mark.parametrize("preset", PRESETS)
def test_road_never_above_the_horizon_and_mostly_in_the_lower_part(preset):
    H, W = SIZE
    for i in range(10):
        p = scene_params(2, i, preset)
        _, label = render_scene(2, i, SIZE, preset, slope=0.0, roll=0.0)
        f = (W / 2) / math.tan(math.radians(p.hfov) / 2)
        v_h = H / 2 - f * math.tan(p.pitch)
        ys = np.nonzero(label != 0)[0]
        assert ys.size and ys.min() >= math.floor(v_h)
        assert np.mean(ys > v_h + 2) > 0.95


def test_markings_are_brighter_than_road_under_narrow():
    for i in range(6):
        image, label = render_scene(0, i, SIZE, "narrow")
        y = _luma(image)
        assert y[label == 2].mean() > y[label == 1].mean() + 0.25


def test_markings_visible_at_96x128():
    for preset in PRESETS:
        visible = [(render_scene(5, i, (96, 128), preset)[1] == 2).sum() >= 20
                   for i in range(8)]
        # narrow always paints its lines; a street may have one lane and no edge lines
        assert all(visible) if preset == "narrow" else sum(visible) >= 6, (preset, visible)


@pytest.mark.parametrize("preset", PRESETS)
def test_class_shares_are_plausible(preset):
    counts = np.zeros(3)
    for i in range(20):
        _, label = render_scene(11, i, SIZE, preset)
        counts += np.bincount(label.ravel(), minlength=3)
    share = counts / counts.sum()
    assert 0.15 <= share[1] <= 0.60, share
    assert 0.005 <= share[2] <= 0.08, share


def test_randomized_varies_the_look_narrow_keeps_it():
    def stats(preset):
        sky, road = [], []
        for i in range(12):
            image, label = render_scene(0, i, SIZE, preset, vehicles=0, trees=0)
            road.append(image[label == 1].mean(0))
            sky.append(np.median(image[:4].reshape(-1, 3), axis=0))
        return np.array(sky), np.array(road)

    n_sky, n_road = stats("narrow")
    r_sky, r_road = stats("randomized")
    # narrow: one sky and one asphalt, whatever the geometry
    assert n_sky.std(0).max() < 0.03
    assert r_sky.std(0).mean() > 3 * n_sky.std(0).mean() + 0.02
    assert r_road.std(0).mean() > 2 * n_road.std(0).mean() + 0.02


def test_unknown_preset_and_setting_are_one_line_errors():
    with pytest.raises(SegscopeError, match="narrow, urban, randomized"):
        render_scene(0, 0, SIZE, "nope")
    with pytest.raises(SegscopeError, match="unknown scene setting 'colour'"):
        render_scene(0, 0, SIZE, colour=1)
    with pytest.raises(SegscopeError, match="non-negative"):
        render_scene(-1, 0, SIZE)
    with pytest.raises(SegscopeError):
        SyntheticRoads(3, preset="nope")


@pytest.mark.parametrize("setting,message", [
    (dict(lane_width=0), "'lane_width' must be in"), (dict(hfov=0), "'hfov' must be in"),
    (dict(jpeg=float("inf")), "bad value"), (dict(cam_height=-1), "'cam_height' must be in"),
    (dict(gamma=0), "'gamma' must be in"), (dict(pitch=90), "'pitch' must be in"),
    (dict(hfov=180), "'hfov' must be in"), (dict(curvature=1e300), "'curvature' must be in"),
    (dict(vehicles=10**9), "'vehicles' must be in"), (dict(tint=(1, 9, 1)), "'tint' must be in"),
    (dict(asphalt_rgb=(0.3, 0.3, 1.5)), "'asphalt_rgb' must be in"),
    (dict(jpeg=0.5), "bad value"), (dict(pole_spacing=0.5), "0 \\(none\\) or at least"),
    (dict(ego_lane=1), "needs lanes set too"), (dict(ego_lane=3, lanes=3), "below lanes"),
])
def test_settings_outside_their_physical_range_are_one_line_errors(setting, message):
    """Each of these divided by zero, overflowed, or rendered no scene (a white image, a
    camera below the road, all background) or never finished."""
    with pytest.raises(SegscopeError, match=message):
        render_scene(0, 0, (16, 24), "urban", **setting)


@pytest.mark.parametrize("preset", ["narrow", "urban", "randomized"])
def test_every_drawn_scene_is_within_the_settings_ranges(preset):
    """A value read off a manifest can always be fixed with --set: the ranges hold every
    scene the presets draw."""
    import dataclasses

    from segscope.data.synthetic import check_overrides, scene_params

    for i in range(150):
        params = dataclasses.asdict(scene_params(5, i, preset))
        assert check_overrides(params) == params


def test_fast_remainder_is_numpys_to_the_bit():
    """The generator's remainder (float64 quotient, one correction) against np.mod."""
    from segscope.data.synthetic_canvas import fmod

    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(0, 1, 20000) * 10.0 ** rng.uniform(-3, 4, 20000),
                        [0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 6.0, 1.05]]).astype(np.float32)
    for b in (0.15, 1.0, 3.0, 6.0, 2.2, 0.37):
        got = fmod(a, b)
        assert got.dtype == np.float32
        assert np.array_equal(got, np.mod(a, np.float32(b)))
    per = rng.uniform(2.2, 4.0, a.size).astype(np.float32)  # one divisor per element
    assert np.array_equal(fmod(np.abs(a), per), np.mod(np.abs(a), per))


def test_dataset_items_and_pickling():
    data = SyntheticRoads(3, size=SIZE, seed=2, preset="randomized", vehicles=1)
    assert len(data) == 3 and data.class_names == ROAD3
    assert data.settings["overrides"] == {"vehicles": 1}
    image, label = data[1]
    assert image.shape == (3,) + SIZE and image.dtype == torch.float32
    assert label.shape == SIZE and label.dtype == torch.int64
    assert image.min() >= 0 and image.max() <= 1
    ref_img, ref_lab = render_scene(2, 1, SIZE, "randomized", vehicles=1)
    assert torch.equal(image, torch.from_numpy(ref_img).permute(2, 0, 1))
    assert torch.equal(label, torch.from_numpy(ref_lab).long())
    clone = pickle.loads(pickle.dumps(data))
    assert torch.equal(clone[1][0], image)
    assert torch.equal(data[-1][1], data[2][1])
    with pytest.raises(IndexError):
        data[3]
    assert [x for x, _ in zip(data, range(10), strict=False)].__len__() == 3


def test_contact_sheet_layout_and_overlay(tmp_path):
    img = np.zeros((8, 10, 3), np.float32)
    img[...] = 0.5
    lab = np.zeros((8, 10), np.uint8)
    lab[4:, :5] = 1
    lab[4:, 5:] = 2
    lab[0, 0] = 255
    over = label_overlay(img, lab)
    # road pixel: 128 + 0.55 * (colour - 128); ignore pixel untouched
    assert tuple(over[5, 0]) == tuple(int(128 + 0.55 * (c - 128) + 0.5) for c in (128, 64, 128))
    assert tuple(over[0, 0]) == (128, 128, 128)
    path = contact_sheet([img] * 5, [lab] * 5, tmp_path / "s.png", cols=2, gap=4)
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (3 * (8 + 4) + 4, 2 * (10 + 2 + 10 + 4) + 4, 3)
    assert tuple(sheet[4 + 5, 4 + 12]) == tuple(over[5, 0])
    with pytest.raises(SegscopeError):
        contact_sheet([img], [], tmp_path / "t.png")


def test_synth_command_writes_a_readable_folder(tmp_path, capsys):
    out = tmp_path / "synth"
    main(["synth", "--out", str(out), "--n", "3", "--size", "48x64", "--seed", "4",
          "--preset", "randomized", "--set", "vehicles=0", "--quiet"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 3 and manifest["class_names"] == list(ROAD3)
    assert manifest["settings"]["preset"] == "randomized"
    assert manifest["settings"]["overrides"] == {"vehicles": 0}
    counts = np.zeros(3)
    for i in range(3):
        img = np.asarray(Image.open(out / "images" / f"{i:06d}.png"))
        lab = np.asarray(Image.open(out / "labels" / f"{i:06d}.png"))
        ref_img, ref_lab = render_scene(4, i, (48, 64), "randomized", vehicles=0)
        assert img.shape == (48, 64, 3) and lab.dtype == np.uint8
        assert np.array_equal(lab, ref_lab)
        assert np.abs(img.astype(int) - ref_img * 255).max() <= 1
        counts += np.bincount(lab.ravel(), minlength=3)
    shares = [manifest["class_pixel_shares"][c] for c in ROAD3]
    assert np.allclose(shares, counts / counts.sum())
    assert (out / "contact_sheet.png").is_file()
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--preset", "foggy"], "unknown preset 'foggy'"),
    (["--size", "12by3"], "size must be HxW"),
    (["--n", "0"], "--n must be at least 1"),
])
def test_synth_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "o"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and err.startswith("segscope: error:")
