"""The parameters of a synthetic scene, grouped into named randomisation factors.

Every randomisation of the generator belongs to exactly one *factor* (``camera``,
``shadows``, ``vehicles``, ...). A factor owns a set of :class:`SceneParams` fields and
draws them from its own random stream, so switching one factor off or fixing it leaves
every other draw of the scene unchanged. Each factor is in one of three modes:

``on``
    randomised, with the ranges of the preset;
``fixed``
    one nominal value for every image (the element is still there, always the same);
``off``
    the element is absent (no shadows, no vehicles, no noise, ...). A factor that is a
    property every scene must have (``camera``, ``geometry``, ``layout``, ``palette``,
    ``surface``) has no absence: ``off`` means the same as ``fixed``.

A *preset* is a layout and one mode per factor: ``narrow`` (a highway, only its
geometry varies), ``urban`` (streets like CamVid's: pavements, kerbs, buildings, parked
cars, people, shadows) and ``randomized`` (either layout, every factor on, wider ranges).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SegscopeError

#: The three modes of a factor.
MODES: tuple[str, ...] = ("on", "fixed", "off")
#: Scene layouts.
LAYOUTS: tuple[str, ...] = ("highway", "urban")


@dataclasses.dataclass
class SceneParams:
    """Everything that defines one scene; any field can be fixed with an override."""

    layout: str = "highway"  # highway | urban
    # geometry
    lanes: int = 3
    lane_width: float = 3.6
    ego_lane: int = 1
    ego_offset: float = 0.0
    yaw: float = 0.0
    curvature: float = 0.0
    slope: float = 0.0
    shoulder_left: float = 0.8
    shoulder_right: float = 2.5
    dash_phase: float = 0.0
    # sidewalks: a kerb and a strip beside the road on each side (0 m: none)
    sidewalk_left: float = 0.0
    sidewalk_right: float = 0.0
    sidewalk_style: str = "paved"  # paved | verge
    sidewalk_rgb: tuple = (0.55, 0.53, 0.50)
    kerb_rgb: tuple = (0.66, 0.65, 0.62)
    slab: float = 0.6
    driveways: float = 0.0  # share of the strip's length crossed by driveways
    # buildings
    buildings: float = 0.3  # skyline density
    facades: float = 0.0  # share of the near-road frontage that is buildings
    walls: float = 0.0  # share of the remaining frontage that is walls or fences
    facade_height: float = 12.0
    building_rgb: tuple = (0.62, 0.58, 0.52)
    median: str = "concrete"  # concrete | rail (highway)
    # vehicles
    vehicles: int = 2
    parked: float = 0.0  # share of the kerb occupied by parked cars
    # poles and signs
    pole_spacing: float = 45.0  # metres between poles (0: none)
    signs: float = 0.0  # share of poles that carry a sign
    # trees
    trees: int = 10
    trees_rgb: tuple = (0.13, 0.25, 0.10)
    bare: float = 0.0  # share of leafless trees
    # people
    pedestrians: int = 0
    cyclists: int = 0
    # shadows
    sun_dx: float = -0.9  # cast shadows: sideways offset per metre of height
    sun_dz: float = -0.3  # ... and along the road
    shadow: float = 0.45  # how much a cast shadow darkens the ground (0 = overcast)
    # road surface
    asphalt_rgb: tuple = (0.33, 0.33, 0.35)
    asphalt_texture: float = 0.06
    shoulder_shade: float = 1.08
    patches: float = 0.0
    cracks: float = 0.0
    manholes: int = 0
    wet: float = 0.0
    texture_offset: tuple = (0, 0)
    # markings
    lane_style: str = "dashed"  # dashed | solid | double | none
    edge_style: str = "solid"  # solid | double | none
    marking_rgb: tuple = (0.92, 0.92, 0.90)
    edge_rgb: tuple = (0.92, 0.92, 0.90)
    marking_fade: float = 0.0
    marking_gaps: float = 0.0
    dash_length: float = 4.5
    dash_gap: float = 7.5
    edge_width: float = 0.25
    line_width: float = 0.15
    crossing: float = 0.0  # distance of a zebra crossing (0: none)
    stop_line: float = 0.0  # distance of a stop line across the ego lanes (0: none)
    arrows: int = 0
    # palette: sky, clouds, vegetation, far hills
    grass_rgb: tuple = (0.30, 0.42, 0.17)
    sky_top_rgb: tuple = (0.30, 0.50, 0.85)
    sky_horizon_rgb: tuple = (0.78, 0.86, 0.95)
    clouds: float = 0.35
    hills_rgb: tuple = (0.45, 0.55, 0.55)
    # weather
    fog: float = 0.0  # 0 clear .. 1 dense
    rain: float = 0.0
    # camera
    cam_height: float = 1.5
    pitch: float = 0.05
    roll: float = 0.0
    hfov: float = 65.0
    # lens
    distortion: float = 0.0  # radial k1 (negative: barrel)
    # photometric
    brightness: float = 1.0
    contrast: float = 1.0
    gamma: float = 1.0
    tint: tuple = (1.0, 1.0, 1.0)
    vignette: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    motion: float = 0.0  # motion blur length in pixels at 360 rows
    jpeg: int = 0  # JPEG quality (0: no compression)


_FIELDS = {f.name: f for f in dataclasses.fields(SceneParams)}

#: The urban layout's nominal scene (a two-lane street with pavements and buildings).
_URBAN = dict(
    lanes=2, lane_width=3.2, ego_lane=0, shoulder_left=0.5, shoulder_right=0.5,
    sidewalk_left=2.8, sidewalk_right=2.8, driveways=0.05, buildings=0.6, facades=0.75,
    walls=0.6, facade_height=11.0, building_rgb=(0.66, 0.60, 0.52), vehicles=2, parked=0.35,
    pole_spacing=22.0, signs=0.35, trees=5, bare=0.5, pedestrians=3, cyclists=1,
    asphalt_rgb=(0.30, 0.30, 0.33), shoulder_shade=1.0, patches=0.3, cracks=0.2, manholes=1,
    edge_style="double", edge_rgb=(0.85, 0.72, 0.20), edge_width=0.1, line_width=0.12,
    dash_length=3.0, dash_gap=6.0, cam_height=1.35, pitch=0.02, hfov=60.0,
    sky_top_rgb=(0.45, 0.62, 0.88), sky_horizon_rgb=(0.85, 0.89, 0.94),
)


def nominal(layout: str) -> SceneParams:
    """The nominal (``fixed``) scene of ``layout``."""
    p = SceneParams()
    if layout == "urban":
        for key, value in _URBAN.items():
            setattr(p, key, value)
    p.layout = layout
    return p


# --------------------------------------------------------------------------- samplers
def _grey(rng, lo, hi, spread=0.03):
    return tuple((rng.uniform(lo, hi) + rng.normal(0, spread, 3)).clip(0.03, 0.95).tolist())


def _s_layout(rng, p, wide):  # the layout itself is drawn before the other factors
    pass


def _s_geometry(rng, p, wide):
    u = rng.uniform
    if p.layout == "urban":
        p.lanes = int(rng.choice([1, 2, 2, 2, 2, 3]))
        p.lane_width = float(u(2.8, 3.5))
        p.curvature = float(rng.choice([0.0, 1.0]) * u(-0.006, 0.006))
        p.slope = float(rng.choice([0.0, 1.0]) * u(-0.0008, 0.0008))
        # a gutter strip, or a parking lane
        p.shoulder_left = float(u(1.8, 2.4) if rng.random() < 0.3 else u(0.2, 0.8))
        p.shoulder_right = float(u(1.8, 2.4) if rng.random() < 0.3 else u(0.2, 0.8))
        p.yaw = float(rng.normal(0.0, 0.03))
    else:
        p.lanes = int(rng.integers(2, 5))
        p.curvature = float(rng.choice([0.0, 1.0, 1.0]) * u(-0.0035, 0.0035))
        p.slope = float(rng.choice([0.0, 1.0]) * u(-0.0005, 0.0005))
        p.yaw = float(rng.normal(0.0, 0.012))
        if wide:
            p.lane_width = float(u(3.0, 3.9))
            p.shoulder_left = float(u(0.3, 1.5))
            p.shoulder_right = float(u(0.5, 3.2))
    p.ego_lane = int(rng.integers(0, p.lanes))
    p.ego_offset = float(u(-0.4, 0.4))
    p.dash_phase = float(u(0.0, 50.0))


def _s_sidewalks(rng, p, wide):
    if p.layout != "urban":
        return
    u = rng.uniform
    p.sidewalk_left = float(u(2.0, 5.5))
    p.sidewalk_right = float(u(2.0, 5.5))
    p.sidewalk_style = "paved" if rng.random() < 0.85 else "verge"
    tone = u(0.38, 0.70)
    warm = u(-0.03, 0.06)
    p.sidewalk_rgb = tuple(np.clip(np.array([tone + warm, tone, tone - warm])
                                   + rng.normal(0, 0.02, 3), 0.05, 0.95).tolist())
    p.kerb_rgb = _grey(rng, 0.5, 0.78, 0.02)
    p.slab = float(u(0.4, 0.9))
    p.driveways = float(u(0.0, 0.15))


def _s_buildings(rng, p, wide):
    u = rng.uniform
    p.buildings = float(u(0.0, 0.6) if p.layout == "highway" else u(0.3, 0.9))
    if p.layout == "urban":
        p.facades = float(u(0.3, 1.0))
        p.walls = float(u(0.2, 0.9))
        p.facade_height = float(u(6.0, 18.0))
    base = rng.choice(4)
    palette = np.array([[0.62, 0.42, 0.33], [0.80, 0.74, 0.62], [0.70, 0.70, 0.70],
                        [0.55, 0.50, 0.45]])[base]
    p.building_rgb = tuple((palette * u(0.7, 1.15) + rng.normal(0, 0.04, 3)).clip(0.05, 0.95)
                           .tolist())
    p.median = str(rng.choice(["concrete", "rail"]))


def _s_vehicles(rng, p, wide):
    if p.layout == "urban":
        p.vehicles = int(rng.integers(0, 5))
        p.parked = float(u_ if (u_ := rng.uniform(0.0, 0.8)) > 0.1 else 0.0)
    else:
        p.vehicles = int(rng.integers(0, 5))


def _s_poles(rng, p, wide):
    if p.layout == "urban":
        p.pole_spacing = float(rng.uniform(10.0, 35.0))
        p.signs = float(rng.uniform(0.1, 0.7))
    else:
        p.pole_spacing = float(rng.uniform(30.0, 60.0))
        p.signs = float(rng.uniform(0.0, 0.2)) if wide else 0.0


def _s_trees(rng, p, wide):
    if p.layout == "urban":
        p.trees = int(rng.integers(0, 12))
        p.bare = float(rng.uniform(0.0, 1.0))
    else:
        p.trees = int(rng.integers(4, 16))
        p.bare = float(rng.uniform(0.0, 0.4)) if wide else 0.0
    if wide or p.layout == "urban":
        p.trees_rgb = tuple((np.array([0.13, 0.25, 0.10]) * rng.uniform(0.5, 1.6)).clip(0, 1)
                            .tolist())


def _s_people(rng, p, wide):
    if p.layout == "urban":
        p.pedestrians = int(rng.integers(0, 9))
        p.cyclists = int(rng.integers(0, 3))


def _s_shadows(rng, p, wide):
    u = rng.uniform
    p.sun_dx = float(u(-2.0, 2.0))
    p.sun_dz = float(u(-1.2, 0.8))
    p.shadow = float(u(0.25, 0.7) if rng.random() < 0.75 else 0.0)


def _s_surface(rng, p, wide):
    u = rng.uniform
    grey = u(0.15, 0.6) if wide else u(0.2, 0.45)
    blue = u(0.0, 0.04)
    p.asphalt_rgb = tuple((np.array([grey - blue, grey - blue / 2, grey + blue])
                           + rng.normal(0, 0.02, 3)).clip(0.05, 0.8).tolist())
    p.asphalt_texture = float(u(0.02, 0.18))
    p.shoulder_shade = float(u(0.85, 1.2)) if p.layout == "highway" else float(u(0.9, 1.1))
    p.patches = float(u(0.0, 0.8))
    p.cracks = float(u(0.0, 0.7) if rng.random() < 0.6 else 0.0)
    p.manholes = int(rng.integers(0, 4)) if p.layout == "urban" else 0
    p.wet = float(u(0.0, 0.8) if rng.random() < 0.2 else 0.0)
    p.texture_offset = (int(rng.integers(0, 1024)), int(rng.integers(0, 1024)))


def _s_markings(rng, p, wide):
    u = rng.uniform
    urban = p.layout == "urban"
    p.lane_style = str(rng.choice(["dashed", "dashed", "dashed", "solid", "double", "none"]
                                  if urban or wide else ["dashed", "dashed", "solid"]))
    p.edge_style = str(rng.choice(["solid", "double", "none", "none"] if urban
                                  else ["solid", "solid", "solid", "none"]))
    p.dash_length = float(u(1.5, 4.0) if urban else u(2.0, 6.0))
    p.dash_gap = float(u(2.0, 9.0) if urban else u(3.0, 12.0))
    p.edge_width = float(u(0.08, 0.15) if urban else u(0.1, 0.3))
    p.line_width = float(u(0.1, 0.2))
    white = np.array([0.93, 0.93, 0.9]) * u(0.7, 1.0)
    yellow = np.array([0.92, 0.76, 0.18]) * u(0.7, 1.0)
    p.marking_rgb = tuple((yellow if rng.random() < 0.15 else white).tolist())
    p.edge_rgb = tuple((yellow if rng.random() < (0.6 if urban else 0.3) else white).tolist())
    p.marking_fade = float(u(0.0, 0.7) if rng.random() < 0.6 else 0.0)
    p.marking_gaps = float(u(0.0, 0.4) if rng.random() < 0.4 else 0.0)
    p.crossing = float(u(8.0, 40.0)) if urban and rng.random() < 0.25 else 0.0
    p.stop_line = float(u(6.0, 35.0)) if urban and rng.random() < 0.2 else 0.0
    p.arrows = int(rng.integers(0, 3)) if urban and rng.random() < 0.3 else 0


def _s_palette(rng, p, wide):
    u = rng.uniform
    p.grass_rgb = tuple((np.array([0.30, 0.42, 0.17]) * u(0.6, 1.3)
                         + rng.normal(0, 0.06, 3)).clip(0.02, 0.9).tolist())
    sky = np.array([0.30, 0.50, 0.85]) * u(0.7, 1.15) + rng.normal(0, 0.05, 3)
    if p.layout == "urban" and not wide:  # bright, often washed-out sky
        sky = 0.5 * sky + 0.5 * u(0.7, 1.0)
    p.sky_top_rgb = tuple(sky.clip(0.05, 1).tolist())
    p.sky_horizon_rgb = tuple((0.5 * sky + 0.5 * u(0.7, 1.0) + rng.normal(0, 0.03, 3))
                              .clip(0.1, 1).tolist())
    p.clouds = float(u(0.0, 0.9))
    p.hills_rgb = tuple((np.array([0.45, 0.55, 0.55]) + rng.normal(0, 0.08, 3)).clip(0, 1)
                        .tolist())


def _s_weather(rng, p, wide):
    u = rng.uniform
    p.fog = float(u(0.0, 0.9 if wide else 0.4) if rng.random() < 0.3 else 0.0)
    p.rain = float(u(0.0, 1.0 if wide else 0.5) if rng.random() < 0.2 else 0.0)


def _s_camera(rng, p, wide):
    u = rng.uniform
    if p.layout == "urban" and not wide:
        p.cam_height = float(u(1.1, 1.7))
        p.pitch = float(u(-0.03, 0.08))
        p.hfov = float(u(52.0, 72.0))
        p.roll = float(rng.normal(0.0, 0.02))
    else:
        p.cam_height = float(u(1.1, 2.2))
        p.pitch = float(u(-0.02, 0.12))
        p.hfov = float(u(50.0, 80.0))
        p.roll = float(rng.normal(0.0, 0.025)) if rng.random() < 0.5 else 0.0


def _s_lens(rng, p, wide):
    p.distortion = float(rng.uniform(-0.25, 0.05))


def _s_exposure(rng, p, wide):
    u = rng.uniform
    p.brightness = float(u(0.6, 1.35))
    p.contrast = float(u(0.65, 1.3))
    p.gamma = float(u(0.75, 1.35))


def _s_white_balance(rng, p, wide):
    p.tint = tuple((1.0 + rng.normal(0, 0.06, 3)).tolist())


def _s_vignetting(rng, p, wide):
    p.vignette = float(rng.uniform(0.0, 0.5))


def _s_noise(rng, p, wide):
    p.noise = float(rng.uniform(0.0, 0.06))


def _s_blur(rng, p, wide):
    p.blur = float(rng.uniform(0.0, 1.5) if rng.random() < 0.5 else 0.0)
    p.motion = float(rng.uniform(1.0, 6.0) if rng.random() < 0.3 else 0.0)


def _s_jpeg(rng, p, wide):
    p.jpeg = int(rng.integers(20, 90)) if rng.random() < 0.6 else 0


@dataclasses.dataclass(frozen=True)
class Factor:
    """One named randomisation: the fields it owns, how it is drawn, what ``off`` means."""

    name: str
    help: str
    fields: tuple[str, ...]
    sample: Any
    off: Mapping[str, Any] | None = None  # None: off means fixed


FACTORS: dict[str, Factor] = {f.name: f for f in (
    Factor("layout", "highway or urban street (randomized: either)", ("layout",), _s_layout),
    Factor("geometry", "lanes, lane widths, bends, hills, the lane the camera drives in",
           ("lanes", "lane_width", "ego_lane", "ego_offset", "yaw", "curvature", "slope",
            "shoulder_left", "shoulder_right", "dash_phase"), _s_geometry),
    Factor("camera", "camera height, pitch, roll, field of view",
           ("cam_height", "pitch", "roll", "hfov"), _s_camera),
    Factor("lens", "radial lens distortion", ("distortion",), _s_lens, {"distortion": 0.0}),
    Factor("sidewalks", "pavements and kerbs, verges, driveways (off: grass verges)",
           ("sidewalk_left", "sidewalk_right", "sidewalk_style", "sidewalk_rgb", "kerb_rgb",
            "slab", "driveways"), _s_sidewalks, {"sidewalk_style": "verge", "driveways": 0.0}),
    Factor("buildings", "buildings, walls and fences near the road; skyline",
           ("buildings", "facades", "walls", "facade_height", "building_rgb", "median"),
           _s_buildings, {"buildings": 0.0, "facades": 0.0, "walls": 0.0}),
    Factor("vehicles", "moving and parked vehicles (cars, vans, buses)",
           ("vehicles", "parked"), _s_vehicles, {"vehicles": 0, "parked": 0.0}),
    Factor("poles", "lamp posts, sign posts and signs", ("pole_spacing", "signs"), _s_poles,
           {"pole_spacing": 0.0, "signs": 0.0}),
    Factor("trees", "trees beside the road, leafy or bare", ("trees", "trees_rgb", "bare"),
           _s_trees, {"trees": 0}),
    Factor("people", "pedestrians and cyclists", ("pedestrians", "cyclists"), _s_people,
           {"pedestrians": 0, "cyclists": 0}),
    Factor("shadows", "shadows cast by buildings, trees and poles",
           ("sun_dx", "sun_dz", "shadow"), _s_shadows, {"shadow": 0.0}),
    Factor("surface", "asphalt tone and texture, patches, cracks, manholes, wet road",
           ("asphalt_rgb", "asphalt_texture", "shoulder_shade", "patches", "cracks",
            "manholes", "wet", "texture_offset"), _s_surface),
    Factor("markings", "line styles and colours, worn and missing paint, crossings, "
           "stop lines, arrows (off: no paint)",
           ("lane_style", "edge_style", "marking_rgb", "edge_rgb", "marking_fade",
            "marking_gaps", "dash_length", "dash_gap", "edge_width", "line_width", "crossing",
            "stop_line", "arrows"), _s_markings,
           {"lane_style": "none", "edge_style": "none", "crossing": 0.0, "stop_line": 0.0,
            "arrows": 0}),
    Factor("palette", "sky, clouds, grass and far-hill colours",
           ("grass_rgb", "sky_top_rgb", "sky_horizon_rgb", "clouds", "hills_rgb"), _s_palette),
    Factor("weather", "fog and rain", ("fog", "rain"), _s_weather, {"fog": 0.0, "rain": 0.0}),
    Factor("exposure", "brightness, contrast, gamma", ("brightness", "contrast", "gamma"),
           _s_exposure),
    Factor("white_balance", "colour cast", ("tint",), _s_white_balance),
    Factor("vignetting", "darker image corners", ("vignette",), _s_vignetting,
           {"vignette": 0.0}),
    Factor("noise", "sensor noise", ("noise",), _s_noise, {"noise": 0.0}),
    Factor("blur", "defocus and motion blur", ("blur", "motion"), _s_blur,
           {"blur": 0.0, "motion": 0.0}),
    Factor("jpeg", "JPEG compression artefacts", ("jpeg",), _s_jpeg, {"jpeg": 0}),
)}
_OWNER = {field: name for name, f in FACTORS.items() for field in f.fields}
assert set(_OWNER) == set(_FIELDS), set(_FIELDS) ^ set(_OWNER)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A layout (None: drawn per image) and the mode of every factor."""

    name: str
    layout: str | None
    modes: Mapping[str, str]
    wide: bool
    help: str


