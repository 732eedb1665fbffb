"""Real road-scene datasets read from the user's disk and mapped to ROAD3 (SPEC §1).

Every dataset is a map-style :class:`torch.utils.data.Dataset` of
``(image float32 (3,H,W) in [0,1], label int64 (H,W) in ROAD3 ids or 255)`` with
``.class_names`` (ROAD3), ``.files`` (``[(image_path, label_path), ...]``) and
``.has_markings`` (False for sets that have no markings class: those are scored on the
road surface, see :func:`merge_road_surface`).

:func:`open_dataset` is what the command line calls for every ``--data`` argument: it
recognises the folder layout (or the pseudo-spec ``synthetic:N[:PRESET[:SEED]]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SegscopeError
from .classes import BACKGROUND, IGNORE, MARKINGS, ROAD, ROAD3
from .io import IMAGE_SUFFIXES, read_image, read_label, require_file

__all__ = [
    "CamVid", "CamVid32", "Mapillary", "Synthia", "Cityscapes", "LabelFolder",
    "open_dataset", "load_id_map", "merge_road_surface", "scoring_classes",
    "ROAD_SURFACE", "DATA_KINDS", "DatasetKind", "KINDS", "register_kind", "data_kinds",
    "available_splits", "default_split", "PairDataset",
]

#: Classes a dataset without a markings class is scored on (road ∪ markings = surface).
ROAD_SURFACE: tuple[str, str] = ("background", "road surface")

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------
# Id and colour maps
# --------------------------------------------------------------------------------------

class IdMap:
    """Source label id -> ROAD3 id or 255, applied through a lookup table.

    Parameters
    ----------
    mapping
        ``{source id: target id}``; source ids 0-65535.
    describe
        How an error names the map, e.g. ``"CamVid (ids 0-11)"``.
    """

    def __init__(self, mapping: Mapping[int, int], describe: str) -> None:
        self.mapping = {int(k): int(v) for k, v in mapping.items()}
        self.describe = describe
        # -1 marks ids the map does not cover; int16 holds -1..255. The 65536-entry
        # table for 16-bit labels is built on first use.
        self._lut8 = np.full(256, -1, dtype=np.int16)
        for k, v in self.mapping.items():
            if k < 256:
                self._lut8[k] = v
        self._lut16: np.ndarray | None = None

    def _build16(self) -> np.ndarray:
        lut = np.full(65536, -1, dtype=np.int16)
        keys = np.fromiter(self.mapping.keys(), dtype=np.int64)
        lut[keys] = np.fromiter(self.mapping.values(), dtype=np.int16)
        return lut

    def __call__(self, ids: np.ndarray, path: PathLike) -> np.ndarray:
        """Map ``ids`` (H,W) read from label file ``path``; int64 (H,W)."""
        if ids.dtype == np.uint8:
            out = np.take(self._lut8, ids)
        else:
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) > 65535):
                bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
                self._fail(bad, path)
            if self._lut16 is None:
                self._lut16 = self._build16()
            out = np.take(self._lut16, ids.astype(np.int64, copy=False))
        if out.size and out.min() < 0:
            first = ids.ravel()[int(np.argmax(out.ravel() < 0))]
            self._fail(int(first), path)
        return out.astype(np.int64)

    def _fail(self, bad: int, path: PathLike) -> None:
        raise SegscopeError(f"label {path} contains id {bad}, which {self.describe} does not cover")


class ColourMap:
    """RGB colour -> ROAD3 id or 255, for colour-coded label sets.

    Colours are packed as ``r << 16 | g << 8 | b`` and looked up in a sorted table.
    """

    def __init__(self, mapping: Mapping[tuple[int, int, int], int], describe: str) -> None:
        packed = {(r << 16) | (g << 8) | b: int(v) for (r, g, b), v in mapping.items()}
        self.keys = np.array(sorted(packed), dtype=np.int32)  # same dtype as read_label(rgb=True)
        self.values = np.array([packed[k] for k in self.keys], dtype=np.int64)
        self.describe = describe

    def __call__(self, packed: np.ndarray, path: PathLike) -> np.ndarray:
        idx = np.searchsorted(self.keys, packed)
        idx = np.minimum(idx, len(self.keys) - 1)
        found = self.keys[idx] == packed
        if not found.all():
            c = int(packed.ravel()[int(np.argmin(found.ravel()))])
            rgb = (c >> 16 & 255, c >> 8 & 255, c & 255)
            raise SegscopeError(
                f"label {path} contains colour {rgb}, which {self.describe} does not cover")
        return self.values[idx]


_NAMES = {name: i for i, name in enumerate(ROAD3)} | {"ignore": IGNORE, "void": IGNORE}


def load_id_map(id_map: Mapping | PathLike) -> tuple[dict, bool]:
    """Read a user id map: a dict, or the path of a JSON object.

    Keys are source label ids (``17`` or ``"17"``) or colours (``"128,64,128"`` or
    ``"#804080"``), all of one kind; values are ROAD3 ids (0, 1, 2), 255, or the names
    ``background``, ``road``, ``markings``, ``ignore``.

    Returns
    -------
    (mapping, is_colour)
        ``{int id or (r,g,b): int}`` and whether the keys are colours.
    """
    where = "the id map"
    if not isinstance(id_map, Mapping):
        path = require_file(id_map, "id map")
        where = f"id map {path}"
        try:
            id_map = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SegscopeError(f"id map {path} is not valid JSON: {exc}") from None
        if not isinstance(id_map, dict):
            raise SegscopeError(f"id map {path} must be a JSON object {{source id: class}}")
    if not id_map:
        raise SegscopeError(f"{where} is empty")
    mapping: dict = {}
    kinds = set()
    for key, value in id_map.items():
        src = _parse_key(key, where)
        kinds.add(isinstance(src, tuple))
        mapping[src] = _parse_value(value, key, where)
    if len(kinds) > 1:
        raise SegscopeError(f"{where} mixes label ids and colours as keys; use one kind")
    return mapping, kinds.pop()


def _parse_key(key: Any, where: str) -> int | tuple[int, int, int]:
    text = str(key).strip()
    try:
        if text.startswith("#") and len(text) == 7:
            v = int(text[1:], 16)
            return (v >> 16 & 255, v >> 8 & 255, v & 255)
        if "," in text:
            rgb = tuple(int(p) for p in text.split(","))
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                raise ValueError
            return rgb  # type: ignore[return-value]
        if isinstance(key, bool):
            raise ValueError
        v = int(text)
        if not 0 <= v <= 65535:
            raise ValueError
        return v
    except ValueError:
        raise SegscopeError(
            f"{where}: key {key!r} is not a label id 0-65535 or a colour 'r,g,b' / '#rrggbb'"
        ) from None


def _parse_value(value: Any, key: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().lower() in _NAMES:
        return _NAMES[value.strip().lower()]
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2, IGNORE):
        return value
    raise SegscopeError(
        f"{where}: value {value!r} for {key!r} is not a ROAD3 id (0 background, 1 road, "
        f"2 markings), 255 (ignore) or one of those names")


# --------------------------------------------------------------------------------------
# Dataset mappings (SPEC §1)
# --------------------------------------------------------------------------------------

def _map(n: int, road: Iterable[int] = (), markings: Iterable[int] = (),
         ignore: Iterable[int] = ()) -> dict[int, int]:
    m = dict.fromkeys(range(n), BACKGROUND)
    m.update(dict.fromkeys(road, ROAD))
    m.update(dict.fromkeys(markings, MARKINGS))
    m.update(dict.fromkeys(ignore, IGNORE))
    return m


#: CamVid 11 classes (SegNet tutorial): 3 Road, 11 Unlabelled.
CAMVID11_MAP = _map(12, road=[3], ignore=[11])
#: Mapillary Vistas v1.2 (66 classes): 13 construction--flat--road,
#: 23 marking--crosswalk-zebra, 24 marking--general, 65 void--unlabeled.
MAPILLARY_MAP = _map(66, road=[13], markings=[23, 24], ignore=[65])
#: SYNTHIA RAND-CITYSCAPES (ids 0-22): 0 void, 3 road, 22 lanemarking.
SYNTHIA_MAP = _map(23, road=[3], markings=[22], ignore=[0])
#: Cityscapes labelIds (0-33): 7 road; the whole "void" category 0-6 (unlabeled, ego
#: vehicle, rectification border, out of roi, static, dynamic, ground) is ignored, as
#: the official benchmark does.
CITYSCAPES_MAP = _map(34, road=[7], ignore=range(7))

#: CamVid 32 classes (RGB-coded, LabeledApproved_full).
CAMVID32_COLOURS: dict[str, tuple[int, int, int]] = {
    "Animal": (64, 128, 64), "Archway": (192, 0, 128), "Bicyclist": (0, 128, 192),
    "Bridge": (0, 128, 64), "Building": (128, 0, 0), "Car": (64, 0, 128),
    "CartLuggagePram": (64, 0, 192), "Child": (192, 128, 64), "Column_Pole": (192, 192, 128),
    "Fence": (64, 64, 128), "LaneMkgsDriv": (128, 0, 192), "LaneMkgsNonDriv": (192, 0, 64),
    "Misc_Text": (128, 128, 64), "MotorcycleScooter": (192, 0, 192),
    "OtherMoving": (128, 64, 64), "ParkingBlock": (64, 192, 128), "Pedestrian": (64, 64, 0),
    "Road": (128, 64, 128), "RoadShoulder": (128, 128, 192), "Sidewalk": (0, 0, 192),
    "SignSymbol": (192, 128, 128), "Sky": (128, 128, 128), "SUVPickupTruck": (64, 128, 192),
    "TrafficCone": (0, 0, 64), "TrafficLight": (0, 64, 64), "Train": (192, 64, 128),
    "Tree": (128, 128, 0), "Truck_Bus": (192, 128, 192), "Tunnel": (64, 0, 64),
    "VegetationMisc": (192, 192, 0), "Void": (0, 0, 0), "Wall": (64, 192, 0),
}
_CAMVID32_TARGET = {"Road": ROAD, "LaneMkgsDriv": MARKINGS, "LaneMkgsNonDriv": MARKINGS,
                    "Void": IGNORE}
CAMVID32_MAP = {rgb: _CAMVID32_TARGET.get(name, BACKGROUND)
                for name, rgb in CAMVID32_COLOURS.items()}


# --------------------------------------------------------------------------------------
# Common machinery
# --------------------------------------------------------------------------------------

def _first(files: list, limit: int | None) -> list:
    """The first ``limit`` of ``files`` (all of them for None)."""
    if limit is None:
        return files
    if int(limit) < 1:
        raise SegscopeError(f"limit must be at least 1, got {limit}")
    return files[: int(limit)]


class PairDataset(Dataset):
    """Image/label file pairs, decoded and mapped to ROAD3 on access.

    A new dataset kind subclasses it: find the ``(image, label)`` file pairs, pass them
    to ``__init__`` and map a label file to ROAD3 ids in ``_label`` (docs/extending.md).
    """

    #: Short name used in messages and ``repr``.
    name = "dataset"
    class_names: tuple[str, ...] = ROAD3
    has_markings = True

    def __init__(self, files: list[tuple[Path, Path]], size: tuple[int, int] | None,
                 limit: int | None) -> None:
        self.files = _first(files, limit)
        self.size = _check_size(size)

    def __len__(self) -> int:
        return len(self.files)

    def _label(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += len(self.files)
        if not 0 <= index < len(self.files):
            raise IndexError(f"{self.name} index {index} out of range ({len(self.files)} items)")
        image_path, label_path = self.files[index]
        image = read_image(image_path)
        label = self._label(label_path)
        if image.shape[:2] != label.shape:
            (h, w), (lh, lw) = image.shape[:2], label.shape
            raise SegscopeError(
                f"image {image_path} is {h}x{w} (HxW) but its label {label_path} is {lh}x{lw}")
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        y = torch.from_numpy(label)
        if self.size is not None and tuple(self.size) != tuple(label.shape):
            x = resize_image(x, self.size)
            y = resize_label(y, self.size)
        return x, y

    def __repr__(self) -> str:
        size = f", size={self.size[0]}x{self.size[1]}" if self.size else ""
        return f"{type(self).__name__}({len(self)} images{size}, has_markings={self.has_markings})"


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise SegscopeError(f"size must be (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise SegscopeError(f"size must be positive, got {size!r}")
    return h, w


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (3,H,W) image (antialiased when shrinking, like PIL)."""
    h, w = image.shape[-2:]
    shrink = size[0] < h or size[1] < w
    out = torch.nn.functional.interpolate(image[None], size=tuple(size), mode="bilinear",
                                          align_corners=False, antialias=shrink)[0]
    return out.clamp_(0.0, 1.0)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an (H,W) label: every output pixel takes the label of
    the source pixel under its centre, so no new ids appear."""
    ys = _centres(size[0], label.shape[0])
    xs = _centres(size[1], label.shape[1])
    return label[ys[:, None], xs[None, :]]


def _centres(n_out: int, n_in: int) -> torch.Tensor:
    """Source index under the centre of each of ``n_out`` output pixels."""
    pos = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)
    return pos.long().clamp_(0, n_in - 1)


def _need_dir(path: Path, what: str) -> Path:
    path = path.expanduser()  # the Python API is called with "~/data/CamVid" too
    if not path.exists():
        raise SegscopeError(f"{what} not found: {path}")
    if not path.is_dir():
        raise SegscopeError(f"{what} {path} is a file, not a folder")
    return path


def _images_in(folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES,
               recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` (hidden and temporary files skipped), sorted."""
    suffixes = tuple(suffixes)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found
                  if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file())


