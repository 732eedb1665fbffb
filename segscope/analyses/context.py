"""What every analysis of a study shares: the model, the images, the LRP explanations.

:meth:`StudyContext.build` checks every input (checkpoint, class, layers, rule, real
data and split) before any long work, then picks the images: a synthetic validation image
with true positives of the class and, with real data, the best and the worst segmented
real image. The explanations several analyses use (the class's true positives, one pixel
of them) are computed on first use and shared; :meth:`StudyContext.release` drops the
per-layer relevance once no analysis left needs it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._io import write_text
from ..checkpoint import dataset_at_training_scale, training_size
from ..errors import SegscopeError

if TYPE_CHECKING:
    from ..explain.rules import RuleLike

#: Default synthetic validation data: a seed different from the training default (0).
DEFAULT_SYNTHETIC = "synthetic:8:narrow:1"


class NoTruePositives(SegscopeError):
    """The model predicts no true positive of the class in any candidate image."""


@dataclass
class StudySettings:
    """What a study runs with; ``quick`` shrinks the defaults left as ``None``.

    ``rule`` takes every form :func:`segscope.explain.lrp` takes, including a per-layer
    composite as text (``"conv1_1=zbox,default=alpha1beta0"``).
    """

    cls: str = "road"
    layer: str = "conv2_1"
    compare_layer: str = "conv2_1_D"
    rule: RuleLike = "alpha1beta0"
    quick: bool = False
    pixels: int | None = None  # single-pixel concepts per image for the bias study
    scan: int | None = None  # real images scanned for the best / worst
    candidates: int | None = None  # synthetic images tried for the main image
    channels: int | None = None  # features separated (the top ones by fv); None = all
    size: tuple[int, int] | None = None
    real_size: tuple[int, int] | None = None  # for the real images; default ``size``
    split: str | None = None  # split of the real data; None: val, else the only one
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def resolved(self) -> StudySettings:
        q = self.quick
        return StudySettings(
            cls=self.cls, layer=self.layer, compare_layer=self.compare_layer, rule=self.rule,
            quick=q, size=self.size, real_size=self.real_size or self.size, seed=self.seed,
            pixels=self.pixels if self.pixels is not None else (8 if q else 32),
            scan=self.scan if self.scan is not None else (4 if q else 20),
            candidates=self.candidates if self.candidates is not None else (2 if q else 4),
            channels=self.channels if self.channels is not None else (16 if q else None),
            split=self.split, notes=list(self.notes),
        )


@dataclass
class Sample:
    """One image the study looks at, with the model's output on it."""

    name: str
    image: torch.Tensor  # (3,H,W)
    label: torch.Tensor  # (H,W) int64
    scores: torch.Tensor  # (K,H,W)
    iou: float | None = None

    @property
    def prediction(self) -> torch.Tensor:
        return self.scores.argmax(0)

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.scores, 0)


