"""Procedural synthetic road scenes (SPEC §1): a camera-on-the-bonnet view of a road.

Every image is a pure function of ``(seed, index, preset, factors, overrides)``. The scene is
built from explicit geometry, and the label of every pixel comes from that geometry:

* a pinhole camera at height ``cam_height`` above a road whose centreline bends
  sideways (``curvature``) and vertically (``slope``; a crest hides the road beyond it,
  a sag lifts it above the flat horizon);
* for each image row the distance ``z`` of the ground it sees, hence for each pixel the
  lateral road coordinate ``x`` (metres from the left edge of the carriageway); the
  paved surface, the lane lines and edge lines are intervals of ``x``, the dashes
  intervals of ``z``;
* kerbs, pavements and verges are intervals of ``x`` beside the road (``background``);
* objects (barriers, buildings, walls, poles, trees, vehicles, people) drawn with a
  depth buffer; whatever hides the road is ``background``.

Markings are at least one pixel wide at any distance and are labelled only where road
surrounds them in their row. Every randomisation is a named factor
(:mod:`.synthetic_factors`) that can be switched off or fixed. Three presets:
``narrow`` (a highway; only the geometry varies), ``urban`` (streets like CamVid's) and
``randomized`` (either layout, every factor randomised over wide ranges).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SegscopeError
from .classes import ROAD3
from .synthetic_factors import (
    FACTORS,
    LAYOUTS,
    MODES,
    PRESETS_TABLE,
    SceneParams,
    check_factors,
    factor_rng,
    resolve_modes,
    sample_params,
)
from .synthetic_render import FACTOR_BITS, render

#: Bump when the pictures or labels produced for a given (seed, index, settings) change.
GENERATOR_VERSION = "2.0"
#: Names accepted by ``preset=``.
PRESETS: tuple[str, ...] = tuple(PRESETS_TABLE)

__all__ = ["FACTORS", "FACTOR_BITS", "MODES", "PRESETS", "SceneParams", "SyntheticRoads",
           "describe_dataset", "render_scene", "scene_params"]



_FIELDS = {f.name: f for f in dataclasses.fields(SceneParams)}


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise SegscopeError(f"unknown preset {preset!r} (choose from: {', '.join(PRESETS)})")


def _check_seed_index(seed, index) -> None:
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise SegscopeError(f"{name} must be a non-negative integer, got {value!r}")


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
        except (TypeError, ValueError, OverflowError):
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
        if key in _RANGES:
            lo, hi = _RANGES[key]
            if any(not lo <= v <= hi for v in numbers):
                raise SegscopeError(f"scene setting {key!r} must be in [{lo:g}, {hi:g}], "
                                    f"got {value}")
        if key in _ZERO_OR_AT_LEAST and value != 0 and value < _ZERO_OR_AT_LEAST[key]:
            raise SegscopeError(f"scene setting {key!r} must be 0 (none) or at least "
                                f"{_ZERO_OR_AT_LEAST[key]:g}, got {value}")
        out[key] = value
    if out.get("lanes", 1) < 1:
        raise SegscopeError("lanes must be at least 1")
    if out.get("ego_lane", 0) > 0:
        if "lanes" not in out:  # each scene draws its own number of lanes
            raise SegscopeError("ego_lane above 0 needs lanes set too (e.g. --set lanes=3)")
        if out["ego_lane"] >= out["lanes"]:
            raise SegscopeError(f"ego_lane must be below lanes ({out['lanes']}), "
                                f"got {out['ego_lane']}")
    return out


#: Settings that are one of a few words, fractions in [0, 1], and counts.
_CHOICES = {"lane_style": ("dashed", "solid", "double", "none"),
            "edge_style": ("solid", "double", "none"), "median": ("concrete", "rail"),
            "layout": LAYOUTS, "sidewalk_style": ("paved", "verge")}
_UNIT = ("fog", "marking_fade", "marking_gaps", "clouds", "shadow", "rain", "parked", "signs",
         "bare", "facades", "walls", "driveways", "patches", "cracks", "wet", "vignette")
_COUNTS = ("vehicles", "trees", "pedestrians", "cyclists", "manholes", "arrows", "pole_spacing",
           "sidewalk_left", "sidewalk_right", "crossing", "stop_line", "motion", "blur")
#: Physical ranges of the other numeric settings (of each number of a colour or tint):
#: wide around what the presets draw, narrow enough that a scene stays a road seen from a
#: car (a zero lane width, field of view or gamma divided by zero or gave a white image;
#: a camera below the road, or a billion vehicles, gave no scene at all).
_RANGES: dict[str, tuple[float, float]] = {
    "lanes": (1, 8), "lane_width": (1.0, 10.0), "ego_lane": (0, 7), "ego_offset": (-5.0, 5.0),
    "yaw": (-0.5, 0.5), "curvature": (-0.05, 0.05), "slope": (-0.05, 0.05),
    "shoulder_left": (0.0, 20.0), "shoulder_right": (0.0, 20.0), "dash_phase": (-1e4, 1e4),
    "sidewalk_left": (0.0, 20.0), "sidewalk_right": (0.0, 20.0), "slab": (0.05, 5.0),
    "buildings": (0.0, 1.0), "facade_height": (1.0, 100.0), "vehicles": (0, 50),
    "pole_spacing": (0.0, 1000.0), "trees": (0, 200), "pedestrians": (0, 50),
    "cyclists": (0, 50), "sun_dx": (-5.0, 5.0), "sun_dz": (-5.0, 5.0),
    "asphalt_texture": (0.0, 1.0), "shoulder_shade": (0.0, 3.0), "manholes": (0, 20),
    "dash_length": (0.1, 50.0), "dash_gap": (0.0, 100.0), "edge_width": (0.01, 2.0),
    "line_width": (0.01, 2.0), "crossing": (0.0, 500.0), "stop_line": (0.0, 500.0),
    "arrows": (0, 20), "cam_height": (0.3, 20.0), "pitch": (-0.6, 0.6), "roll": (-0.5, 0.5),
    "hfov": (10.0, 150.0), "distortion": (-0.5, 0.5), "brightness": (0.05, 5.0),
    "contrast": (0.0, 5.0), "gamma": (0.1, 10.0), "noise": (0.0, 1.0), "blur": (0.0, 20.0),
    "motion": (0.0, 100.0), "jpeg": (0, 100), "tint": (0.0, 5.0),
    **{name: (0.0, 1.0) for name, f in _FIELDS.items() if name.endswith("_rgb")},
}
#: Settings where 0 means "none" and a small positive value is not a scene.
_ZERO_OR_AT_LEAST = {"pole_spacing": 2.0, "crossing": 2.0, "stop_line": 2.0, "jpeg": 1}


def scene_params(seed: int, index: int, preset: str = "narrow",
                 factors: Mapping[str, str] | None = None, **overrides: Any) -> SceneParams:
    """The parameters of scene ``index`` of ``seed`` under ``preset`` (see :func:`render_scene`)."""
    _check_preset(preset)
    _check_seed_index(seed, index)
    modes = resolve_modes(preset, factors)
    overrides = check_overrides(overrides)
    p = sample_params(int(seed), int(index), preset, modes)
    for key, value in overrides.items():
        setattr(p, key, value)
    return p


# --------------------------------------------------------------------------- rendering
#: Bytes of working memory per pixel while one scene is rendered (measured peak, with
#: margin): a size whose buffers cannot fit is refused before anything is allocated.
BYTES_PER_PIXEL = 400
#: The largest image the generator renders (pixels).
MAX_PIXELS = 4096 * 4096


def render_scene(
    seed: int,
    index: int,
    size: tuple[int, int] = (360, 480),
    preset: str = "narrow",
    factors: Mapping[str, str] | None = None,
    trace: bool = False,
    **overrides: Any,
):
    """Render synthetic road scene ``index`` of ``seed``.

    Parameters
    ----------
    seed, index
        Non-negative integers; the scene is a pure function of them and the settings.
    size
        ``(H, W)`` in pixels.
    preset
        ``"narrow"`` (a highway; only its geometry varies), ``"urban"`` (streets with
        pavements, buildings, parked cars, people, shadows) or ``"randomized"`` (either
        layout, every factor randomised over wide ranges).
    factors
        ``{factor: "on" | "fixed" | "off"}`` changing the preset's modes (see
        :data:`FACTORS`); e.g. ``{"shadows": "off", "camera": "fixed"}``.
    trace
        Also return a (H,W) uint32 array whose bit ``i`` marks the pixels that factor
        ``FACTOR_BITS[i]`` drew or shaded (objects, cast shadows, paint).
    **overrides
        Fix any field of :class:`SceneParams` (e.g. ``curvature=0.0``, ``vehicles=0``).

    Returns
    -------
    image : numpy.ndarray
        float32 (H, W, 3) in [0, 1].
    label : numpy.ndarray
        uint8 (H, W) with ROAD3 ids: 0 background, 1 road, 2 markings.
    """
    out = _render_planar(seed, index, size, preset, factors, trace, overrides)
    return (np.ascontiguousarray(out[0].transpose(1, 2, 0)),) + out[1:]


def _render_planar(seed, index, size, preset, factors, trace, overrides):
    """:func:`render_scene` with the picture channels first, (3,H,W)."""
    height, width = check_size(size)
    p = scene_params(seed, index, preset, factors, **overrides)

    def rngs(name: str) -> np.random.Generator:
        return factor_rng(seed, index, preset, name, 1)

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return render(p, height, width, rngs, trace=trace)


def check_size(size) -> tuple[int, int]:
    """``(H, W)`` as ints, refused with one line when too small or too large to render."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise SegscopeError(f"size must be (H, W), got {size!r}") from None
    if height < 8 or width < 8:
        raise SegscopeError(f"size must be at least 8x8, got {height}x{width}")
    if height * width > MAX_PIXELS:
        need = height * width * BYTES_PER_PIXEL / 2**30
        raise SegscopeError(
            f"size {height}x{width} is too large to render (about {need:.0f} GiB of working "
            f"memory; at most {MAX_PIXELS} pixels, e.g. 4096x4096)")
    return height, width