def _modes(default: str, **named: str) -> dict[str, str]:
    return {name: named.get(name, default) for name in FACTORS}


PRESETS_TABLE: dict[str, Preset] = {p.name: p for p in (
    Preset("narrow", "highway",
           _modes("fixed", geometry="on", vehicles="on", trees="on", buildings="on"), False,
           "one look of a highway: only the geometry, vehicles and trees vary"),
    Preset("urban", "urban", _modes("on", layout="fixed"), False,
           "streets like CamVid's: pavements, kerbs, buildings, parked cars, people, shadows"),
    Preset("randomized", None, _modes("on"), True,
           "either layout, every factor randomised over wide ranges"),
)}


def check_factors(factors: Mapping[str, Any] | None) -> dict[str, str]:
    """Validate ``{factor: mode}``; return it with plain strings."""
    out: dict[str, str] = {}
    for name, mode in (factors or {}).items():
        if name not in FACTORS:
            raise SegscopeError(f"unknown factor {name!r} (known: {', '.join(FACTORS)})")
        if mode not in MODES:
            raise SegscopeError(f"bad mode {mode!r} for factor {name!r} "
                                f"(choose from: {', '.join(MODES)})")
        out[str(name)] = str(mode)
    return out


def parse_factor(text: str) -> tuple[str, str]:
    """``"shadows=off"`` -> ``("shadows", "off")`` (checked)."""
    name, sep, mode = text.partition("=")
    if not sep or not name.strip():
        raise SegscopeError(f"--factor expects NAME=MODE (e.g. shadows=off), got {text!r}")
    name, mode = name.strip(), mode.strip()
    check_factors({name: mode})
    return name, mode


