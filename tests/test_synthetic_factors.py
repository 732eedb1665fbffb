"""Named randomisation factors and the urban street elements: each factor owns its
draws, switching one off changes only what it drew, pavements are never road, and the
factor modes travel into manifests and checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segscope.data.synthetic import FACTOR_BITS, FACTORS, SyntheticRoads, render_scene, scene_params
from segscope.data.synthetic_factors import load_factor_file, resolve_modes
from segscope.errors import SegscopeError
from tests._cli import run_cli as _run_cli


class _Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err.strip()


@pytest.fixture
def run_cli(capsys):
    return lambda args: _Result(*_run_cli(args, capsys))

SIZE = (72, 96)
#: Effects that spread a change over neighbouring pixels (blur, JPEG blocks, lens
#: resampling) are off, so that a change stays where it was made.
LOCAL = {"blur": "off", "jpeg": "off", "lens": "off"}


def _changed_fields(a, b) -> set[str]:
    return {k for k in vars(a) if getattr(a, k) != getattr(b, k)}


@pytest.mark.parametrize("preset", ["urban", "randomized"])
def test_each_factor_draws_only_its_own_fields(preset):
    for index in range(6):
        on = scene_params(3, index, preset)
        for name, factor in FACTORS.items():
            if name == "layout":  # the layout decides every nominal value
                continue
            for mode in ("off", "fixed"):
                other = scene_params(3, index, preset, {name: mode})
                changed = _changed_fields(on, other)
                assert changed <= set(factor.fields), (name, mode, changed - set(factor.fields))


def test_off_and_fixed_mean_absent_and_nominal():
    p = scene_params(0, 4, "urban", {"vehicles": "off", "shadows": "off", "noise": "fixed",
                                     "camera": "fixed"})
    assert p.vehicles == 0 and p.parked == 0 and p.shadow == 0
    assert p.noise == 0.0 and (p.cam_height, p.pitch, p.roll) == (1.35, 0.02, 0.0)
    fixed = [scene_params(0, i, "urban", {"camera": "fixed"}).hfov for i in range(4)]
    varied = [scene_params(0, i, "urban").hfov for i in range(4)]
    assert len(set(fixed)) == 1 and len(set(varied)) == 4


def _bit(name: str) -> int:
    return 1 << FACTOR_BITS.index(name)


@pytest.mark.parametrize("name", ["vehicles", "people", "poles", "trees", "buildings",
                                  "shadows", "markings", "sidewalks"])
def test_switching_an_element_off_changes_only_where_it_acted(name):
    acted_somewhere = False
    for index in range(6):
        img_on, lab_on, trace = render_scene(1, index, SIZE, "urban", LOCAL, trace=True)
        img_off, lab_off = render_scene(1, index, SIZE, "urban", {**LOCAL, name: "off"})
        acted = (trace & _bit(name)) != 0
        # a marking next to an object is not labelled (the rule: road on both sides),
        # so a change may reach one pixel sideways of what the factor drew
        near = acted.copy()
        near[:, 1:] |= acted[:, :-1]
        near[:, :-1] |= acted[:, 1:]
        changed = (np.abs(img_on - img_off).max(axis=2) > 1e-6) | (lab_on != lab_off)
        assert not (changed & ~near).any(), (name, index, int((changed & ~near).sum()))
        acted_somewhere |= bool(changed.any())
        # an object only ever hides road: it never makes road or paint appear
        if name not in ("markings", "shadows", "sidewalks"):
            assert not ((lab_on == 1) & (lab_off == 0)).any()
            assert not ((lab_on == 2) & (lab_off != 2)).any()
    assert acted_somewhere, name


@pytest.mark.parametrize("name", ["exposure", "white_balance", "vignetting", "noise", "blur",
                                  "jpeg", "weather"])
def test_photometric_factors_never_change_the_labels(name):
    for index in range(4):
        img_on, lab_on = render_scene(2, index, SIZE, "urban", {name: "on"})
        img_off, lab_off = render_scene(2, index, SIZE, "urban", {name: "off"})
        assert np.array_equal(lab_on, lab_off)


def test_pavements_and_kerbs_are_never_road():
    """A straight flat street: row v sees the ground at z = f h / (v - v_h), road
    coordinate x appears at column c_x + f (x - x_cam) / z; the kerb and the pavement
    beyond the road edge are background, the carriageway is road."""
    H, W = 120, 160
    s = dict(curvature=0.0, slope=0.0, yaw=0.0, roll=0.0, pitch=0.05, hfov=70.0,
             cam_height=1.4, lanes=2, lane_width=3.2, ego_lane=0, ego_offset=0.0,
             shoulder_left=0.5, shoulder_right=0.5, sidewalk_left=3.0, sidewalk_right=3.0,
             distortion=0.0)
    factors = {"vehicles": "off", "people": "off", "poles": "off", "trees": "off",
               "buildings": "off", **LOCAL}
    image, label = render_scene(0, 0, (H, W), "urban", factors, **s)
    f = (W / 2) / math.tan(math.radians(70.0) / 2)
    v_h = H / 2 - f * math.tan(0.05)
    x_cam = 0.5 * 3.2
    road = (-0.5, 2 * 3.2 + 0.5)
    checked = 0
    for row in range(int(v_h) + 6, H, 7):
        z = f * 1.4 / (row + 0.5 - v_h)
        for col in range(W):
            x = x_cam + (col + 0.5 - W / 2) * z / f
            if road[0] + 0.1 < x < road[1] - 0.1 or 0 < abs(x - road[1]) < 0.05:
                continue
            if road[0] - 0.15 - 3.0 + 0.05 < x < road[0] - 0.05 or \
                    road[1] + 0.05 < x < road[1] + 0.15 + 3.0 - 0.05:
                assert label[row, col] == 0, (row, col, x)  # kerb or pavement
                checked += 1
        inside = [c for c in range(W) if road[0] + 0.1
                  < x_cam + (c + 0.5 - W / 2) * z / f < road[1] - 0.1]
        assert (label[row, inside] != 0).all()
    assert checked > 200


def test_pavement_pixels_are_background_in_random_streets():
    for index in range(8):
        _, label, trace = render_scene(4, index, SIZE, "urban", LOCAL, trace=True)
        walk = (trace & _bit("sidewalks")) != 0
        assert walk.any() and (label[walk] == 0).all()


@pytest.mark.parametrize("preset", ["urban", "randomized"])
def test_determinism_with_factors_and_workers_order(preset):
    factors = {"shadows": "off", "camera": "fixed"}
    a = [render_scene(9, i, SIZE, preset, factors) for i in (3, 1, 2)]
    b = [render_scene(9, i, SIZE, preset, factors) for i in (1, 2, 3)]
    for (ia, la), (ib, lb) in zip(a, [b[2], b[0], b[1]], strict=True):
        assert ia.tobytes() == ib.tobytes() and la.tobytes() == lb.tobytes()
    other = render_scene(9, 3, SIZE, preset, {"shadows": "off"})[0]
    assert other.tobytes() != a[0][0].tobytes()


def test_bad_factors_are_one_line_errors(tmp_path, run_cli):
    with pytest.raises(SegscopeError, match="unknown factor 'shadow'"):
        render_scene(0, 0, SIZE, "urban", {"shadow": "off"})
    with pytest.raises(SegscopeError, match="bad mode 'of' for factor 'shadows'"):
        SyntheticRoads(2, size=SIZE, preset="urban", factors={"shadows": "of"})
    bad = tmp_path / "f.json"
    bad.write_text("{not json")
    with pytest.raises(SegscopeError, match="does not parse"):
        load_factor_file(bad)
    bad.write_text('{"factors": {"foo": "off"}}')
    with pytest.raises(SegscopeError, match=f"factor file {bad}: unknown factor 'foo'"):
        load_factor_file(bad)
    bad.write_text('{"factors": {"noise": "off"}, "colour": 1}')
    with pytest.raises(SegscopeError, match="unknown key"):
        load_factor_file(bad)
    for args, message in ((["--factor", "shadow=off"], "unknown factor 'shadow'"),
                          (["--factor", "shadows"], "NAME=MODE"),
                          (["--factor", "jpeg=maybe"], "bad mode 'maybe'"),
                          (["--factors", str(bad)], "unknown key"),
                          (["--size", "100000x100000"], "too large to render")):
        r = run_cli(["synth", "--out", str(tmp_path / "o"), "--n", "2", *args])
        assert r.code == 2 and message in r.err and r.err.count("\n") <= 1, (args, r.err)
        assert not (tmp_path / "o").exists()


def test_factor_file_and_command_line_go_into_the_manifest(tmp_path, run_cli):
    spec = tmp_path / "mine.json"
    spec.write_text(json.dumps({"preset": "urban", "factors": {"shadows": "off", "noise": "off"},
                                "set": {"cyclists": 0}}))
    out = tmp_path / "s"
    r = run_cli(["synth", "--out", str(out), "--n", "2", "--size", "48x64", "--factors",
                 str(spec), "--factor", "noise=on", "--quiet"])
    assert r.code == 0, r.err
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings["preset"] == "urban"
    assert settings["factors"] == resolve_modes("urban", {"shadows": "off"})
    assert settings["factor_changes"] == {"shadows": "off", "noise": "on"}
    assert settings["overrides"] == {"cyclists": 0}
    data = SyntheticRoads(2, size=(48, 64), preset="urban",
                          factors={"shadows": "off", "noise": "on"}, cyclists=0)
    from PIL import Image

    lab = np.asarray(Image.open(out / "labels" / "000001.png"))
    assert np.array_equal(lab, data.render(1)[1])


def test_synth_never_mixes_two_runs_and_resumes_its_own(tmp_path, run_cli):
    out = tmp_path / "s"
    assert run_cli(["synth", "--out", str(out), "--n", "6", "--size", "32x48", "-q"]).code == 0
    r = run_cli(["synth", "--out", str(out), "--n", "3", "--seed", "5", "--size", "32x48"])
    assert r.code == 2 and "--resume" in r.err and "--overwrite" in r.err
    assert len(list((out / "images").iterdir())) == 6
    r = run_cli(["synth", "--out", str(out), "--n", "3", "--seed", "5", "--size", "32x48",
                 "--resume"])
    assert r.code == 2 and "other settings (n: 6 -> 3, seed: 0 -> 5)" in r.err, r.err
    r = run_cli(["synth", "--out", str(out), "--n", "3", "--seed", "5", "--size", "32x48",
                 "--overwrite", "-q"])
    assert r.code == 0
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"00000{i}.png"
                                                                  for i in range(3)]
    assert json.loads((out / "manifest.json").read_text())["count"] == 3
    # an interrupted run (scenes 1 and 2 missing, no manifest) continues with --resume
    for i in (1, 2):
        (out / "images" / f"00000{i}.png").unlink()
    (out / "manifest.json").unlink()
    before = (out / "images" / "000000.png").stat().st_mtime_ns
    r = run_cli(["synth", "--out", str(out), "--n", "3", "--seed", "5", "--size", "32x48",
                 "--resume", "-q"])
    assert r.code == 0, r.err
    assert (out / "images" / "000000.png").stat().st_mtime_ns == before  # kept
    from PIL import Image

    lab = np.asarray(Image.open(out / "labels" / "000002.png"))
    assert np.array_equal(lab, render_scene(5, 2, (32, 48))[1])
    assert json.loads((out / "manifest.json").read_text())["count"] == 3


@pytest.mark.parametrize("entry", ["../elsewhere", "/etc", "images/../../x"])
def test_a_manifest_that_points_outside_its_folder_is_refused(tmp_path, run_cli, entry):
    from segscope.data.real import open_dataset

    out = tmp_path / "s"
    assert run_cli(["synth", "--out", str(out), "--n", "2", "--size", "32x48", "-q"]).code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["images"] = entry
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SegscopeError, match="inside the dataset"):
        open_dataset(out)


def test_a_model_trained_on_a_synth_folder_records_its_factors(tmp_path, run_cli):
    from segscope.checkpoint import read_metadata
    from segscope.training import TrainConfig, train

    data = tmp_path / "s"
    assert run_cli(["synth", "--out", str(data), "--n", "4", "--size", "32x48", "--preset",
                    "urban", "--factor", "people=off", "-q"]).code == 0
    res = train(TrainConfig(data=str(data), out=str(tmp_path / "r"), width=0.0625, iters=2,
                            batch_size=2, device="cpu", quiet=True, class_weights="none"))
    meta = read_metadata(res.model_path)["data"]
    assert meta["preset"] == "urban" and meta["factors"]["people"] == "off"
    assert meta["factor_changes"] == {"people": "off"} and meta["folder"] == str(data)
