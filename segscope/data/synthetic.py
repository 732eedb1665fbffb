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
import functools
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SegscopeError
from .classes import BACKGROUND, MARKINGS, ROAD, ROAD3

#: Bump when the pictures or labels produced for a given (seed, index, settings) change.
GENERATOR_VERSION = "1.0"
#: Names accepted by ``preset=``.
PRESETS: tuple[str, ...] = ("narrow", "randomized")

_TILE = 512  # side of the precomputed noise textures


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
        out[key] = value
    if out.get("lanes", 1) < 1:
        raise SegscopeError("lanes must be at least 1")
    return out


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
    p.roll = float(rng.normal(0.0, 0.02))
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
    p.brightness = float(u(0.6, 1.35))
    p.contrast = float(u(0.65, 1.3))
    p.gamma = float(u(0.75, 1.35))
    p.tint = tuple((1.0 + rng.normal(0, 0.06, 3)).tolist())
    p.fog = float(u(0.0, 0.9) if rng.random() < 0.35 else 0.0)
    p.rain = float(u(0.0, 1.0) if rng.random() < 0.25 else 0.0)
    p.noise = float(u(0.0, 0.06))
    p.blur = float(u(0.0, 1.5) if rng.random() < 0.5 else 0.0)
    p.texture_offset = (int(rng.integers(0, _TILE)), int(rng.integers(0, _TILE)))


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