@dataclass
class StudyContext:
    """The inputs of a study and the results its analyses share.

    Analyses read the model, the settings and the chosen images, add their figures and
    tables through :meth:`save_figure` and :meth:`save_table`, and sentences for the
    report through :meth:`note`. Shared explanations are methods computed once.
    """

    model: torch.nn.Module
    settings: StudySettings  # resolved
    out: Path
    device: torch.device
    checkpoint: str
    synthetic_spec: str
    synthetic: Sample
    real: str | None = None
    split: str | None = None  # of the real data
    real_samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- what the analyses read -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The model's class names."""
        return list(self.model.class_names)

    @property
    def cls(self) -> int:
        """Index of the class explained."""
        return self.names.index(class_name(self.settings.cls, self.names))

    @property
    def best(self) -> Sample | None:
        """The real image segmented best (road-surface IoU), or None without real data."""
        return self._ranked()[-1] if self.real_samples else None

    @property
    def worst(self) -> Sample | None:
        """The real image segmented worst; the same object as :attr:`best` for one image."""
        return self._ranked()[0] if self.real_samples else None

    def _ranked(self) -> list[Sample]:
        return sorted(self.real_samples, key=lambda s: s.iou if s.iou is not None else -1.0)

    @property
    def true_positives(self) -> torch.Tensor:
        """Bool (H,W): the synthetic image's true positives of the class."""
        s = self.synthetic
        return (s.prediction == self.cls) & (s.label == self.cls)

    def state(self):
        """The LRP forward pass on the synthetic image, shared by its explanations."""
        if "state" not in self._cache:
            from ..explain import forward_state

            self._cache["state"] = forward_state(self.model, self.synthetic.image,
                                                 self.settings.rule)
        return self._cache["state"]

    def main(self):
        """LRP of the class's true positives (score assignment), every layer kept (§9.4)."""
        if "main" not in self._cache:
            from ..explain import Concept, lrp

            concept = Concept.mask(self.cls, self.true_positives, assign="score")
            self._cache["main"] = lrp(self.model, self.synthetic.image, concept,
                                      rule=self.settings.rule, keep="all", state=self.state())
        return self._cache["main"]

    @property
    def main_concept(self) -> str:
        return (f"the {int(self.true_positives.sum())} true positives of "
                f"{self.names[self.cls]!r} (score assignment)")

    def pixels(self) -> tuple[int, int, int, int]:
        """Two true-positive pixels (ya, xa, yb, xb): nearest to and farthest from their
        centroid (§9.7 explains the first, §9.10 compares the two)."""
        return two_pixels(self.true_positives)

    def pixel_a(self):
        """LRP of the class score of the first pixel of :meth:`pixels`; its per-layer
        relevance is replaced by the feature-value profiles (``pixel_a_profiles``)."""
        if "pixel_a" not in self._cache:
            from .. import analysis as A
            from ..explain import Concept, lrp

            ya, xa, _, _ = self.pixels()
            e = lrp(self.model, self.synthetic.image, Concept.pixel(self.cls, ya, xa),
                    rule=self.settings.rule, keep="all", state=self.state())
            self._cache["pixel_a_profiles"] = A.layer_profiles(e.layers)
            e.layers = {}  # only the profiles are needed from here on (memory)
            self._cache["pixel_a"] = e
        return self._cache["pixel_a"]

    def pixel_a_profiles(self) -> dict[str, np.ndarray]:
        self.pixel_a()
        return self._cache["pixel_a_profiles"]

    def release(self, needed: set[str]) -> None:
        """Drop shared results no analysis left needs: ``"main_layers"`` keeps only
        ``--layer`` of the main explanation (the rest is large and no longer read)."""
        main = self._cache.get("main")
        if "main_layers" not in needed and main is not None and len(main.layers) > 1:
            layer = self.settings.layer
            main.layers = {layer: main.layers[layer]}

    # -- what the analyses write ------------------------------------------------------------
    def save_figure(self, key: str, fig, name: str) -> str:
        """Write matplotlib figure ``fig`` as ``out/name`` and list it under ``key``."""
        from ..viz.figures import save_png

        save_png(fig, self.out / name)
        self.figures[key] = name
        return name

    def save_table(self, key: str, name: str, header: Sequence[str],
                   rows: Sequence[Sequence[Any]]) -> str:
        """Write a CSV table (floats to 6 significant digits) and list it under ``key``."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        write_text(self.out / name, buf.getvalue())
        self.tables[key] = name
        return name

    def note(self, text: str) -> None:
        """A sentence for the report: a substitution or omission the study made."""
        self.notes.append(text)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        checkpoint: str | os.PathLike,
        out: str | os.PathLike,
        *,
        settings: StudySettings,
        synthetic: str | None = None,
        real: str | os.PathLike | None = None,
        real_kind: str = "auto",
        id_map: Any = None,
        images: Sequence[str | os.PathLike] = (),
        labels: Sequence[str | os.PathLike] = (),
        device: str | torch.device = "cpu",
        model: torch.nn.Module | None = None,
        before_work: Callable[[], object] | None = None,
    ) -> StudyContext:
        """Check the inputs, load the model and pick the images (see the module notes);
        ``before_work`` is called once every input is checked and read, before any
        explanation is computed."""
        cfg = settings.resolved()
        notes = list(cfg.notes)
        device = torch.device(device)
        meta: dict[str, Any] = {}
        if model is None:
            model, meta = _load(checkpoint)
        trained = training_size(meta)
        if cfg.size is None and trained is not None:
            # Images at the scale the model was trained on, unless asked otherwise: real
            # ones at the training width, with their own aspect ratio.
            cfg.size = trained
            if cfg.real_size is None and real is not None:
                probe = open_real(real, cfg.split, None, 1, real_kind, id_map)[0]
                cfg.real_size = dataset_at_training_scale(probe, trained)
            cfg.real_size = cfg.real_size or cfg.size
        model = model.to(device).eval()
        _check_names(model, cfg)
        check_rule(model, cfg.rule, device)
        if len(images) != len(labels):
            raise SegscopeError(f"{len(images)} --image but {len(labels)} --label: give one "
                                "label per image")
        real_data, split = None, None
        if real is not None:
            real_data, split, split_note = open_real(real, cfg.split, cfg.real_size, cfg.scan,
                                                     real_kind, id_map)
            if split_note:
                notes.append(split_note)
            if not getattr(real_data, "has_markings", True) and \
                    class_name(cfg.cls, list(model.class_names)) == "markings":
                raise SegscopeError(
                    f"the real data {real} has no markings class, so the study cannot pick "
                    "or score its real images by markings: use --class road (scored on the "
                    "road surface)")
        names = list(model.class_names)
        syn_spec = synthetic or default_synthetic(meta)
        syn, syn_note = _pick_synthetic(model, syn_spec, cfg, device, names)
        if syn_note:
            notes.append(syn_note)
        real_samples = _scan_real(model, real_data, images, labels, cfg, device)
        if not real_samples:
            notes.append("No real images were given (--real / --image): the synthetic-vs-"
                         "real comparison shows two pixels of the synthetic image only.")
        if before_work is not None:
            before_work()
        return cls(model=model, settings=cfg, out=Path(out), device=device,
                   checkpoint=str(checkpoint), synthetic_spec=syn_spec, synthetic=syn,
                   real=str(real) if real is not None else None, split=split,
                   real_samples=real_samples,
                   notes=notes)


# -- helpers ------------------------------------------------------------------------------------
def class_name(cls: str | int, names: list[str]) -> str:
    """The class name ``cls`` (a name or an index) stands for; an error when unknown."""
    from ..explain.concepts import resolve_class

    return names[resolve_class(cls, names)]


def check_rule(model: torch.nn.Module, rule: RuleLike, device: torch.device) -> None:
    """Parse ``rule`` against ``model`` now (a 32x32 forward pass), so that a bad rule is
    one line before the long work, not after it."""
    from ..explain import forward_state

    dtype = next(model.parameters()).dtype
    forward_state(model, torch.zeros(3, 32, 32, device=device, dtype=dtype), rule)


def open_real(real, split: str | None, size, limit, kind: str = "auto", id_map=None):
    """The real dataset of a study or demo, its split, and a note naming the split when it
    was chosen for the user (``val`` when present, else the only split there is).

    A named split is checked against the folder's; a folder with no images is an error.
    """
    from ..data.real import available_splits, default_split, open_dataset

    note = None
    root = Path(real).expanduser()
    if root.is_dir() and id_map is None:
        if split is None:
            split, note = default_split(root, kind)
        else:
            have = available_splits(root, kind)
            if have and split not in have:
                raise SegscopeError(f"{root} has no split {split!r}; it has "
                                    f"{', '.join(have)}")
    data = open_dataset(real, split=split, size=size, limit=limit, kind=kind, id_map=id_map)
    if len(data) == 0:
        raise SegscopeError(f"the real data {real} has no images")
    return data, split, note


def _load(checkpoint: str | os.PathLike):
    from ..checkpoint import load_model

    path = Path(checkpoint)
    if not path.is_file():
        raise SegscopeError(f"checkpoint not found: {path}")
    return load_model(path)


def _check_names(model, cfg: StudySettings) -> None:
    names = list(model.layer_names)
    for what, layer in (("--layer", cfg.layer), ("--compare-layer", cfg.compare_layer)):
        if layer not in names:
            raise SegscopeError(f"unknown layer {layer!r} for {what}; SegNet layers are "
                                f"{', '.join(names)}")
        if layer == "data":
            raise SegscopeError(f"{what} must be a hidden layer, not 'data'")
    class_name(cfg.cls, list(model.class_names))


def _train_config(meta: dict[str, Any]) -> dict[str, Any]:
    cfg = meta.get("train_config") if isinstance(meta, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def default_synthetic(meta: dict[str, Any]) -> str:
    """The checkpoint's synthetic validation data (``synthetic:`` scenes, or a ``segscope
    synth`` folder that is still there); else 8 scenes of its training preset with the
    next seed (never training scenes); else :data:`DEFAULT_SYNTHETIC`."""
    cfg = _train_config(meta)
    val, data = cfg.get("val_data"), cfg.get("data")
    if isinstance(val, str) and val.startswith("synthetic:"):
        return val
    if isinstance(val, str) and (Path(val).expanduser() / "manifest.json").is_file():
        return str(Path(val).expanduser().resolve())
    made = meta.get("data") if isinstance(meta, dict) else None
    if isinstance(made, dict) and made.get("preset"):  # what made the training data
        try:
            seed = int(made.get("seed", 0))
        except (TypeError, ValueError):
            seed = 0
        return f"synthetic:8:{made['preset']}:{seed + 1}"
    if isinstance(data, str) and data.startswith("synthetic:"):
        parts = data.split(":")
        preset = parts[2] if len(parts) > 2 and parts[2] else "narrow"
        try:
            seed = int(parts[3]) if len(parts) > 3 else 0
        except ValueError:
            return DEFAULT_SYNTHETIC
        return f"synthetic:8:{preset}:{seed + 1}"
    return DEFAULT_SYNTHETIC


@torch.no_grad()
def _run(model, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    return model(image.to(device)[None])[0].float().cpu()


def _road_iou(pred: torch.Tensor, label: torch.Tensor) -> float | None:
    """IoU of the road surface (road ∪ markings), ignoring 255; None if neither has any."""
    valid = label != 255
    p = ((pred == 1) | (pred == 2)) & valid
    t = ((label == 1) | (label == 2)) & valid
    union = int((p | t).sum())
    return int((p & t).sum()) / union if union else None


def _pick_synthetic(model, spec: str, cfg: StudySettings, device, names):
    from ..data.real import open_dataset

    c = names.index(class_name(cfg.cls, names))
    data = open_dataset(spec, size=cfg.size, limit=cfg.candidates)
    if len(data) == 0:
        raise SegscopeError(f"the synthetic data {spec} has no images")
    tried = []
    for i in range(len(data)):
        image, label = data[i]
        scores = _run(model, image, device)
        s = Sample(f"{spec} #{i}", image.float(), label.long(), scores)
        s.iou = _road_iou(s.prediction, s.label)
        n_tp = int(((s.prediction == c) & (s.label == c)).sum())
        tried.append((n_tp >= 2, s.iou if s.iou is not None else -1.0, -i, s))
    usable = [t for t in tried if t[0]]
    if not usable:
        raise NoTruePositives(
            f"the model predicts no true positives of class {names[c]!r} in the "
            f"{len(tried)} synthetic image(s) of {spec}: nothing to explain (try another "
            "--class, more images with --candidates, or a trained checkpoint)")
    best = max(usable, key=lambda t: (t[1], t[2]))[3]
    note = None
    if not tried[0][0]:
        note = (f"The first synthetic image has no true positives of {names[c]!r}; "
                f"the study explains {best.name} instead.")
    return best, note


def _scan_real(model, data, images, labels, cfg: StudySettings, device) -> list[Sample]:
    from ..data.io import read_label
    from ..data.real import resize_image, resize_label
    from ..predict import load_image

    samples: list[Sample] = []
    for img_path, lab_path in zip(images, labels, strict=True):
        image = load_image(img_path)
        label = torch.from_numpy(read_label(lab_path).astype(np.int64))
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise SegscopeError(f"label {lab_path} is {label.shape[0]}x{label.shape[1]}, the "
                                f"image {img_path} is {image.shape[1]}x{image.shape[2]}")
        bad = ~((label <= 2) | (label == 255))
        if bool(bad.any()):
            raise SegscopeError(f"label {lab_path} holds id {int(label[bad][0])}; --label files "
                                "use ROAD3 ids (0 background, 1 road, 2 markings, 255 ignore)")
        if cfg.real_size is not None:
            image = resize_image(image, cfg.real_size)
            label = resize_label(label, cfg.real_size)
        samples.append(Sample(Path(img_path).name, image, label, _run(model, image, device)))
    if data is not None:
        for i in range(len(data)):
            image, label = data[i]
            samples.append(Sample(_item_name(data, i), image.float(), label.long(),
                                  _run(model, image, device)))
    for s in samples:
        s.iou = _road_iou(s.prediction, s.label)
    return samples


def _item_name(data, i: int) -> str:
    files = getattr(data, "files", None)
    try:
        return Path(files[i][0]).name
    except (TypeError, IndexError, KeyError):
        return f"#{i}"


def two_pixels(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Two pixels of ``mask``: the one nearest its centroid, and the one farthest from it
    (§9.10 compares two distant pixels of one class)."""
    ys, xs = (t.numpy() for t in torch.nonzero(mask, as_tuple=True))
    cy, cx = ys.mean(), xs.mean()
    d = (ys - cy) ** 2 + (xs - cx) ** 2
    a, b = int(np.argmin(d)), int(np.argmax(d))
    return int(ys[a]), int(xs[a]), int(ys[b]), int(xs[b])