_check_size = check_size


def describe_dataset(dataset: Any) -> dict[str, Any] | None:
    """What made ``dataset``, for a checkpoint's metadata: the settings (preset, factor
    modes, overrides) of generated scenes or of a ``segscope synth`` folder; None for
    other data."""
    settings = getattr(dataset, "settings", None)
    if isinstance(settings, dict) and "factors" in settings:
        return dict(settings)
    root = getattr(dataset, "root", None)
    if getattr(dataset, "name", None) == "synth" and root is not None:
        import json
        from pathlib import Path

        try:
            meta = json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(meta, dict) and isinstance(meta.get("settings"), dict):
            return {"folder": str(root), **meta["settings"]}
    return None


# --------------------------------------------------------------------------- dataset
class SyntheticRoads(Dataset):
    """Map-style dataset of :func:`render_scene` images (a ``torch`` Dataset).

    Parameters
    ----------
    n
        Number of images; index ``i`` is scene ``i`` of ``seed``.
    size
        ``(H, W)``.
    seed, preset, factors, **overrides
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
        factors: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise SegscopeError(f"n must be a non-negative integer, got {n!r}")
        _check_preset(preset)
        _check_seed_index(seed, 0)
        self.n = int(n)
        self.size = check_size(size)
        self.seed = int(seed)
        self.preset = preset
        self.factors = check_factors(factors)
        self.overrides = check_overrides(overrides)

    @property
    def settings(self) -> dict[str, Any]:
        """Everything needed to rebuild the dataset (JSON-friendly); ``factors`` holds the
        mode of every factor, after the preset and the user's changes."""
        return {
            "n": self.n,
            "size": list(self.size),
            "seed": self.seed,
            "preset": self.preset,
            "factors": resolve_modes(self.preset, self.factors),
            "factor_changes": dict(self.factors),
            "overrides": dict(self.overrides),
            "generator_version": GENERATOR_VERSION,
        }

    def __len__(self) -> int:
        return self.n

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The numpy pair ``(image (H,W,3) float32, label (H,W) uint8)`` of item ``index``."""
        return render_scene(self.seed, self._check_index(index), self.size, self.preset,
                            self.factors, **self.overrides)

    def _check_index(self, index: int) -> int:
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} synthetic scenes")
        return index

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._check_index(int(index))
        # rendered channels first, as the model takes it: no transposing copy
        image, label = _render_planar(self.seed, index, self.size, self.preset, self.factors,
                                      False, self.overrides)
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.overrides.items())
        if self.factors:
            extra = f", factors={self.factors!r}" + extra
        return (f"SyntheticRoads(n={self.n}, size={self.size}, seed={self.seed}, "
                f"preset={self.preset!r}{extra})")