def resolve_modes(preset: str, factors: Mapping[str, str] | None = None) -> dict[str, str]:
    """The mode of every factor under ``preset`` with ``factors`` applied."""
    modes = dict(PRESETS_TABLE[preset].modes)
    modes.update(check_factors(factors))
    return modes


def factor_rng(seed: int, index: int, preset: str, name: str, stream: int) -> np.random.Generator:
    """The random stream of factor ``name`` for one scene (stream 0: parameters, 1: render)."""
    return np.random.default_rng([int(seed), int(index), zlib.crc32(preset.encode()),
                                  zlib.crc32(name.encode()), stream])


def sample_params(seed: int, index: int, preset: str, modes: Mapping[str, str]) -> SceneParams:
    """Draw the parameters of one scene, each factor from its own stream."""
    spec = PRESETS_TABLE[preset]
    layout = spec.layout
    if layout is None:
        layout = "urban" if factor_rng(seed, index, preset, "layout", 0).random() < 0.6 \
            else "highway"
    if modes["layout"] != "on":
        layout = spec.layout or "urban"
    p = nominal(layout)
    for name, factor in FACTORS.items():
        mode = modes[name]
        if mode == "on" or (mode == "off" and factor.off):
            # ``off`` keeps the factor's other draws (a verge as wide as the pavement
            # would have been) and removes only the element itself
            factor.sample(factor_rng(seed, index, preset, name, 0), p, spec.wide)
        if mode == "off" and factor.off:
            for key, value in factor.off.items():
                setattr(p, key, value)
    return p