def _keyed(files: Iterable[Path], key: Callable[[Path], str | None], what: str) -> dict:
    out: dict[str, Path] = {}
    for p in files:
        k = key(p)
        if k is None:
            continue
        if k in out:
            raise SegscopeError(f"two {what} files share the name {k!r}: {out[k]} and {p}")
        out[k] = p
    return out


def _pair(images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path,
          expect: Callable[[str], str], check_orphans: bool = True) -> list[tuple[Path, Path]]:
    """Match images and labels by key, with an error naming the first unmatched file."""
    if not images:
        raise SegscopeError(f"no images found in {image_dir} "
                            f"(looked for {', '.join('*' + s for s in IMAGE_SUFFIXES[:3])}...)")
    for k in sorted(images):
        if k not in labels:
            raise SegscopeError(
                f"image {images[k]} has no label (looked for {label_dir / expect(k)})")
    if check_orphans:
        for k in sorted(labels):
            if k not in images:
                raise SegscopeError(f"label {labels[k]} has no image in {image_dir}")
    return [(images[k], labels[k]) for k in sorted(images)]


def _read_split_file(path: Path) -> list[list[str]]:
    """Non-empty, non-comment lines of a split file, split on whitespace."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SegscopeError(f"cannot read split file {path}: {exc}") from None
    return [line.split() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _select(pairs_by_key: dict[str, Any], split_file: Path, key: Callable[[str], str]) -> list:
    """Keep the items of ``split_file`` (first token per line, matched by ``key``)."""
    out = []
    for n, tokens in enumerate(_read_split_file(split_file), 1):
        k = key(tokens[0])
        if k not in pairs_by_key:
            raise SegscopeError(f"{split_file} line {n}: {tokens[0]} has no image and label")
        out.append(pairs_by_key[k])
    if not out:
        raise SegscopeError(f"split file {split_file} lists no images")
    return out


def _first_dir(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------

_PairDataset = PairDataset  # the earlier private name


class CamVid(PairDataset):
    """CamVid, 11 classes, in the SegNet tutorial layout.

    ``root/{split}/*.png``, ``root/{split}annot/*.png`` (8-bit ids) and optionally
    ``root/{split}.txt`` with lines ``image label`` (relative to ``root``, or absolute
    tutorial paths such as ``/SegNet/CamVid/train/x.png``, which are resolved by file name
    under ``root``). Mapping: 3 Road -> road, 11 Unlabelled -> 255, the rest ->
    background. Lane markings are labelled Road, so ``has_markings`` is False.
    """

    name = "CamVid"
    has_markings = False
    id_map = IdMap(CAMVID11_MAP, "CamVid 11-class (ids 0-11)")

    def __init__(self, root: PathLike, split: str = "train", size: tuple[int, int] | None = None,
                 limit: int | None = None) -> None:
        self.root = _need_dir(Path(root), "CamVid folder")
        self.split = split
        listing = self.root / f"{split}.txt"
        image_dir, label_dir = self.root / split, self.root / f"{split}annot"
        if listing.is_file():
            files = self._from_listing(listing, image_dir, label_dir)
        elif image_dir.is_dir() or label_dir.is_dir():
            _need_dir(image_dir, f"CamVid {split} image folder")
            _need_dir(label_dir, f"CamVid {split} label folder")
            images = _keyed(_images_in(image_dir), lambda p: p.stem, "image")
            labels = _keyed(_images_in(label_dir), lambda p: p.stem, "label")
            files = _pair(images, labels, image_dir, label_dir, lambda k: f"{k}.png")
        else:
            raise SegscopeError(
                f"CamVid split {split!r} not found in {self.root} "
                f"(looked for {listing.name} and {split}/ + {split}annot/)")
        super().__init__(files, size, limit)

    def _from_listing(self, listing: Path, image_dir: Path,
                      label_dir: Path) -> list[tuple[Path, Path]]:
        files = []
        for n, tokens in enumerate(_read_split_file(listing), 1):
            if len(tokens) != 2:
                raise SegscopeError(
                    f"{listing} line {n}: expected 'image label', got {' '.join(tokens)!r}")
            image = self._resolve(tokens[0], image_dir, listing, n)
            label = self._resolve(tokens[1], label_dir, listing, n)
            files.append((image, label))
        if not files:
            raise SegscopeError(f"no images found in {listing} (the file lists none)")
        return files

    def _resolve(self, token: str, fallback: Path, listing: Path, line: int) -> Path:
        """The file a listing line names, found under the dataset folder only."""
        p = Path(token)
        if ".." in p.parts:
            raise SegscopeError(f"{listing} line {line}: {token} points outside the dataset "
                                f"folder {self.root}; names are resolved under it")
        # Tutorial listings carry absolute paths of the authors' machine: only their
        # folder and file name are used, under the root; a listing never reaches out.
        candidates = [] if p.is_absolute() else [self.root / p]
        candidates += [self.root / p.parent.name / p.name, fallback / p.name]
        for c in candidates:
            if c.is_file():
                return c
        raise SegscopeError(f"{listing} line {line}: file {token} not found under "
                            f"{self.root} (also looked for {candidates[-1]})")

    def _label(self, path: Path) -> np.ndarray:
        return self.id_map(read_label(path), path)


class CamVid32(PairDataset):
    """CamVid, 32 classes, RGB-coded labels (``<stem>_L.png``).

    Layouts, tried in order:

    - ``root/{split}/`` + ``root/{split}_labels/`` (the common Kaggle copy), when ``split``
      is given and that folder exists;
    - ``root/701_StillsRaw_full/`` + ``root/LabeledApproved_full/`` (the original release),
      or ``root/images/`` + ``root/labels/``; with ``split``, ``root/{split}.txt`` lists
      the images to keep (one file name or stem per line).

    Mapping: Road (128,64,128) -> road; LaneMkgsDriv (128,0,192) and LaneMkgsNonDriv
    (192,0,64) -> markings; Void (0,0,0) -> 255; the other 28 colours -> background.
    """

    name = "CamVid32"
    has_markings = True
    colour_map = ColourMap(CAMVID32_MAP, "the CamVid 32-class colour list")

    def __init__(self, root: PathLike, split: str | None = None,
                 size: tuple[int, int] | None = None, limit: int | None = None) -> None:
        self.root = root = _need_dir(Path(root), "CamVid32 folder")
        self.split = split
        split_dir = root / split if split else None
        if split_dir is not None and split_dir.is_dir():
            image_dir = split_dir
            label_dir = _first_dir(root / f"{split}_labels", root / f"{split}annot")
            own_labels = label_dir is not None
            label_dir = label_dir or _first_dir(root / "LabeledApproved_full", root / "labels")
            listing = None
        else:
            image_dir = _first_dir(root / "701_StillsRaw_full", root / "images")
            label_dir = _first_dir(root / "LabeledApproved_full", root / "labels")
            own_labels = True
            listing = root / f"{split}.txt" if split else None
            if listing is not None and not listing.is_file():
                raise SegscopeError(f"CamVid32 split {split!r} not found in {root} "
                                    f"(looked for {split}/ and {split}.txt)")
        if image_dir is None or label_dir is None:
            raise SegscopeError(
                f"no CamVid32 layout in {root} (looked for 701_StillsRaw_full/ + "
                "LabeledApproved_full/, images/ + labels/, or {split}/ + {split}_labels/)")
        images = _keyed(_images_in(image_dir), lambda p: p.stem, "image")
        labels = _keyed(_images_in(label_dir, (".png",)), _strip_l, "label")
        files = _pair(images, labels, image_dir, label_dir, lambda k: f"{k}_L.png",
                      check_orphans=own_labels and listing is None)
        if listing is not None:
            by_key = {p[0].stem: p for p in files}
            files = _select(by_key, listing, lambda t: _strip_l(Path(t)) or "")
        super().__init__(files, size, limit)

    def _label(self, path: Path) -> np.ndarray:
        return self.colour_map(read_label(path, rgb=True), path)


def _strip_l(p: Path) -> str:
    stem = p.stem
    return stem[:-2] if stem.endswith("_L") else stem


class Mapillary(PairDataset):
    """Mapillary Vistas v1.2: ``root/{split}/images/*.jpg`` + ``root/{split}/labels/*.png``.

    ``split`` is ``training`` or ``validation`` (``train``/``val`` are accepted); the
    v2.0 download's ``root/{split}/v1.2/labels/`` works too. Labels are 8-bit palette ids
    0-65: 13 road -> road, 23 crosswalk-zebra and 24 marking-general -> markings,
    65 unlabeled -> 255, the rest -> background.
    """

    name = "Mapillary"
    has_markings = True
    id_map = IdMap(MAPILLARY_MAP, "Mapillary Vistas v1.2 (ids 0-65)")
    _ALIASES = {"train": "training", "val": "validation", "test": "testing"}

    def __init__(self, root: PathLike, split: str = "training",
                 size: tuple[int, int] | None = None, limit: int | None = None) -> None:
        self.root = _need_dir(Path(root), "Mapillary folder")
        self.split = split = self._ALIASES.get(split, split)
        base = _need_dir(self.root / split, f"Mapillary split {split!r}")
        image_dir = _need_dir(base / "images", "Mapillary image folder")
        label_dir = _first_dir(base / "v1.2" / "labels", base / "labels")
        if label_dir is None:
            raise SegscopeError(f"Mapillary label folder not found: {base / 'labels'}")
        images = _keyed(_images_in(image_dir), lambda p: p.stem, "image")
        labels = _keyed(_images_in(label_dir, (".png",)), lambda p: p.stem, "label")
        files = _pair(images, labels, image_dir, label_dir, lambda k: f"{k}.png")
        super().__init__(files, size, limit)

    def _label(self, path: Path) -> np.ndarray:
        return self.id_map(read_label(path), path)


class Synthia(PairDataset):
    """SYNTHIA RAND-CITYSCAPES: ``root/RGB/*.png`` + ``root/GT/LABELS/*.png``.

    Labels are 16-bit PNGs with the class id in the first (R) channel: 3 road -> road,
    22 lanemarking -> markings, 0 void -> 255, the rest (1-21) -> background. The set has
    no official splits; ``split`` selects the stems listed in ``root/{split}.txt``.
    """

    name = "SYNTHIA"
    has_markings = True
    id_map = IdMap(SYNTHIA_MAP, "SYNTHIA RAND-CITYSCAPES (ids 0-22)")

    def __init__(self, root: PathLike, split: str | None = None,
                 size: tuple[int, int] | None = None, limit: int | None = None) -> None:
        self.root = _need_dir(Path(root), "SYNTHIA folder")
        self.split = split
        image_dir = _need_dir(self.root / "RGB", "SYNTHIA image folder")
        label_dir = _need_dir(self.root / "GT" / "LABELS", "SYNTHIA label folder")
        images = _keyed(_images_in(image_dir), lambda p: p.stem, "image")
        labels = _keyed(_images_in(label_dir, (".png",)), lambda p: p.stem, "label")
        files = _pair(images, labels, image_dir, label_dir, lambda k: f"{k}.png")
        if split is not None:
            listing = self.root / f"{split}.txt"
            if not listing.is_file():
                raise SegscopeError(f"SYNTHIA has no official splits; split {split!r} needs "
                                    f"a list of image names in {listing}")
            files = _select({p[0].stem: p for p in files}, listing, lambda t: Path(t).stem)
        super().__init__(files, size, limit)

    def _label(self, path: Path) -> np.ndarray:
        return self.id_map(read_label(path), path)


class Cityscapes(PairDataset):
    """Cityscapes fine annotations.

    ``root/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
    ``root/gtFine/{split}/{city}/*_gtFine_labelIds.png``. Mapping: 7 road -> road; the void
    category 0-6 (unlabeled, ego vehicle, rectification border, out of roi, static,
    dynamic, ground) -> 255, as in the official evaluation; all other ids -> background.
    No markings class, so ``has_markings`` is False.
    """

    name = "Cityscapes"
    has_markings = False
    id_map = IdMap(CITYSCAPES_MAP, "Cityscapes labelIds (0-33)")

    def __init__(self, root: PathLike, split: str = "val", size: tuple[int, int] | None = None,
                 limit: int | None = None) -> None:
        self.root = _need_dir(Path(root), "Cityscapes folder")
        self.split = split
        image_dir = _need_dir(self.root / "leftImg8bit" / split, f"Cityscapes split {split!r}")
        label_dir = _need_dir(self.root / "gtFine" / split, "Cityscapes label folder")

        def key(suffix: str) -> Callable[[Path], str | None]:
            def f(p: Path) -> str | None:
                if not p.name.endswith(suffix):
                    return None
                return f"{p.parent.name}/{p.name[: -len(suffix)]}"
            return f

        images = _keyed(_images_in(image_dir, (".png",), recursive=True),
                        key("_leftImg8bit.png"), "image")
        labels = _keyed(_images_in(label_dir, (".png",), recursive=True),
                        key("_gtFine_labelIds.png"), "label")
        files = _pair(images, labels, image_dir, label_dir,
                      lambda k: f"{k}_gtFine_labelIds.png")
        super().__init__(files, size, limit)

    def _label(self, path: Path) -> np.ndarray:
        return self.id_map(read_label(path), path)


class LabelFolder(PairDataset):
    """Any folder of image/label pairs matched by file stem, with a user id map.

    Parameters
    ----------
    root
        Folder holding ``images/`` and ``labels/`` (names configurable).
    id_map
        ``{source id: ROAD3 id or 255}`` as a dict or a JSON file (see
        :func:`load_id_map`); colour keys (``"128,64,128"``) read colour-coded labels.
    has_markings
        Default: whether any source id maps to markings.

    The folder written by ``segscope synth`` (``images/``, ``labels/``,
    ``manifest.json``) already holds ROAD3 ids: use :meth:`synth`.
    """

    name = "folder"

    def __init__(self, root: PathLike, id_map: Mapping | PathLike, images: str = "images",
                 labels: str = "labels", size: tuple[int, int] | None = None,
                 limit: int | None = None, has_markings: bool | None = None) -> None:
        self.root = _need_dir(Path(root), "dataset folder")
        mapping, self.colour = load_id_map(id_map)
        self.mapper = (ColourMap(mapping, "the id map") if self.colour
                       else IdMap(mapping, "the id map"))
        self.has_markings = (MARKINGS in mapping.values()) if has_markings is None \
            else bool(has_markings)
        image_dir = _need_dir(self.root / images, "image folder")
        label_dir = _need_dir(self.root / labels, "label folder")
        imgs = _keyed(_images_in(image_dir), lambda p: p.stem, "image")
        lbls = _keyed(_images_in(label_dir), lambda p: p.stem, "label")
        files = _pair(imgs, lbls, image_dir, label_dir, lambda k: f"{k}.png")
        super().__init__(files, size, limit)

    @classmethod
    def synth(cls, root: PathLike, size: tuple[int, int] | None = None,
              limit: int | None = None) -> LabelFolder:
        """A ``segscope synth`` folder: labels are ROAD3 ids already.

        ``manifest.json`` may name the image and label folders (``"images"``,
        ``"labels"``); the defaults are ``images/`` and ``labels/``.
        """
        folders = {"images": "images", "labels": "labels"}
        manifest = Path(root).expanduser() / "manifest.json"
        if manifest.is_file():
            try:
                meta = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise SegscopeError(f"manifest {manifest} is not valid JSON: {exc}") from None
            if isinstance(meta, dict):
                folders.update({k: meta[k] for k in folders if isinstance(meta.get(k), str)})
        # the manifest names folders *inside* the dataset, never elsewhere
        base = Path(root).expanduser().resolve()
        for key, name in folders.items():
            inside = (base / name).resolve()
            if Path(name).is_absolute() or ".." in Path(name).parts or (
                    inside != base and base not in inside.parents):
                raise SegscopeError(f"manifest {manifest}: {key!r} must name a folder inside "
                                    f"the dataset, got {name!r}")
        identity = {BACKGROUND: BACKGROUND, ROAD: ROAD, MARKINGS: MARKINGS, IGNORE: IGNORE}
        ds = cls(root, identity, size=size, limit=None, has_markings=True, **folders)
        count = meta.get("count") if manifest.is_file() and isinstance(meta, dict) else None
        if isinstance(count, int) and not isinstance(count, bool) and count != len(ds):
            raise SegscopeError(
                f"manifest {manifest} lists {count} scenes but {len(ds)} image/label pairs "
                "are there: files were removed or added since segscope synth wrote it "
                "(render it again, or fix its 'count')")
        ds.files = _first(ds.files, limit)  # the count is the whole folder's
        ds.mapper = IdMap(identity, "ROAD3 (0 background, 1 road, 2 markings, 255 ignore)")
        ds.name = "synth"
        return ds

    def _label(self, path: Path) -> np.ndarray:
        return self.mapper(read_label(path, rgb=self.colour), path)


# --------------------------------------------------------------------------------------
# Scoring on the road surface
# --------------------------------------------------------------------------------------

def scoring_classes(dataset: Any) -> tuple[str, ...]:
    """The class names a dataset is scored on: ROAD3, or :data:`ROAD_SURFACE` when the
    dataset has no markings class (then use :func:`merge_road_surface`)."""
    return ROAD3 if getattr(dataset, "has_markings", True) else ROAD_SURFACE


def merge_road_surface(pred, label):
    """Fold ROAD3 predictions and labels onto {0 background, 1 road surface}.

    For datasets without a markings class (``has_markings`` False): road and markings
    predictions both count as road surface, and so do road (and any markings) labels;
    255 stays 255.

    Parameters
    ----------
    pred, label
        Integer arrays or tensors of ROAD3 ids (same shape); ``label`` may hold 255.

    Returns
    -------
    (pred2, label2)
        Same types and dtypes as the inputs.
    """
    if isinstance(pred, torch.Tensor):
        pred2 = ((pred == ROAD) | (pred == MARKINGS)).to(pred.dtype)
    else:
        pred = np.asarray(pred)
        pred2 = ((pred == ROAD) | (pred == MARKINGS)).astype(pred.dtype)
    if isinstance(label, torch.Tensor):
        surface = ((label == ROAD) | (label == MARKINGS)).to(label.dtype)
        label2 = torch.where(label == IGNORE, label, surface)
    else:
        label = np.asarray(label)
        surface = ((label == ROAD) | (label == MARKINGS)).astype(label.dtype)
        label2 = np.where(label == IGNORE, label, surface)
    return pred2, label2


# --------------------------------------------------------------------------------------
# open_dataset: what --data means
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DatasetKind:
    """One kind of dataset folder that ``--data`` understands (see :func:`register_kind`).

    Parameters
    ----------
    name
        The ``--data-kind`` value.
    open
        ``open(root, split=..., size=..., limit=...)`` -> the dataset (``id_map=`` too
        when ``takes_id_map``).
    detect
        ``detect(root) -> bool``: whether a folder has this layout; ``None`` for kinds
        used only when named.
    looks_for
        What ``detect`` looks for, in the message when no kind matches.
    splits
        ``splits(root) -> [names]``: the splits present; ``None`` for kinds without
        splits (then ``--split`` is an error).
    train_split, eval_split
        The split used for training and for evaluation when none is given; ``None``
        means every image.
    aliases
        Other accepted names of splits, e.g. ``{"val": "validation"}``.
    generic
        Detected only after every specific kind (a catch-all layout).
    takes_id_map
        ``open`` accepts the user's ``id_map``.
    """

    name: str
    open: Callable[..., Dataset]
    detect: Callable[[Path], bool] | None = None
    looks_for: str = ""
    splits: Callable[[Path], list[str]] | None = None
    train_split: str | None = "train"
    eval_split: str | None = "val"
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    generic: bool = False
    takes_id_map: bool = False


#: Every kind of dataset folder, by ``--data-kind`` name, in detection order.
KINDS: dict[str, DatasetKind] = {}


def register_kind(kind: DatasetKind) -> DatasetKind:
    """Add (or replace) a dataset kind: the one place that makes a layout known to
    :func:`open_dataset`, ``--data-kind`` and detection (docs/extending.md)."""
    if kind.name in ("auto", "synthetic") or not kind.name.isidentifier():
        raise SegscopeError(f"{kind.name!r} cannot name a dataset kind")
    KINDS[kind.name] = kind
    return kind


def data_kinds() -> tuple[str, ...]:
    """The values ``kind=`` (and ``--data-kind``) accepts."""
    return ("auto", *KINDS, "synthetic")


def _dirs(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _listings(root: Path) -> list[str]:
    """Stems of the split listings ``root/NAME.txt``."""
    try:
        return sorted(p.stem for p in root.glob("*.txt") if p.is_file())
    except OSError:
        return []


def _ordered(names: Iterable[str]) -> list[str]:
    rank = {"train": 0, "training": 0, "val": 1, "validation": 1, "test": 2, "testing": 2}
    return sorted(set(names), key=lambda n: (rank.get(n, 3), n))


def _camvid_splits(root: Path) -> list[str]:
    return _ordered([d for d in _dirs(root) if (root / f"{d}annot").is_dir()]
                    + [t for t in _listings(root)
                       if t in ("train", "val", "test") or (root / f"{t}annot").is_dir()])


def _camvid32_splits(root: Path) -> list[str]:
    return _ordered([d for d in _dirs(root)
                     if (root / f"{d}_labels").is_dir() or (root / f"{d}annot").is_dir()]
                    + _listings(root))


def _has(root: Path, *parts: str) -> bool:
    return root.joinpath(*parts).exists()


def _is_camvid(root: Path) -> bool:
    return any((_has(root, f"{s}.txt") or _has(root, s)) and _has(root, f"{s}annot")
               for s in ("train", "val", "test"))


def _is_camvid32(root: Path) -> bool:
    return _has(root, "LabeledApproved_full") or any(
        _has(root, f"{s}_labels") for s in ("train", "val", "test")) or (
        _has(root, "labels") and next(root.joinpath("labels").glob("*_L.png"), None) is not None)


def _open_folder(root: Path, split: str | None = None, size=None, limit=None,
                 id_map: Mapping | PathLike | None = None) -> Dataset:
    if id_map is None:
        if (root / "manifest.json").is_file():
            return LabelFolder.synth(root, size=size, limit=limit)
        if not (_has(root, "images") and _has(root, "labels")):
            raise SegscopeError(f"{root} has no images/ and labels/ folders: --data-kind "
                                "folder reads image/label pairs from them (a folder of "
                                "pictures alone has no labels)")
        raise SegscopeError(f"{root} is a folder of image/label pairs: give an id map "
                            "(--id-map map.json) saying which label ids are road and markings")
    return LabelFolder(root, id_map, size=size, limit=limit)


for _kind in (
    DatasetKind("synth", lambda root, split=None, size=None, limit=None:
                LabelFolder.synth(root, size=size, limit=limit),
                detect=lambda r: _has(r, "manifest.json") and _has(r, "images")
                and _has(r, "labels"),
                looks_for="manifest.json + images/ + labels/ (segscope synth)"),
    DatasetKind("cityscapes", Cityscapes, detect=lambda r: _has(r, "leftImg8bit"),
                looks_for="leftImg8bit/ (Cityscapes)",
                splits=lambda r: _ordered(_dirs(r / "leftImg8bit"))),
    DatasetKind("mapillary", Mapillary,
                detect=lambda r: _has(r, "training", "images") or _has(r, "validation", "images"),
                looks_for="training/images (Mapillary)",
                splits=lambda r: _ordered(d for d in _dirs(r) if (r / d / "images").is_dir()),
                train_split="training", eval_split="validation", aliases=Mapillary._ALIASES),
    DatasetKind("synthia", Synthia, detect=lambda r: _has(r, "RGB") and _has(r, "GT", "LABELS"),
                looks_for="RGB/ + GT/LABELS (SYNTHIA)", splits=_listings,
                train_split=None, eval_split=None),
    DatasetKind("camvid", CamVid, detect=_is_camvid, looks_for="val.txt + valannot/ (CamVid)",
                splits=_camvid_splits),
    DatasetKind("camvid32", CamVid32, detect=_is_camvid32,
                looks_for="*_L.png labels (CamVid32)", splits=_camvid32_splits,
                train_split=None, eval_split=None),
    DatasetKind("folder", _open_folder,
                detect=lambda r: _has(r, "images") and _has(r, "labels"),
                looks_for="images/ + labels/ (folder with --id-map)", generic=True,
                takes_id_map=True),
):
    register_kind(_kind)

#: The values ``kind=`` accepts when this module is loaded (see :func:`data_kinds`).
DATA_KINDS = data_kinds()


def available_splits(root: PathLike, kind: str = "auto") -> list[str]:
    """The splits present in the dataset folder ``root`` (empty for kinds without splits).

    Parameters
    ----------
    root
        A dataset folder.
    kind
        Its kind, or ``auto`` to detect it.
    """
    root = Path(root).expanduser()
    info = KINDS[_kind_of(root, kind)]
    return info.splits(root) if info.splits is not None else []


def default_split(root: PathLike, kind: str = "auto", purpose: str = "eval"
                  ) -> tuple[str | None, str | None]:
    """The split to read when the user names none: ``(split, note)``.

    The kind's usual split (``val`` for evaluation, ``train`` for training) when the
    folder has it, else the only split there is, with a ``note`` saying so; ``None``
    means every image. Several splits but not the usual one is an error naming them.
    """
    root = Path(root).expanduser()
    info = KINDS[_kind_of(root, kind)]
    if info.splits is None:
        return None, None
    want = info.train_split if purpose == "train" else info.eval_split
    if want is None:
        return None, None
    have = info.splits(root)
    if not have or want in have:
        return want, None
    if len(have) == 1:
        return have[0], f"{root} has only the split '{have[0]}': using it"
    raise SegscopeError(f"{root} has no '{want}' split; it has {', '.join(have)}: choose "
                        "one with --split")


def _kind_of(root: Path, kind: str, id_map: Any = None) -> str:
    kind = (kind or "auto").lower()
    if kind == "auto":
        return detect_kind(root, id_map)
    if kind not in KINDS:
        raise SegscopeError(f"unknown data kind {kind!r} (choose from {', '.join(data_kinds())})")
    return kind


def open_dataset(spec: PathLike, split: str | None = None, size: tuple[int, int] | None = None,
                 limit: int | None = None, kind: str = "auto",
                 id_map: Mapping | PathLike | None = None, purpose: str = "eval") -> Dataset:
    """Open the dataset that ``spec`` names, recognising its layout.

    Parameters
    ----------
    spec
        A folder, or ``synthetic:N``, ``synthetic:N:PRESET`` or ``synthetic:N:PRESET:SEED``
        for N generated scenes (:class:`segscope.data.SyntheticRoads`).
    split
        Dataset split; ``None`` picks it with :func:`default_split`: the evaluation split
        (``val`` for CamVid and Cityscapes, ``validation`` for Mapillary, all images for
        SYNTHIA, CamVid32 and plain folders), or the only split there is. A split given
        to a set without splits is an error.
    size
        (H, W) to resize to (images bilinear, labels nearest).
    limit
        Keep only the first ``limit`` items.
    kind
        ``auto`` (detect) or a registered kind (:data:`KINDS`: ``camvid``, ``camvid32``,
        ``mapillary``, ``synthia``, ``cityscapes``, ``synth``, ``folder``), or
        ``synthetic``.
    id_map
        For ``folder``: ``{source id: ROAD3 id or 255}`` as a dict or JSON file.
    purpose
        ``"eval"`` or ``"train"``: which split ``None`` means.

    The dataset gets ``.split`` (what was read) and ``.split_note`` (a line when the
    split was chosen for the user, else None). Detection tries the kinds of
    :data:`KINDS` in order (catch-all layouts last); pointing ``spec`` at a CamVid listing
    such as ``camvid/val.txt`` opens that split.
    """
    kind = (kind or "auto").lower()
    if kind not in data_kinds():
        raise SegscopeError(f"unknown data kind {kind!r} (choose from {', '.join(data_kinds())})")
    text = str(spec)
    if text.startswith("synthetic:") or kind == "synthetic":
        return _open_synthetic(text, split, size, limit)
    root = Path(spec).expanduser()
    if not root.exists():
        raise SegscopeError(f"dataset folder not found: {root}")
    if root.is_file():
        # A split listing such as camvid/val.txt names its dataset and split.
        if root.suffix == ".txt" and kind in ("auto", "camvid"):
            return _with_split(CamVid(root.parent, split or root.stem, size=size, limit=limit),
                               split or root.stem, None)
        raise SegscopeError(f"--data must be a dataset folder or synthetic:N, got the file {root}")
    if not root.is_dir():
        raise SegscopeError(f"--data {root} is not a folder (a pipe, socket or device)")
    name = _kind_of(root, kind, id_map)
    info = KINDS[name]
    if id_map is not None and not info.takes_id_map:
        raise SegscopeError(f"an id map is only used with plain folders, not with {name} data")
    note = None
    if info.splits is None:
        if split is not None:
            raise SegscopeError(f"{root} ({name} data) has no splits: drop --split {split}")
    elif split is None:
        split, note = default_split(root, name, purpose)
    else:
        have = info.splits(root)
        wanted = info.aliases.get(split, split)
        if have and wanted not in have and split not in have:
            raise SegscopeError(f"{root} has no split {split!r}; it has {', '.join(have)}")
    kwargs: dict[str, Any] = {"size": size, "limit": limit}
    if info.takes_id_map:
        kwargs["id_map"] = id_map
    if info.splits is not None:
        kwargs["split"] = split
    return _with_split(info.open(root, **kwargs), split, note)


def _with_split(dataset: Dataset, split: str | None, note: str | None) -> Dataset:
    with contextlib.suppress(AttributeError):  # a kind may return a frozen object
        dataset.split = split
        dataset.split_note = note
    return dataset


def detect_kind(root: Path, id_map: Any = None) -> str:
    """The dataset kind of folder ``root``, from its layout (see :func:`open_dataset`)."""
    root = Path(root)
    ordered = [k for k in KINDS.values() if not k.generic] + \
        [k for k in KINDS.values() if k.generic]
    for info in ordered:
        if info.detect is not None and info.detect(root):
            return info.name
    looked = ", ".join(k.looks_for or k.name for k in ordered if k.detect is not None)
    raise SegscopeError(f"cannot tell which dataset {root} holds: looked for {looked}; "
                        "use --data-kind to force one")


def _open_synthetic(text: str, split: str | None, size: tuple[int, int] | None,
                    limit: int | None) -> Dataset:
    parts = text.split(":")
    if parts[0] == "synthetic":
        parts = parts[1:]
    usage = "synthetic:N, synthetic:N:PRESET or synthetic:N:PRESET:SEED"
    if not 1 <= len(parts) <= 3:
        raise SegscopeError(f"bad synthetic data spec {text!r}: use {usage}")
    try:
        n = int(parts[0])
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise SegscopeError(f"bad synthetic data spec {text!r}: use {usage}") from None
    if n < 1:
        raise SegscopeError(f"synthetic data needs at least 1 image, got {n}")
    if split is not None:
        raise SegscopeError(f"{text} (generated scenes) has no splits: drop --split {split}")
    preset = parts[1] if len(parts) > 1 and parts[1] else "narrow"
    if limit is not None:
        n = min(n, int(limit))
    from .synthetic import SyntheticRoads  # written alongside; imported only when used

    kwargs: dict[str, Any] = {"seed": seed, "preset": preset}
    if size is not None:
        kwargs["size"] = _check_size(size)
    try:
        return SyntheticRoads(n, **kwargs)
    except (KeyError, ValueError) as exc:
        raise SegscopeError(f"bad synthetic data spec {text!r}: {exc}") from None
