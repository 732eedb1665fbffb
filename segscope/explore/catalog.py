"""The images an explorer may show: given folders and specs, a diagnosis walk, uploads.

A server reads only what it was given: every file it opens lies under one of the folders
named with ``--data`` (symbolic links are resolved first, so a link cannot lead out), and
everything else — a path typed into the page, a diagnosis row pointing elsewhere — is
refused with a one-line reason.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SegscopeError

#: Largest upload accepted (bytes); larger bodies are refused before they are read whole.
MAX_UPLOAD = 20 * 1024 * 1024
#: Largest upload in pixels (H*W): explaining a larger picture would take minutes.
MAX_UPLOAD_PIXELS = 4096 * 4096
#: Decoded images kept in memory (the rest are read again when shown).
CACHED_IMAGES = 16


class NotFound(SegscopeError):
    """An image id or result the server does not know (HTTP 404)."""


class Forbidden(SegscopeError):
    """A path outside the folders the server was given (HTTP 403)."""


class TooLarge(SegscopeError):
    """An upload over the size limit (HTTP 413)."""


@dataclass
class Item:
    """One image the page can open.

    ``load`` returns (image float32 (3,H,W) in [0,1], label int64 (H,W) or ``None``).
    """

    id: str
    name: str
    group: str
    load: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "group": self.group, **self.extra}


class Catalog:
    """The images of ``data`` (folders or ``synthetic:`` specs), ordered as given.

    Parameters
    ----------
    data
        Dataset folders (any layout :func:`segscope.data.real.open_dataset` knows), plain
        folders of images, or ``synthetic:N[:PRESET[:SEED]]``.
    diagnosis
        A ``segscope diagnose`` folder: its real images (those under a ``data`` folder)
        are listed from the most to the least likely to fail.
    size
        (H, W) every image is resized to, or ``None`` for each image's own size.
    kind, id_map, split
        Forced dataset layout, id map and split, as ``segscope evaluate`` takes them
        (default split: the evaluation one, e.g. CamVid's ``val``).
    max_upload
        Largest upload in bytes.
    """

    def __init__(self, data: Sequence[str] = (), diagnosis: str | os.PathLike | None = None,
                 size: tuple[int, int] | None = None, kind: str = "auto",
                 id_map: Any = None, max_upload: int = MAX_UPLOAD,
                 split: str | None = None) -> None:
        self.size = size
        self.split = split
        self.max_upload = int(max_upload)
        self.items: dict[str, Item] = {}
        self.roots: list[Path] = []
        self.notes: list[str] = []
        self.diagnosis: list[dict[str, Any]] = []
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._by_path: dict[Path, str] = {}
        self._uploads = 0
        self._lock = threading.RLock()  # the server answers from several threads
        self._upload_dir: tempfile.TemporaryDirectory | None = None
        for n, spec in enumerate(data):
            self._add_source(n, str(spec), kind, id_map)
        if diagnosis is not None:
            self._add_diagnosis(Path(diagnosis))
        if not self.items and not self.diagnosis:
            self.notes.append("no images given: upload one, or restart with --data FOLDER")

    # -- sources -------------------------------------------------------------------------
    def _add_source(self, n: int, spec: str, kind: str, id_map: Any) -> None:
        from ..data.real import detect_kind, open_dataset
        from ..predict import find_images

        group = spec
        if spec.startswith("synthetic:") or kind == "synthetic":
            data = open_dataset(spec, size=self.size, kind=kind)
            for i in range(len(data)):
                self._add(Item(f"d{n}-{i}", f"{spec} #{i}", group, _dataset_loader(data, i)))
            return
        root = Path(spec).expanduser()
        listing = root.is_file() and root.suffix == ".txt"  # e.g. camvid/val.txt
        if not (root.is_dir() or listing):
            raise SegscopeError(f"--data {spec}: not a folder (give a dataset folder, a folder "
                                "of images, a split listing such as val.txt, or synthetic:N)")
        data_spec = root.resolve()
        root = data_spec.parent if listing else data_spec
        self.roots.append(root)
        plain = False
        if kind == "auto" and id_map is None and not listing and self.split is None:
            try:
                detect_kind(root)
            except SegscopeError:
                plain = True  # no labels a reader knows: a plain folder of pictures
        outside = 0
        if plain:
            for i, f in enumerate(find_images([root])):
                if not self.inside(f):
                    outside += 1  # a symbolic link out of the folder
                    continue
                self._add_file(f"d{n}-{i}", f, group)
        else:
            data = open_dataset(data_spec, split=self.split, size=self.size, kind=kind,
                                id_map=id_map)
            files = getattr(data, "files", None)
            if files is None:
                raise SegscopeError(f"--data {spec}: cannot list the files of this dataset")
            road_surface = not getattr(data, "has_markings", True)
            for i, (image_path, label_path) in enumerate(files):
                if not (self.inside(image_path) and self.inside(label_path)):
                    outside += 1
                    continue
                self._add(Item(f"d{n}-{i}", Path(image_path).name, group,
                               _dataset_loader(data, i), Path(image_path).resolve(),
                               {"road_surface": True} if road_surface else {}))
        if outside:
            self.notes.append(f"{spec}: {outside} image(s) not served: their files lie "
                              "outside the folder (symbolic links)")

    def _add_file(self, item_id: str, path: Path, group: str) -> Item:
        path = Path(path).resolve()
        if not self.inside(path):
            raise Forbidden(f"{path.name}: not under a folder given with --data")
        return self._add(Item(item_id, path.name, group, _file_loader(path, self.size), path))

    def _add(self, item: Item) -> Item:
        self.items[item.id] = item
        if item.path is not None:
            self._by_path.setdefault(item.path, item.id)
        return item

    def _add_diagnosis(self, folder: Path) -> None:
        csv_path = folder / "images.csv"
        if not csv_path.is_file():
            raise SegscopeError(f"--diagnosis {folder}: no images.csv (is it a segscope "
                                "diagnose folder?)")
        sources = {}
        meta = folder / "diagnosis.json"
        if meta.is_file():
            try:
                sources = json.loads(meta.read_text()).get("sources") or {}
            except (OSError, ValueError, AttributeError):
                raise SegscopeError(f"--diagnosis {folder}: diagnosis.json is not "
                                    "readable JSON") from None
        try:
            with open(csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            raise SegscopeError(f"--diagnosis {folder}: cannot read images.csv ({exc})") from None
        need = {"dataset", "path", "failure_score"}
        if rows and not need <= set(rows[0]):
            raise SegscopeError(f"--diagnosis {folder}: images.csv lacks column(s) "
                                f"{', '.join(sorted(need - set(rows[0])))}")
        real = [r for r in rows if r.get("dataset") == "real"]
        refused = 0
        walk = []
        for row in real:
            score = _number(row.get("failure_score"))
            path = Path(row.get("path") or "")
            if not path.is_absolute() or not self.inside(path):
                refused += 1
                continue
            path = path.resolve()
            item_id = self._by_path.get(path)
            if item_id is None:
                if not path.is_file():
                    refused += 1
                    continue
                item_id = self._add_file(f"g{len(walk)}", path, "diagnosis").id
            walk.append({"id": item_id, "name": row.get("image") or path.name,
                         "failure_score": score, "iou": _number(row.get("iou"))})
        walk.sort(key=lambda r: -r["failure_score"] if math.isfinite(r["failure_score"])
                  else math.inf)
        self.diagnosis = walk
        for w in walk:
            self.items[w["id"]].extra.update(failure_score=w["failure_score"],
                                             diagnosis_iou=w["iou"])
        if refused:
            root = (sources.get("real") or {}).get("root") if isinstance(sources, dict) else None
            hint = f" (restart with --data {root})" if root else ""
            self.notes.append(
                f"diagnosis: {refused} of {len(real)} real image(s) not served: they are not "
                f"under a folder given with --data{hint}")

    # -- access --------------------------------------------------------------------------
    def inside(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` (after resolving links) lies under a given folder."""
        try:
            p = Path(path).resolve()
        except (OSError, RuntimeError):
            return False
        return any(p == r or p.is_relative_to(r) for r in self.roots)

    def get(self, item_id: str) -> Item:
        item = self.items.get(str(item_id))
        if item is None:
            raise NotFound(f"unknown image id {str(item_id)[:80]!r}")
        return item

    def load(self, item_id: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(image (3,H,W), label (H,W) or None) of ``item_id``, cached."""
        item = self.get(item_id)
        with self._lock:
            if item_id in self._cache:
                self._cache.move_to_end(item_id)
                return self._cache[item_id]
            image, label = item.load()
            if not bool(torch.isfinite(image).all()):
                raise SegscopeError(f"image {item.name} holds NaN or infinite values")
            pair = (image.float().contiguous(), None if label is None else label.long())
            self._cache[item_id] = pair
            while len(self._cache) > CACHED_IMAGES:
                self._cache.popitem(last=False)
            return pair

    def open_path(self, text: str) -> Item:
        """Add the image file ``text`` (absolute, or relative to a given folder)."""
        with self._lock:
            return self._open_path(text)

    def _open_path(self, text: str) -> Item:
        text = str(text).strip()
        if not text:
            raise SegscopeError("no path given")
        if "\x00" in text:
            raise Forbidden("a path cannot contain a NUL character")
        candidates = [Path(text)] if Path(text).is_absolute() else [r / text for r in self.roots]
        for c in candidates:
            if self.inside(c):
                p = c.resolve()
                if p in self._by_path:
                    return self.items[self._by_path[p]]
                if not p.is_file():
                    raise NotFound(f"{text}: no such file under the given folders")
                from ..data.io import check_image

                check_image(p)  # not a picture: refused now, not listed and failing later
                return self._add_file(f"p{len(self.items)}", p, "opened")
        raise Forbidden(f"{text}: refused, the server only reads files under the folders "
                        "given with --data")

    def add_upload(self, data: bytes, name: str = "upload") -> Item:
        """Decode an uploaded picture with the CLI's checks and add it."""
        with self._lock:
            return self._add_upload(data, name)

    def _add_upload(self, data: bytes, name: str) -> Item:
        from ..data.io import IMAGE_SUFFIXES
        from ..predict import load_image

        if len(data) > self.max_upload:
            raise TooLarge(f"upload of {len(data)} bytes is over the limit of "
                           f"{self.max_upload} bytes")
        if not data:
            raise SegscopeError("the upload is empty")
        if self._upload_dir is None:
            self._upload_dir = tempfile.TemporaryDirectory(prefix="segscope-explore-")
        self._uploads += 1
        safe = "".join(ch for ch in Path(name).name if ch.isalnum() or ch in "._-")[:60]
        suffix = Path(safe).suffix.lower()
        suffix = suffix if suffix in IMAGE_SUFFIXES else ""
        tmp = Path(self._upload_dir.name) / f"{self._uploads}{suffix}"
        tmp.write_bytes(data)
        try:
            image = load_image(tmp, self.size)
        except SegscopeError as exc:
            tmp.unlink(missing_ok=True)
            raise SegscopeError(str(exc).replace(str(tmp), f"upload {safe or 'file'}")) from None
        tmp.unlink(missing_ok=True)  # decoded: nothing of it stays on disk
        h, w = image.shape[-2:]
        if h * w > MAX_UPLOAD_PIXELS:
            raise TooLarge(f"upload of {h}x{w} pixels is over the limit of "
                           f"{MAX_UPLOAD_PIXELS} pixels; resize it first")
        item = Item(f"u{self._uploads}", safe or f"upload {self._uploads}", "uploads",
                    lambda: (image, None))
        return self._add(item)

    def close(self) -> None:
        if self._upload_dir is not None:
            self._upload_dir.cleanup()
            self._upload_dir = None

    def listing(self) -> dict[str, Any]:
        """What the page's image list shows."""
        return {"items": [i.describe() for i in self.items.values()],
                "diagnosis": self.diagnosis, "notes": self.notes}


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _dataset_loader(data, i: int):
    def load():
        image, label = data[i]
        return image, label
    return load


def _file_loader(path: Path, size):
    def load():
        from ..predict import load_image

        return load_image(path, size), None
    return load