def load_factor_file(path: str | Path) -> dict[str, Any]:
    """Read a factor preset file (JSON, or TOML where Python has ``tomllib``).

    The file holds ``{"preset": "urban", "factors": {"shadows": "off"}, "set": {...}}``;
    every key is optional. Returns the three, checked.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SegscopeError(f"cannot read factor file {path}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                raise SegscopeError(f"factor file {path}: TOML needs Python 3.11 or newer; "
                                    "use JSON") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except SegscopeError:
        raise
    except ValueError as exc:
        raise SegscopeError(f"factor file {path} does not parse: "
                            f"{' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise SegscopeError(f"factor file {path} must hold an object with 'preset', "
                            "'factors' and 'set'")
    unknown = set(data) - {"preset", "factors", "set"}
    if unknown:
        raise SegscopeError(f"factor file {path}: unknown key(s) {', '.join(sorted(unknown))} "
                            "(known: preset, factors, set)")
    preset = data.get("preset", "narrow")
    if preset not in PRESETS_TABLE:
        raise SegscopeError(f"factor file {path}: unknown preset {preset!r} "
                            f"(choose from: {', '.join(PRESETS_TABLE)})")
    factors, sets = data.get("factors", {}), data.get("set", {})
    if not isinstance(factors, dict) or not isinstance(sets, dict):
        raise SegscopeError(f"factor file {path}: 'factors' and 'set' must be objects")
    try:
        factors = check_factors(factors)
    except SegscopeError as exc:
        raise SegscopeError(f"factor file {path}: {exc}") from None
    return {"preset": preset, "factors": factors, "set": dict(sets)}
