"""Procedural synthetic road scenes (SPEC §1): a camera-on-the-bonnet view of a highway.

Every image is a pure function of ``(seed, index, preset, overrides)``. The scene is
built from explicit geometry, and the label of every pixel comes from that geometry:

* a pinhole camera at height ``cam_height`` above a road whose centreline bends
  sideways (``curvature``) and vertically (``slope``; a crest hides the road beyond it,
  a sag lifts it above the flat horizon);
* for each image row the distance ``z`` of the ground it sees, hence for each pixel the
  lateral road coordinate ``x`` (metres from the left edge of the carriageway); the
  paved surface, the lane lines and edge lines are intervals of ``x``, the dashes
  intervals of ``z``;
* objects (barriers, vehicles, trees) drawn with a depth buffer; whatever hides the
  road is ``background``.

Markings are at least one pixel wide at any distance and are labelled only where road
surrounds them in their row. Two presets: ``narrow`` (one look; only the geometry varies)
and ``randomized`` (domain randomization over appearance, camera pose and weather).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SegscopeError
from .classes import ROAD3
from .synthetic_render import render

#: Bump when the pictures or labels produced for a given (seed, index, settings) change.
GENERATOR_VERSION = "1.0"
#: Names accepted by ``preset=``.
PRESETS: tuple[str, ...] = ("narrow", "randomized")



# --------------------------------------------------------------------------- parameters
@dataclasses.dataclass
class SceneParams:
    """Everything that defines one scene; any field can be fixed with an override."""

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
    dash_length: float = 4.5
    dash_gap: float = 7.5
    dash_phase: float = 0.0
    edge_width: float = 0.25
    line_width: float = 0.15
    vehicles: int = 2
    trees: int = 10
    buildings: float = 0.3
    # camera
    cam_height: float = 1.5
    pitch: float = 0.05
    roll: float = 0.0
    hfov: float = 65.0
    # appearance
    lane_style: str = "dashed"  # dashed | solid | double
    marking_rgb: tuple = (0.92, 0.92, 0.90)
    edge_rgb: tuple = (0.92, 0.92, 0.90)
    marking_fade: float = 0.0
    marking_gaps: float = 0.0
    asphalt_rgb: tuple = (0.33, 0.33, 0.35)
    asphalt_texture: float = 0.06
    shoulder_shade: float = 1.08
    grass_rgb: tuple = (0.30, 0.42, 0.17)
    sky_top_rgb: tuple = (0.30, 0.50, 0.85)
    sky_horizon_rgb: tuple = (0.78, 0.86, 0.95)
    clouds: float = 0.35
    hills_rgb: tuple = (0.45, 0.55, 0.55)
    trees_rgb: tuple = (0.13, 0.25, 0.10)
    building_rgb: tuple = (0.62, 0.58, 0.52)
    median: str = "concrete"  # concrete | rail
    sun_dx: float = -0.9  # tree shadows: sideways offset per metre of height
    sun_dz: float = -0.3  # ... and along the road
    shadow: float = 0.45  # how much a cast shadow darkens the ground (0 = overcast)
    brightness: float = 1.0
    contrast: float = 1.0
    gamma: float = 1.0
    tint: tuple = (1.0, 1.0, 1.0)
    fog: float = 0.0  # 0 clear .. 1 dense
    rain: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    texture_offset: tuple = (0, 0)


_FIELDS = {f.name: f for f in dataclasses.fields(SceneParams)}


def _preset_key(preset: str) -> int:
    return zlib.crc32(preset.encode("utf-8"))


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise SegscopeError(f"unknown preset {preset!r} (choose from: {', '.join(PRESETS)})")


def check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``overrides`` against :class:`SceneParams`; return them coerced to type."""
    out = {}
    for key, value in overrides.items():
        if key not in _FIELDS:
            raise SegscopeError(
                f"unknown scene setting {key!r} (known: {', '.join(sorted(_FIELDS))})"
            )
        default = getattr(SceneParams(), key)
        try:
            if isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int):
                if float(value) != int(float(value)):
                    raise ValueError
                value = int(float(value))
            elif isinstance(default, float):
                value = float(value)
            elif isinstance(default, tuple):
                if isinstance(value, str):
                    value = value.split(",")
                value = tuple(type(default[0])(v) for v in value)
                if len(value) != len(default):
                    raise ValueError
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise SegscopeError(f"bad value {value!r} for scene setting {key!r}") from None
        # The renderer treats any unknown word as the last case, and NaN as a number:
        # both would give silently wrong scenes.
        if key in _CHOICES and value not in _CHOICES[key]:
            raise SegscopeError(f"bad value {value!r} for scene setting {key!r} "
                                f"(choose from: {', '.join(_CHOICES[key])})")
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not np.isfinite(v) for v in numbers):
            raise SegscopeError(f"bad value {value!r} for scene setting {key!r}")
        if key in _UNIT and not 0.0 <= value <= 1.0:
            raise SegscopeError(f"scene setting {key!r} must be in [0, 1], got {value}")
        if key in _COUNTS and value < 0:
            raise SegscopeError(f"scene setting {key!r} must be non-negative, got {value}")
        out[key] = value
    if out.get("lanes", 1) < 1:
        raise SegscopeError("lanes must be at least 1")
    return out