# --------------------------------------------------------------------------- textures
def _value_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Tileable smooth value noise, ``n`` x ``n``, with ``cells`` lattice cells per side."""
    g = rng.random((cells, cells)).astype(np.float32)
    x = np.arange(n, dtype=np.float32) * cells / n
    i0 = np.floor(x).astype(np.int64)
    t = x - i0
    t = t * t * (3 - 2 * t)
    i1 = (i0 + 1) % cells
    rows = g[i0] * (1 - t)[:, None] + g[i1] * t[:, None]
    return rows[:, i0] * (1 - t) + rows[:, i1] * t


@functools.lru_cache(maxsize=1)
def _textures() -> dict[str, np.ndarray]:
    """Fixed noise tiles shared by all scenes (a pure function: fixed seed)."""
    rng = np.random.default_rng(20240611)
    n = _TILE

    def fbm(octaves):
        out = np.zeros((n, n), np.float32)
        amp = 1.0
        for cells in octaves:
            out += amp * _value_noise(rng, n, cells)
            amp *= 0.55
        out -= out.mean()
        return out / out.std()

    x1 = np.arange(4096, dtype=np.float32)
    profile = np.zeros(4096, np.float32)
    for cells, amp in ((8, 1.0), (32, 0.45), (128, 0.2), (512, 0.1)):
        g = rng.random(cells).astype(np.float32)
        xs = x1 * cells / 4096
        i0 = np.floor(xs).astype(np.int64)
        t = xs - i0
        t = t * t * (3 - 2 * t)
        profile += amp * (g[i0] * (1 - t) + g[(i0 + 1) % cells] * t)
    return {
        "coarse": fbm((4, 8, 16, 32)),
        "medium": fbm((16, 32, 64, 128)),
        "fine": rng.standard_normal((n, n)).astype(np.float32),
        "profile": (profile - profile.min()) / (profile.max() - profile.min()),
        "hash": rng.random(4096).astype(np.float32),
    }


def _sample(tile: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    n = tile.shape[0]
    return tile[iy.astype(np.int64) % n, ix.astype(np.int64) % n]


# --------------------------------------------------------------------------- rendering
class _Canvas:
    """Image, label and depth buffers plus the camera, in the un-rolled camera frame."""

    def __init__(self, p: SceneParams, height: int, width: int) -> None:
        self.p, self.H, self.W = p, height, width
        self.f = (width / 2) / math.tan(math.radians(p.hfov) / 2)
        self.cx, self.cy = width / 2, height / 2
        self.vh = self.cy - self.f * math.tan(p.pitch)
        u = np.arange(width, dtype=np.float32) + 0.5 - self.cx
        v = np.arange(height, dtype=np.float32) + 0.5 - self.cy
        if p.roll:
            c, s = math.cos(p.roll), math.sin(p.roll)
            self.uu = (u[None, :] * c + v[:, None] * s).astype(np.float32)
            self.vv = (-u[None, :] * s + v[:, None] * c + self.cy).astype(np.float32)
        else:
            self.uu = u[None, :]
            self.vv = v[:, None] + np.float32(self.cy)
        self.image = np.empty((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.depth = np.full((height, width), np.inf, np.float32)

    # ground profile: row of the ground at distance z
    def ground_row(self, z):
        p = self.p
        return self.vh + self.f * (p.cam_height - 0.5 * p.slope * z * z) / z

    def centre_shift(self, z):
        """Lateral position of the road frame relative to the camera axis at distance z."""
        p = self.p
        return 0.5 * p.curvature * z * z + p.yaw * z

    def column(self, x, z):
        """Un-rolled column (centred) of road coordinate ``x`` at distance ``z``."""
        return self.f * (x - self.xcam + self.centre_shift(z)) / z

    def full(self, a):
        return np.broadcast_to(a, (self.H, self.W))

    def window(self, u0, u1, v0, v1):
        """Image slices covering the un-rolled box [u0,u1]x[v0,v1], and its coordinates there."""
        if self.p.roll:
            c, s = math.cos(self.p.roll), math.sin(self.p.roll)
            cu = np.array([u0, u1, u0, u1])
            cv = np.array([v0, v0, v1, v1]) - self.cy
            iu = cu * c - cv * s + self.cx
            iv = cu * s + cv * c + self.cy
            c0, c1, r0, r1 = iu.min(), iu.max(), iv.min(), iv.max()
        else:
            c0, c1, r0, r1 = u0 + self.cx, u1 + self.cx, v0, v1
        r0 = int(max(0, math.floor(r0)))
        r1 = int(min(self.H, math.ceil(r1) + 1))
        c0 = int(max(0, math.floor(c0)))
        c1 = int(min(self.W, math.ceil(c1) + 1))
        if r0 >= r1 or c0 >= c1:
            return None
        rs, cs = slice(r0, r1), slice(c0, c1)
        if self.p.roll:
            return rs, cs, self.uu[rs, cs], self.vv[rs, cs]
        return rs, cs, self.uu[:, cs], self.vv[rs, :]

    def put(self, rs, cs, mask, z, colour):
        """Depth-tested paint of ``colour`` (3,) or (h,w,3) where ``mask``; label background."""
        mask = mask & (z < self.depth[rs, cs])
        if not mask.any():
            return mask
        if np.ndim(z):
            z = np.broadcast_to(z, mask.shape)
        if np.ndim(colour) > 1:
            colour = np.broadcast_to(colour, mask.shape + (3,))
        self.depth[rs, cs][mask] = z if np.ndim(z) == 0 else z[mask]
        img = self.image[rs, cs]
        img[mask] = colour if np.ndim(colour) == 1 else colour[mask]
        self.label[rs, cs][mask] = BACKGROUND
        return mask


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
        return _render(p, height, width, rng)


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise SegscopeError(f"size must be (H, W), got {size!r}") from None
    if height < 8 or width < 8:
        raise SegscopeError(f"size must be at least 8x8, got {height}x{width}")
    return height, width


def _render(p: SceneParams, height: int, width: int, rng: np.random.Generator):
    cv = _Canvas(p, height, width)
    tex = _textures()
    p_ = p
    road_w = p_.lanes * p_.lane_width
    cv.xcam = (p_.ego_lane + 0.5) * p_.lane_width + p_.ego_offset

    # ---- distance of the ground seen by every (un-rolled) row
    zs = np.geomspace(0.5, 600.0, 1024)
    vz = cv.ground_row(zs)
    rising = np.nonzero(np.diff(vz) >= 0)[0]
    if rising.size:  # crest: the road beyond the top is hidden
        zs, vz = zs[: rising[0] + 1], vz[: rising[0] + 1]
    cv.zmax = float(zs[-1])
    v_end = float(vz[-1])
    cv.v_end = v_end
    ground = cv.vv > v_end
    # above the road's end z is clamped to the farthest ground; ``gmask`` tells them apart
    z = np.interp(cv.vv, vz[::-1], zs[::-1]).astype(np.float32)
    mpp = z / np.float32(cv.f)  # metres per pixel across, at that distance
    x = cv.uu * mpp - cv.centre_shift(z).astype(np.float32) + np.float32(cv.xcam)
    x = np.where(ground, x, np.float32(-1e4))  # far outside every road interval
    zf = cv.full(z)

    _sky(cv, p, tex)
    _skyline(cv, p, tex, rng)

    # ---- ground: verge / grass
    gmask = cv.full(ground)
    ox, oy = p.texture_offset
    xi = x * 6.0
    zi = zf * 6.0
    g_tex = _sample(tex["coarse"], zi * 0.25 + oy, xi * 0.25 + ox)
    g_fine = _sample(tex["medium"], zi + oy, xi + ox)
    fade = np.exp(-zf / 60.0)  # texture contrast dies out with distance
    grass = np.asarray(p.grass_rgb, np.float32)
    shade = 1.0 + 0.18 * g_tex + 0.12 * g_fine * fade
    img = cv.image
    img[gmask] = (grass[None, :] * shade[gmask][:, None])
    # gravel strip between shoulder and grass
    outer_r = road_w + p.shoulder_right
    gravel = gmask & (((x > outer_r) & (x < outer_r + 0.8)) | ((x < -p.shoulder_left)
                                                             & (x > -p.shoulder_left - 0.5)))
    img[gravel] = np.array([0.45, 0.42, 0.36], np.float32) * shade[gravel][:, None]
    cv.depth[gmask] = zf[gmask]

    # ---- road surface
    lo, hi = -p.shoulder_left, road_w + p.shoulder_right
    surface = gmask & (x >= lo) & (x < hi)
    cov = np.clip(np.minimum(x - lo, hi - x) / np.maximum(mpp, 1e-6) + 0.5, 0.0, 1.0)
    cov = np.where(gmask, cov, 0.0).astype(np.float32)
    a_tex = _sample(tex["medium"], zi * 2 + oy, xi * 2 + ox) * fade
    a_coarse = _sample(tex["coarse"], zi * 0.5 + 100 + oy, xi * 0.5 + ox)
    lane_pos = np.mod(x - p.lane_width / 2, p.lane_width) - p.lane_width / 2
    # wheel paths: darker, polished bands inside each lane
    wheel = np.exp(-((np.abs(lane_pos) - 0.85) ** 2) / 0.08).astype(np.float32)
    asph = 1.0 + p.asphalt_texture * (a_tex + 0.8 * a_coarse) - 0.07 * wheel * (1 - p.rain)
    shoulder = (x < 0) | (x > road_w)
    asph = np.where(shoulder, asph * p.shoulder_shade, asph)
    road_rgb = np.asarray(p.asphalt_rgb, np.float32)[None, None, :] * asph[..., None]
    img[:] = img + cov[..., None] * (road_rgb - img)
    cv.label[surface] = ROAD

    # ---- markings (paint coverage from the distance to the nearest line)
    lw = p.lane_width
    idx = np.clip(np.rint(x / lw), 0, p.lanes)
    dist = np.abs(x - idx * lw)
    edge = (idx == 0) | (idx == p.lanes)
    hw = np.where(edge, p.edge_width / 2, p.line_width / 2)
    if p.lane_style == "double":
        sep = p.line_width * 1.5
        dist = np.where(edge, dist, np.abs(dist - sep))
    hw = np.maximum(hw, 0.5 * mpp)  # never thinner than a pixel
    paint = np.clip((hw - dist) / np.maximum(mpp, 1e-6) + 0.5, 0.0, 1.0)
    if p.lane_style == "dashed":
        period = p.dash_length + p.dash_gap
        s = z + p.dash_phase
        on = np.mod(s, period) < p.dash_length
        paint = np.where(edge | on, paint, 0.0)
        dash_id = np.floor(s / period).astype(np.int64)
    else:
        dash_id = np.floor((z + p.dash_phase) / 6.0).astype(np.int64)
    if p.marking_gaps > 0:
        h = tex["hash"][(dash_id * 7 + idx.astype(np.int64) * 131 + ox) % 4096]
        paint = np.where(h < p.marking_gaps, 0.0, paint)
    paint = np.where(gmask, paint, 0.0).astype(np.float32)

    # ---- objects (depth-tested), then markings gated by what stays visible
    _barriers(cv, p, zs)
    _trees(cv, p, rng)
    _vehicles(cv, p, rng)
    occluded = gmask & (zf > cv.depth + 1e-3)
    visible = surface & ~occluded
    enclosed = visible.copy()
    enclosed[:, 1:] &= visible[:, :-1]
    enclosed[:, :-1] &= visible[:, 1:]
    enclosed[:, 0] = enclosed[:, -1] = False
    paint = np.where(enclosed, paint, 0.0)
    mark = paint >= 0.5
    wear = 1.0
    if p.marking_fade > 0:
        wear = 1.0 - p.marking_fade * np.clip(
            0.5 + 0.5 * _sample(tex["medium"], zi * 3 + oy, xi * 3 + 50 + ox), 0, 1)
    colour = np.where(edge[..., None], np.asarray(p.edge_rgb, np.float32),
                      np.asarray(p.marking_rgb, np.float32))
    alpha = (paint * wear)[..., None]
    img[:] = img + alpha * (colour * (1 + 0.5 * p.asphalt_texture * a_tex[..., None]) - img)
    cv.label[mark] = MARKINGS
    cv.label[occluded & (cv.label != BACKGROUND)] = BACKGROUND

    _weather_and_sensor(cv, p, tex, rng)
    return np.clip(cv.image, 0.0, 1.0).astype(np.float32), cv.label


def _sky(cv: _Canvas, p: SceneParams, tex) -> None:
    t = np.clip((cv.vv - 0) / max(cv.v_end, 1.0), 0.0, 1.0)
    t = t**1.6
    top = np.asarray(p.sky_top_rgb, np.float32)
    hor = np.asarray(p.sky_horizon_rgb, np.float32)
    sky = top + (hor - top) * t[..., None]
    ox, oy = p.texture_offset
    if p.clouds > 0:
        r = np.arange(cv.H)[:, None]
        c = np.arange(cv.W)[None, :]
        clouds = _sample(tex["coarse"], r * (256 / cv.H) * 1.5 + oy, c * (256 / cv.H) * 0.7 + ox)
        amount = np.clip(clouds - 1.0 + p.clouds * 1.5, 0, 1) * (1 - 0.5 * t)
        sky = sky + amount[..., None] * (np.float32(0.97) - sky)
    cv.image[:] = np.broadcast_to(sky, cv.image.shape)


def _skyline(cv: _Canvas, p: SceneParams, tex, rng) -> None:
    """Hills, then a band of trees and buildings, along the horizon (per-column profiles)."""
    prof = tex["profile"]
    scale = cv.H / 360.0
    # un-rolled column index (pixels); profiles are functions of it
    col = cv.uu + cv.cx
    off = int(rng.integers(0, 4096))
    ci = (col * (480.0 / cv.W)).astype(np.int64)
    hills = 10 + 30 * prof[(ci // 2 + off) % 4096]
    hills = hills * scale
    base = cv.v_end
    mask = (cv.vv > base - hills) & (cv.vv <= base + 0.5)
    mask = cv.full(mask)
    hr = np.asarray(p.hills_rgb, np.float32)
    cv.image[mask] = cv.image[mask] * 0.35 + hr * 0.65
    # treeline with buildings
    tl = (4 + 14 * prof[(ci * 3 + off + 777) % 4096] ** 2) * scale
    bump = 3 * scale * np.abs(np.sin(ci * 0.9 + off))
    tl = tl + bump
    bld = np.zeros_like(tl)
    if p.buildings > 0:
        block = (ci + off) // 37
        hsh = tex["hash"][(block * 13 + 5) % 4096]
        has = hsh < p.buildings
        bh = (10 + 30 * tex["hash"][(block * 29 + 11) % 4096]) * scale
        bld = np.where(has, bh, 0.0)
    top = np.maximum(tl, bld)
    mask = cv.full((cv.vv > base - top) & (cv.vv <= base + 0.5))
    is_b = cv.full((bld > tl) & (cv.vv > base - bld))
    tr = np.asarray(p.trees_rgb, np.float32)
    b_rgb = np.asarray(p.building_rgb, np.float32)
    cv.image[mask & ~is_b] = tr * 1.2 * 0.7 + cv.image[mask & ~is_b] * 0.3
    bm = mask & is_b
    if bm.any():
        shade = cv.full(0.85 + 0.3 * tex["hash"][((ci + off) // 37 * 3) % 4096])
        win = cv.full((np.mod(ci, 5) < 2) & (np.mod(cv.vv, 4 * scale + 1) < 2 * scale))
        rgb = b_rgb[None, :] * shade[bm][:, None]
        rgb = np.where(win[bm][:, None], rgb * 0.6, rgb)
        cv.image[bm] = rgb * 0.75 + cv.image[bm] * 0.25


def _fence(cv: _Canvas, zs: np.ndarray, x_pos: float, height: float):
    """Per-column view of a vertical strip along the road at road coordinate ``x_pos``.

    Returns a list of (z per pixel, height above ground per pixel) over the full image for
    each monotone piece of the strip's projection (a curve can fold it back).
    """
    zz = zs[zs > 1.0]
    u = cv.column(x_pos, zz)
    lim = 3 * (cv.W + cv.H)
    d = np.sign(np.diff(u))
    cuts = np.nonzero(d[1:] != d[:-1])[0] + 1
    pieces = np.split(np.arange(len(zz)), cuts + 1) if cuts.size else [np.arange(len(zz))]
    out = []
    for piece in pieces:
        if len(piece) < 2:
            continue
        up, zp = u[piece], zz[piece]
        order = np.argsort(up)
        up, zp = up[order], zp[order]
        inside = (cv.uu >= max(up[0], -lim)) & (cv.uu <= min(up[-1], lim))
        zc = np.interp(cv.uu, up, zp).astype(np.float32)
        hgt = (cv.ground_row(zc) - cv.vv) * zc / cv.f
        ok = cv.full(inside) & (hgt >= -0.02) & (hgt <= height)
        out.append((ok, cv.full(zc), hgt))
    return out


def _barriers(cv: _Canvas, p: SceneParams, zs) -> None:
    road_w = p.lanes * p.lane_width
    # right: steel guard rail on posts
    x_r = road_w + p.shoulder_right + 0.4
    for ok, zc, hgt in _fence(cv, zs, x_r, 0.8):
        post = np.mod(zc, 4.0) < np.maximum(0.15, 0.8 * zc / cv.f)
        rail = (hgt > 0.5) & (hgt < 0.8)
        m = ok & (rail | post)
        shade = np.where(rail, 0.75 + 0.2 * ((hgt > 0.62) & (hgt < 0.7)), 0.35)
        rgb = np.array([0.72, 0.73, 0.75], np.float32) * shade[..., None].astype(np.float32)
        cv.put(slice(None), slice(None), m, zc, rgb)
    # left: concrete median or a second rail
    x_l = -p.shoulder_left - 0.4
    for ok, zc, hgt in _fence(cv, zs, x_l, 0.85):
        if p.median == "concrete":
            shade = np.where(hgt < 0.12, 0.55, np.where(hgt > 0.75, 1.05, 0.85))
            rgb = np.array([0.70, 0.69, 0.66], np.float32) * shade[..., None].astype(np.float32)
            cv.put(slice(None), slice(None), ok, zc, rgb)
        else:
            post = np.mod(zc, 4.0) < np.maximum(0.15, 0.8 * zc / cv.f)
            rail = (hgt > 0.5) & (hgt < 0.8)
            shade = np.where(rail, 0.8, 0.35)
            rgb = np.array([0.72, 0.73, 0.75], np.float32) * shade[..., None].astype(np.float32)
            cv.put(slice(None), slice(None), ok & (rail | post), zc, rgb)


def _trees(cv: _Canvas, p: SceneParams, rng) -> None:
    road_w = p.lanes * p.lane_width
    n = p.trees
    side = rng.random(n) < 0.6
    lateral = rng.uniform(3.0, 25.0, n)
    xs = np.where(side, road_w + p.shoulder_right + lateral, -p.shoulder_left - lateral)
    zt = rng.uniform(8.0, 160.0, n)
    radius = rng.uniform(1.5, 3.5, n)
    trunk_h = rng.uniform(1.5, 3.0, n)
    tr = np.asarray(p.trees_rgb, np.float32)
    for i in np.argsort(-zt):
        z = float(zt[i])
        if z > cv.zmax:
            continue
        u = float(cv.column(xs[i], z))
        vg = float(cv.ground_row(z))
        r = cv.f * radius[i] / z
        th = cv.f * trunk_h[i] / z
        vc = vg - th - r * 0.8
        win = cv.window(u - r, u + r, vc - r * 1.3, vg)
        if win is None:
            continue
        rs, cs, uu, vv = win
        tw = max(0.5, cv.f * 0.18 / z)
        trunk = (np.abs(uu - u) < tw) & (vv > vc) & (vv <= vg)
        d2 = ((uu - u) / r) ** 2 + ((vv - vc) / (1.3 * r)) ** 2
        crown = d2 < 1.0
        lit = (1.0 - 0.45 * np.clip((uu - u) / r + (vv - vc) / r, -1, 1)).astype(np.float32)
        rgb = tr[None, None, :] * (0.8 + 0.4 * lit[..., None])
        rgb = np.where(crown[..., None], rgb, np.array([0.25, 0.18, 0.12], np.float32))
        cv.put(rs, cs, crown | trunk, np.float32(z), np.broadcast_to(rgb, crown.shape + (3,)))


_CAR_COLOURS = np.array(
    [[0.85, 0.85, 0.85], [0.55, 0.56, 0.58], [0.08, 0.08, 0.09], [0.60, 0.08, 0.07],
     [0.10, 0.18, 0.45], [0.30, 0.32, 0.30], [0.75, 0.72, 0.62]], np.float32)


def _vehicles(cv: _Canvas, p: SceneParams, rng) -> None:
    n = p.vehicles
    if n <= 0:
        return
    lanes = rng.integers(0, p.lanes, n)
    zv = rng.uniform(7.0, 110.0, n)
    truck = rng.random(n) < 0.25
    colours = _CAR_COLOURS[rng.integers(0, len(_CAR_COLOURS), n)]
    offset = rng.normal(0, 0.2, n)
    taken: list[tuple[int, float]] = []
    for i in np.argsort(-zv):
        z0 = float(zv[i])
        if any(lane == lanes[i] and abs(z0 - zz) < 14 for lane, zz in taken):
            continue
        if lanes[i] == p.ego_lane and z0 < 12:
            continue
        taken.append((int(lanes[i]), z0))
        width, height, length = (2.5, 3.6, 12.0) if truck[i] else (1.8, 1.45, 4.5)
        if z0 + length > cv.zmax:
            continue
        xc = (lanes[i] + 0.5) * p.lane_width + offset[i]
        body = colours[i] if not truck[i] else np.array([0.82, 0.82, 0.8], np.float32)
        _draw_vehicle(cv, xc, z0, width, height, length, body, bool(truck[i]))


def _draw_vehicle(cv, xc, z0, width, height, length, body, truck) -> None:
    f = cv.f
    z1 = z0 + length
    ul, ur = float(cv.column(xc - width / 2, z0)), float(cv.column(xc + width / 2, z0))
    vb = float(cv.ground_row(z0))
    vt = vb - f * height / z0
    clear = f * 0.25 / z0  # ground clearance
    # contact shadow on the road, just under and behind the rear bumper
    win = cv.window(ul - 1, ur + 1, vb - 2, vb + max(1.5, f * 0.35 / z0))
    if win is not None:
        rs, cs, uu, vv = win
        m = (uu >= ul - 0.5) & (uu <= ur + 0.5) & (vv >= vb - 2) & (vv <= vb + f * 0.35 / z0)
        m = m & (cv.label[rs, cs] != BACKGROUND)
        cv.image[rs, cs][m] *= 0.45
    # side face, visible when the car is off to one side of the camera
    xs = None
    if ul > 0:
        xs = xc - width / 2
    elif ur < 0:
        xs = xc + width / 2
    if xs is not None:
        ua, ub = float(cv.column(xs, z0)), float(cv.column(xs, z1))
        vba, vbb = vb, float(cv.ground_row(z1))
        vta, vtb = vt, vbb - f * height / z1
        win = cv.window(min(ua, ub), max(ua, ub), min(vta, vtb), max(vba, vbb))
        if win is not None and abs(ub - ua) > 0.3:
            rs, cs, uu, vv = win
            t = np.clip((uu - ua) / (ub - ua), 0, 1)
            top = vta + t * (vtb - vta)
            bot = vba + t * (vbb - vba)
            inside = ((uu - ua) * (uu - ub) <= 0) & (vv >= top) & (vv <= bot)
            hrel = (bot - vv) / np.maximum(bot - top, 1e-3)  # 0 at the bottom, 1 at the top
            rgb = body * 0.7
            rgb = np.where((hrel > 0.62)[..., None] & (not truck), np.float32(0.12) + 0 * rgb,
                           rgb)
            rgb = np.where((hrel < 0.18)[..., None], np.float32(0.06) + 0 * rgb, rgb)
            zz = (z0 + t * length).astype(np.float32)
            cv.put(rs, cs, inside, zz, np.broadcast_to(rgb, inside.shape + (3,)).astype(
                np.float32))
    # rear face
    win = cv.window(ul, ur, vt, vb)
    if win is None:
        return
    rs, cs, uu, vv = win
    inside = (uu >= ul) & (uu <= ur) & (vv >= vt) & (vv <= vb)
    hrel = (vb - vv) / max(vb - vt, 1e-3)
    wrel = (uu - ul) / max(ur - ul, 1e-3)
    rgb = np.broadcast_to(body, inside.shape + (3,)).astype(np.float32).copy()
    if truck:
        rgb *= (0.9 + 0.1 * (np.mod(wrel * 8, 1) < 0.5))[..., None]  # ribbed box doors
        rgb[(hrel < 0.12) & np.ones_like(inside)] = 0.08
    else:
        glass = (hrel > 0.62) & (hrel < 0.93) & (wrel > 0.1) & (wrel < 0.9)
        rgb[glass & np.ones_like(inside)] = (0.10, 0.11, 0.13)
        lights = (hrel > 0.48) & (hrel < 0.6) & ((wrel < 0.18) | (wrel > 0.82))
        rgb[lights & np.ones_like(inside)] = (0.75, 0.05, 0.04)
        bumper = hrel < 0.28
        rgb[bumper & np.ones_like(inside)] *= 0.6
        tyres = (hrel < clear / max(vb - vt, 1e-3)) & ((wrel < 0.22) | (wrel > 0.78))
        under = hrel < clear / max(vb - vt, 1e-3)
        rgb[under & np.ones_like(inside)] = 0.04
        inside = inside & (~under | tyres)
    cv.put(rs, cs, inside, np.float32(z0), rgb)


def _weather_and_sensor(cv: _Canvas, p: SceneParams, tex, rng) -> None:
    img = cv.image
    depth = np.minimum(cv.depth, 2000.0)
    hor = np.asarray(p.sky_horizon_rgb, np.float32)
    # aerial perspective always; fog on top of it
    vis = 900.0 / (1.0 + 25.0 * p.fog**2)
    haze = (1.0 - np.exp(-depth / vis)).astype(np.float32)
    fog_rgb = hor * (1 - p.fog) + np.float32(0.78) * p.fog
    img += haze[..., None] * (fog_rgb - img)
    if p.rain > 0:
        img *= 1.0 - 0.35 * p.rain
        img += 0.08 * p.rain
    tint = np.asarray(p.tint, np.float32) * np.float32(p.brightness)
    if p.contrast != 1.0 or p.brightness != 1.0 or tuple(p.tint) != (1.0, 1.0, 1.0):
        img[:] = (img - 0.5) * p.contrast + 0.5
        img *= tint
    if p.gamma != 1.0:
        np.clip(img, 0.0, 1.0, out=img)
        img **= np.float32(p.gamma)
    if p.blur > 0:
        k = p.blur
        for axis in (0, 1):
            img[:] = (img + k * 0.5 * (np.roll(img, 1, axis) + np.roll(img, -1, axis))) / (1 + k)
    if p.noise > 0:
        ox, oy = p.texture_offset
        n = tex["fine"]
        r = (np.arange(cv.H) + oy) % n.shape[0]
        c = (np.arange(cv.W) + ox) % n.shape[1]
        img += np.float32(p.noise) * n[np.ix_(r, c)][..., None]


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