#: Settings that are one of a few words, fractions in [0, 1], and counts.
_CHOICES = {"lane_style": ("dashed", "solid", "double"), "median": ("concrete", "rail")}
_UNIT = ("fog", "marking_fade", "marking_gaps", "clouds", "shadow", "rain")
_COUNTS = ("vehicles", "trees")


def _sample_geometry(rng: np.random.Generator, p: SceneParams) -> None:
    p.lanes = int(rng.integers(2, 5))
    p.ego_lane = int(rng.integers(0, p.lanes))
    p.ego_offset = float(rng.uniform(-0.4, 0.4))
    p.yaw = float(rng.normal(0.0, 0.012))
    # a third straight, the rest bending left or right (radius down to ~300 m)
    p.curvature = float(rng.choice([0.0, 1.0, 1.0]) * rng.uniform(-0.0035, 0.0035))
    p.slope = float(rng.choice([0.0, 1.0]) * rng.uniform(-0.0005, 0.0005))
    p.dash_phase = float(rng.uniform(0.0, p.dash_length + p.dash_gap))
    p.vehicles = int(rng.integers(0, 5))
    p.trees = int(rng.integers(4, 16))
    p.buildings = float(rng.uniform(0.0, 0.6))


def _sample_appearance(rng: np.random.Generator, p: SceneParams) -> None:
    u = rng.uniform
    # camera pose
    p.cam_height = float(u(1.1, 2.2))
    p.pitch = float(u(0.0, 0.12))
    p.roll = float(rng.normal(0.0, 0.025)) if rng.random() < 0.5 else 0.0
    p.hfov = float(u(50.0, 80.0))
    p.lane_width = float(u(3.0, 3.9))
    p.shoulder_left = float(u(0.3, 1.5))
    p.shoulder_right = float(u(0.5, 3.2))
    p.dash_length = float(u(2.0, 6.0))
    p.dash_gap = float(u(3.0, 12.0))
    p.dash_phase = float(rng.uniform(0.0, p.dash_length + p.dash_gap))
    p.edge_width = float(u(0.1, 0.3))
    p.line_width = float(u(0.1, 0.25))
    p.lane_style = str(rng.choice(["dashed", "dashed", "dashed", "solid", "double"]))
    # markings: white or yellow paint, faded, with missing pieces
    white = np.array([0.93, 0.93, 0.9]) * u(0.75, 1.0)
    yellow = np.array([0.95, 0.78, 0.15]) * u(0.75, 1.0)
    p.marking_rgb = tuple((yellow if rng.random() < 0.2 else white).tolist())
    p.edge_rgb = tuple((yellow if rng.random() < 0.3 else np.array(p.marking_rgb)).tolist())
    p.marking_fade = float(u(0.0, 0.55) if rng.random() < 0.6 else 0.0)
    p.marking_gaps = float(u(0.0, 0.35) if rng.random() < 0.4 else 0.0)
    # surfaces
    grey = u(0.15, 0.6)
    p.asphalt_rgb = tuple((grey + rng.normal(0, 0.03, 3)).clip(0.05, 0.8).tolist())
    p.asphalt_texture = float(u(0.02, 0.18))
    p.shoulder_shade = float(u(0.85, 1.2))
    p.grass_rgb = tuple((np.array([0.30, 0.42, 0.17]) * u(0.6, 1.3)
                         + rng.normal(0, 0.06, 3)).clip(0.02, 0.9).tolist())
    sky = np.array([0.30, 0.50, 0.85]) * u(0.7, 1.15) + rng.normal(0, 0.05, 3)
    p.sky_top_rgb = tuple(sky.clip(0.05, 1).tolist())
    p.sky_horizon_rgb = tuple((0.5 * sky + 0.5 * u(0.7, 1.0) + rng.normal(0, 0.03, 3))
                              .clip(0.1, 1).tolist())
    p.clouds = float(u(0.0, 0.9))
    p.hills_rgb = tuple((np.array([0.45, 0.55, 0.55]) + rng.normal(0, 0.08, 3)).clip(0, 1)
                        .tolist())
    p.trees_rgb = tuple((np.array([0.13, 0.25, 0.10]) * u(0.5, 1.6)).clip(0, 1).tolist())
    p.building_rgb = tuple((u(0.35, 0.8) + rng.normal(0, 0.05, 3)).clip(0, 1).tolist())
    p.median = str(rng.choice(["concrete", "rail"]))
    # light, weather, sensor
    p.sun_dx = float(u(-1.6, 1.6))
    p.sun_dz = float(u(-1.0, 0.6))
    p.shadow = float(u(0.0, 0.6))
    p.brightness = float(u(0.6, 1.35))
    p.contrast = float(u(0.65, 1.3))
    p.gamma = float(u(0.75, 1.35))
    p.tint = tuple((1.0 + rng.normal(0, 0.06, 3)).tolist())
    p.fog = float(u(0.0, 0.9) if rng.random() < 0.35 else 0.0)
    p.rain = float(u(0.0, 1.0) if rng.random() < 0.25 else 0.0)
    if p.rain > 0 or p.fog > 0.4:
        p.shadow = 0.0  # overcast
    p.noise = float(u(0.0, 0.06))
    p.blur = float(u(0.0, 1.5) if rng.random() < 0.5 else 0.0)
    p.texture_offset = (int(rng.integers(0, 1024)), int(rng.integers(0, 1024)))


def scene_params(seed: int, index: int, preset: str = "narrow", **overrides: Any) -> SceneParams:
    """The parameters of scene ``index`` of ``seed`` under ``preset`` (see :func:`render_scene`)."""
    _check_preset(preset)
    overrides = check_overrides(overrides)
    rng = _rng(seed, index, preset, 0)
    p = SceneParams()
    _sample_geometry(rng, p)
    if preset == "randomized":
        _sample_appearance(rng, p)
    for key, value in overrides.items():
        setattr(p, key, value)
    return p


def _rng(seed: int, index: int, preset: str, stream: int) -> np.random.Generator:
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise SegscopeError(f"{name} must be a non-negative integer, got {value!r}")
    return np.random.default_rng([int(seed), int(index), _preset_key(preset), stream])


# --------------------------------------------------------------------------- rendering
def render_scene(
    seed: int,
    index: int,
    size: tuple[int, int] = (360, 480),
    preset: str = "narrow",
    **overrides: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Render synthetic road scene ``index`` of ``seed``.

    Parameters
    ----------
    seed, index
        Non-negative integers; the scene is a pure function of them and the settings.
    size
        ``(H, W)`` in pixels.
    preset
        ``"narrow"`` (one fixed look, only the geometry varies) or ``"randomized"``
        (domain randomization over appearance, camera pose, weather and sensor).
    **overrides
        Fix any field of :class:`SceneParams` (e.g. ``curvature=0.0``, ``vehicles=0``).

    Returns
    -------
    image : numpy.ndarray
        float32 (H, W, 3) in [0, 1].
    label : numpy.ndarray
        uint8 (H, W) with ROAD3 ids: 0 background, 1 road, 2 markings.
    """
    height, width = _check_size(size)
    p = scene_params(seed, index, preset, **overrides)
    rng = _rng(seed, index, preset, 1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return render(p, height, width, rng)


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise SegscopeError(f"size must be (H, W), got {size!r}") from None
    if height < 8 or width < 8:
        raise SegscopeError(f"size must be at least 8x8, got {height}x{width}")
    return height, width


# --------------------------------------------------------------------------- dataset
class SyntheticRoads(Dataset):
    """Map-style dataset of :func:`render_scene` images (a ``torch`` Dataset).

    Parameters
    ----------
    n
        Number of images; index ``i`` is scene ``i`` of ``seed``.
    size
        ``(H, W)``.
    seed, preset, **overrides
        As for :func:`render_scene`.

    Items are ``(image float32 (3,H,W) in [0,1], label int64 (H,W))`` with ROAD3 ids.
    The object holds only its settings, so it pickles cheaply to DataLoader workers.
    """

    class_names = ROAD3
    #: Scored on all three classes (real sets without markings set this False).
    has_markings = True

    def __init__(
        self,
        n: int,
        size: tuple[int, int] = (360, 480),
        seed: int = 0,
        preset: str = "narrow",
        **overrides: Any,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise SegscopeError(f"n must be a non-negative integer, got {n!r}")
        _check_preset(preset)
        self.n = int(n)
        self.size = _check_size(size)
        self.seed = int(seed)
        self.preset = preset
        self.overrides = check_overrides(overrides)
        _rng(self.seed, 0, preset, 0)  # validates the seed

    @property
    def settings(self) -> dict[str, Any]:
        """Everything needed to rebuild the dataset (JSON-friendly)."""
        return {
            "n": self.n,
            "size": list(self.size),
            "seed": self.seed,
            "preset": self.preset,
            "overrides": dict(self.overrides),
            "generator_version": GENERATOR_VERSION,
        }

    def __len__(self) -> int:
        return self.n

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The numpy pair ``(image (H,W,3) float32, label (H,W) uint8)`` of item ``index``."""
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} synthetic scenes")
        return render_scene(self.seed, index, self.size, self.preset, **self.overrides)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.render(int(index))
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.from_numpy(label.astype(np.int64)))

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.overrides.items())
        return (f"SyntheticRoads(n={self.n}, size={self.size}, seed={self.seed}, "
                f"preset={self.preset!r}{extra})")
