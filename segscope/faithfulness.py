"""Which explanation to trust: faithfulness and sanity checks of segmentation explanations.

For every image and concept, each method (LRP with each rule, Grad-CAM, the gradient
family, and two floors: a random map and a Sobel edge map) explains the concept once.
Each map is then scored by region perturbation (:mod:`segscope.perturbation`: MoRF and
LeRF deletion, insertion, AOPC, ABPC) and, on the first images, by cascading model
randomisation (:mod:`segscope.sanity`). :func:`evaluate_faithfulness` returns the
tables; :func:`run_faithfulness` writes them as CSV/JSON, figures and a report.

Every number is per image first; the tables give the mean over images and a 95 %
percentile-bootstrap interval. AOPC and the areas are divided by |f(x)|, the concept's
unperturbed score, so that large and small concepts weigh alike (the raw values are in
the per-image tables).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._io import write_json, write_text
from .checkpoint import dataset_at_training_scale, training_size
from .errors import SegscopeError
from .explain import METHODS, Concept, attribute, parse_rules
from .perturbation import (
    ConceptScorer,
    Curves,
    check_patch,
    concept_weights,
    frozen_concept,
    parse_baseline,
    patch_grid,
    perturbation_curves,
    step_counts,
)
from .sanity import FLAG_SPEARMAN, cascading_randomisation, flag_unchanged

#: Maps that ignore the model, the floor every method must beat.
FLOORS = ("random", "edge")
#: Methods of the engine that make no map of the image (activation maximization).
NOT_MAPS = ("actmax",)
#: Everything :func:`evaluate_faithfulness` can score.
FAITHFULNESS_METHODS = (*[m for m in METHODS if m not in NOT_MAPS], *FLOORS)
DEFAULT_METHODS = ("lrp", "gradcam", "gradcam-rf", "sensitivity", "gradxinput", "guided",
                   "deconvnet", "random", "edge")
#: LRP rules scored by default: each rule everywhere, z^B at the pixels, and a composite.
DEFAULT_RULES = ("alpha1beta0", "alpha2beta1", "epsilon", "zplus", "gamma", "flat", "wsquare",
                 "first=zbox,default=alpha1beta0", "first=zbox,conv=gamma,default=epsilon")
#: Table columns: per-image summaries averaged over images (see Curves.summary).
METRICS = ("aopc_morf", "aopc_lerf", "abpc", "deletion", "insertion")
#: Whether a larger value of a metric is better.
HIGHER_IS_BETTER = {"aopc_morf": True, "aopc_lerf": False, "abpc": True, "deletion": False,
                    "insertion": True}
#: Bootstrap resamples of the 95 % intervals.
BOOTSTRAP = 2000


# -- methods ---------------------------------------------------------------------------------------
def method_labels(methods: Sequence[str], rules: Sequence[str]) -> list[tuple[str, str | None]]:
    """(method, rule) pairs, one per LRP rule; checks every name first."""
    if isinstance(methods, str):
        methods = [methods]
    if not methods:
        raise SegscopeError("no explanation method given")
    out: list[tuple[str, str | None]] = []
    for m in methods:
        m = str(m).strip().lower()
        if m in NOT_MAPS:
            raise SegscopeError(f"method {m!r} makes a prototype image, not a map of this image; "
                                "it cannot be scored by perturbation")
        if m.startswith("lrp:"):  # how the tables label it; the rule goes in --rule
            raise SegscopeError(f"method {m!r}: give LRP as 'lrp' and its rule with --rule "
                                f"(e.g. --methods lrp --rule {m[4:]})")
        if m not in FAITHFULNESS_METHODS:
            raise SegscopeError(f"unknown method {m!r}; choose from "
                                f"{', '.join(FAITHFULNESS_METHODS)}")
        if m == "lrp":
            if isinstance(rules, str) or not rules:
                raise SegscopeError("lrp needs at least one rule (a list of rule texts)")
            for r in rules:
                parse_rules(str(r))  # fails early on a bad rule
                out.append((m, str(r).strip()))
        else:
            out.append((m, None))
    return list(dict.fromkeys(out))


def label_of(method: str, rule: str | None) -> str:
    """The table's name of a method: ``gradcam``, ``lrp:alpha1beta0``, ..."""
    return method if rule is None else f"{method}:{rule}"


def explain_map(model: nn.Module, image: torch.Tensor, concept: Concept, method: str,
                rule: str | None = None, seed: int = 0) -> torch.Tensor:
    """(H,W) map of ``concept`` on ``image`` by one method (a floor ignores the model)."""
    if method == "random":
        g = torch.Generator().manual_seed(int(seed))
        return torch.rand(image.shape[-2:], generator=g, dtype=torch.float32)
    if method == "edge":
        return sobel(image)
    options = {"rule": rule} if method == "lrp" and rule is not None else {}
    return attribute(method, model, image, concept, **options).pixels.detach().float().cpu()


def sobel(image: torch.Tensor) -> torch.Tensor:
    """(H,W) Sobel gradient magnitude of the image's grey values (borders replicated)."""
    grey = image.detach().float().cpu().mean(0)[None, None]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    k = torch.stack([kx, kx.T])[:, None]
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k)[0]
    return torch.sqrt(g[0] ** 2 + g[1] ** 2)


# -- one image -------------------------------------------------------------------------------------
@dataclass
class ImageResult:
    """Everything measured on one image and concept.

    ``summaries[label]`` holds :meth:`Curves.summary`; ``sanity`` the Spearman and SSIM
    curves per label (None when the image had no sanity check).
    """

    name: str
    concept: str
    pixels: int
    curves: dict[str, Curves]
    summaries: dict[str, dict[str, float]]
    sanity: dict[str, Any] | None = None
    maps: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "concept": self.concept, "pixels": self.pixels,
            "summaries": self.summaries,
            "curves": {k: {"fraction": c.fraction.tolist(), "morf": c.morf.tolist(),
                           "lerf": c.lerf.tolist(), "insertion": c.insertion.tolist()}
                       for k, c in self.curves.items()},
            "sanity": self.sanity,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageResult:
        curves = {k: Curves(*(np.asarray(v[n], dtype=np.float64)
                              for n in ("fraction", "morf", "lerf", "insertion")))
                  for k, v in d["curves"].items()}
        return cls(d["name"], d["concept"], int(d["pixels"]), curves, d["summaries"],
                   d.get("sanity"))


def evaluate_image(
    model: nn.Module,
    image: torch.Tensor,
    concept: Concept,
    pairs: Sequence[tuple[str, str | None]],
    *,
    patch: int = 8,
    steps: int | None = None,
    regions: int | None = None,
    baseline: str = "mean",
    seed: int = 0,
    sanity: bool = False,
    sanity_steps: int | None = None,
    name: str = "image",
) -> ImageResult:
    """Explain ``concept`` once per method, then perturb and (optionally) randomise."""
    model = model.eval()
    frozen = frozen_concept(model, image, concept)
    weights, soft, selection = concept_weights(model, image, frozen)
    names = getattr(model, "class_names", None)
    maps: dict[str, torch.Tensor] = {}
    for method, rule in pairs:
        maps[label_of(method, rule)] = explain_map(model, image, frozen, method, rule, seed)
    scorer = ConceptScorer(model, weights, soft)
    curves = perturbation_curves(model, image, frozen, maps, patch=patch, steps=steps,
                                 regions=regions, baseline=baseline, seed=seed, scorer=scorer)
    result = ImageResult(name=name, concept=frozen.describe(names), pixels=int(selection.sum()),
                         curves=curves, summaries={k: c.summary() for k, c in curves.items()},
                         maps=maps)
    if sanity:
        by_label = {label_of(m, r): (m, r) for m, r in pairs}

        def explain(mdl: nn.Module, label: str) -> torch.Tensor:
            m, r = by_label[label]
            return explain_map(mdl, image, frozen, m, r, seed)

        s = cascading_randomisation(model, image, explain, list(by_label), steps=sanity_steps,
                                    seed=seed, reference=maps)
        result.sanity = {"layers": s.layers, "counts": s.counts,
                         "spearman": {k: v.tolist() for k, v in s.spearman.items()},
                         "ssim": {k: v.tolist() for k, v in s.ssim.items()}}
    return result


# -- aggregation -----------------------------------------------------------------------------------
def mean_interval(values: Sequence[float], seed: int = 0,
                  resamples: int = BOOTSTRAP) -> tuple[float, float, float, int]:
    """Mean and 95 % percentile-bootstrap interval over the finite values; and their count."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0]), 1
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi), int(v.size)


def aopc_table(results: Sequence[ImageResult], labels: Sequence[str],
               seed: int = 0) -> list[dict[str, Any]]:
    """One row per method: each metric's mean over images with its 95 % interval."""
    rows = []
    for label in labels:
        row: dict[str, Any] = {"method": label}
        for metric in METRICS:
            vals = [r.summaries[label][metric] for r in results if label in r.summaries]
            mean, lo, hi, n = mean_interval(vals, seed)
            row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
            row["images"] = n
        rows.append(row)
    return rows


def sanity_table(results: Sequence[ImageResult], labels: Sequence[str],
                 threshold: float = FLAG_SPEARMAN) -> dict[str, Any]:
    """Mean Spearman and SSIM per cascade step and method, and the flagged methods."""
    done = [r.sanity for r in results if r.sanity]
    if not done:
        return {"images": 0, "layers": [], "spearman": {}, "ssim": {}, "flagged": []}
    out: dict[str, Any] = {"images": len(done), "layers": done[0]["layers"],
                           "counts": done[0]["counts"], "spearman": {}, "ssim": {}}
    for key in ("spearman", "ssim"):
        for label in labels:
            arr = np.array([d[key][label] for d in done if label in d[key]], dtype=np.float64)
            with np.errstate(all="ignore"):
                out[key][label] = [float(np.nanmean(col)) if np.isfinite(col).any()
                                   else float("nan") for col in arr.T]
    out["flagged"] = flag_unchanged({k: np.array(v) for k, v in out["spearman"].items()},
                                    threshold)
    out["threshold"] = threshold
    return out


@dataclass
class FaithfulnessResult:
    """What :func:`evaluate_faithfulness` returns.

    Attributes
    ----------
    methods
        The method labels (``lrp:alpha1beta0``, ``gradcam``, ..., ``random``, ``edge``).
    images
        One :class:`ImageResult` per image.
    table
        :func:`aopc_table` rows: per method the mean and 95 % interval of each metric.
    sanity
        :func:`sanity_table`: mean similarity curves and the flagged methods.
    """

    methods: list[str]
    images: list[ImageResult]
    table: list[dict[str, Any]]
    sanity: dict[str, Any]


def evaluate_faithfulness(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    concepts: Concept | Sequence[Concept],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    rules: Sequence[str] = DEFAULT_RULES,
    patch: int = 8,
    steps: int | None = None,
    regions: int | None = None,
    baseline: str = "mean",
    sanity_images: int | None = 2,
    sanity_steps: int | None = 8,
    seed: int = 0,
    quiet: bool = True,
) -> FaithfulnessResult:
    """Score every method on every image by perturbation and sanity checks.

    Parameters
    ----------
    model
        A segmentation model (scores (N,K,H,W)), on the device it should run on.
    images
        (3,H,W) images in [0,1].
    concepts
        One :class:`Concept` for all images, or one per image (a true-positive concept
        is resolved on each image's own prediction).
    methods
        From :data:`FAITHFULNESS_METHODS`; ``lrp`` is scored once per rule.
    rules
        LRP rules as text (``epsilon:0.01``, ``first=zbox,default=alpha1beta0``).
    patch, steps, regions, baseline
        The perturbation (see :func:`segscope.perturbation.perturbation_curves`).
    sanity_images
        Images (the first ones) that also get the randomisation test (None: all, 0: none).
    sanity_steps
        Cascade points from the output layer down (None: one per layer).
    seed
        Seed of the random map, the noise baseline, the random weights and the bootstrap.
    quiet
        No progress bar.
    """
    pairs = method_labels(methods, rules)
    labels = [label_of(m, r) for m, r in pairs]
    parse_baseline(baseline)
    images = list(images)
    if not images:
        raise SegscopeError("no image given")
    if isinstance(concepts, Concept):
        concepts = [concepts] * len(images)
    concepts = list(concepts)
    if len(concepts) != len(images):
        raise SegscopeError(f"{len(concepts)} concepts for {len(images)} images: give one, "
                            "or one per image")
    for img in images:
        size = tuple(img.shape[-2:])
        patch = check_patch(patch, size)
        step_counts(int(patch_grid(size, patch).max()) + 1, steps, regions)
    n_sanity = len(images) if sanity_images is None else int(sanity_images)
    results = []
    from tqdm import tqdm

    for i, (img, c) in enumerate(tqdm(list(zip(images, concepts, strict=True)),
                                      desc="faithfulness", unit="image", leave=False,
                                      disable=quiet or not sys.stderr.isatty())):
        results.append(evaluate_image(
            model, img, c, pairs, patch=patch, steps=steps, regions=regions,
            baseline=baseline, seed=seed + i, sanity=i < n_sanity, sanity_steps=sanity_steps,
            name=f"#{i}"))
    return FaithfulnessResult(labels, results, aopc_table(results, labels, seed),
                              sanity_table(results, labels))


# -- the command: datasets in, a folder out --------------------------------------------------------
#: Concept kinds of the command line: prediction kinds, or a class's labelled / predicted pixels.
CONCEPT_KINDS = ("tp", "fp", "fn", "label", "predicted")


@dataclass
class RunSettings:
    """What ``segscope faithfulness`` runs with (recorded in the folder's mark)."""

    cls: str = "road"
    concept: str = "tp"
    assign: str = "score"
    methods: tuple[str, ...] = DEFAULT_METHODS
    rules: tuple[str, ...] = DEFAULT_RULES
    patch: int = 8
    steps: int | None = None
    regions: int | None = None
    baseline: str = "mean"
    images: int = 4
    sanity_images: int = 2
    sanity_steps: int | None = 8
    size: tuple[int, int] | None = None
    seed: int = 0

    def as_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["methods"], d["rules"] = list(self.methods), list(self.rules)
        d["size"] = list(self.size) if self.size else None
        return d


def cli_concept(model: nn.Module, image: torch.Tensor, label: torch.Tensor, kind: str, cls: int,
                assign: str) -> Concept | None:
    """The command line's concept on one image as a fixed mask; None when it is empty.

    ``tp``/``fp``/``fn``: the true/false positives/negatives of class ``cls`` (label
    pixels 255 ignored); ``label``: its labelled pixels; ``predicted``: its predicted ones.
    """
    if kind not in CONCEPT_KINDS:
        raise SegscopeError(f"unknown concept kind {kind!r}; choose one of "
                            f"{', '.join(CONCEPT_KINDS)}")
    device = next(model.parameters()).device
    with torch.inference_mode():
        pred = model(image[None].to(device))[0].argmax(0).cpu()
    valid = label != 255
    is_pred, is_label = pred == cls, label == cls
    mask = {"tp": is_pred & is_label, "fp": is_pred & ~is_label & valid,
            "fn": ~is_pred & is_label, "label": is_label, "predicted": is_pred}[kind]
    return Concept.mask(cls, mask, assign=assign) if bool(mask.any()) else None


def run_faithfulness(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str,
    real: str | os.PathLike | None = None,
    data_kind: str = "auto",
    id_map: Any = None,
    settings: RunSettings | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the faithfulness evaluation on ``data`` (and ``real``) and write ``out``.

    Writes ``summary.json``, ``aopc.csv`` (the table per image set), ``per_image.csv``,
    ``curves.csv``, ``sanity.csv``, ``curves.png``, ``sanity.png``, ``maps.png`` and
    ``report.html``; each finished image is kept in ``images/`` so that ``resume`` goes on
    where an interrupted run stopped.
    """
    from .checkpoint import load_model
    from .data.real import open_dataset
    from .explain.concepts import resolve_class
    from .outdir import changed_settings, claim_output, read_marker

    cfg = settings or RunSettings()
    pairs = method_labels(cfg.methods, cfg.rules)
    labels = [label_of(m, r) for m, r in pairs]
    parse_baseline(cfg.baseline)
    if cfg.concept not in CONCEPT_KINDS:
        raise SegscopeError(f"unknown concept kind {cfg.concept!r}; choose one of "
                            f"{', '.join(CONCEPT_KINDS)}")
    for what, v in (("--images", cfg.images), ("--steps", cfg.steps),
                    ("--sanity-steps", cfg.sanity_steps), ("--regions", cfg.regions)):
        if v is not None and v < 1:
            raise SegscopeError(f"{what} must be at least 1, got {v}")
    if cfg.sanity_images < 0:
        raise SegscopeError(f"--sanity-images must be 0 or more, got {cfg.sanity_images}")
    from .training import MAX_SEED

    if not 0 <= cfg.seed <= MAX_SEED:  # each image draws with seed + its index (numpy, torch)
        raise SegscopeError(f"--seed must be in [0, 2**63 - 1], got {cfg.seed}")
    path = Path(checkpoint)
    if not path.is_file():
        raise SegscopeError(f"checkpoint not found: {path}")
    device = torch.device(device)
    model, meta = load_model(path, map_location=device)
    model = model.to(device).eval()
    names = list(model.class_names)
    c = resolve_class(cfg.cls, names)
    size = cfg.size
    if size is None:
        size = training_size(meta)
    sets = [("data", data)] + ([("real", real)] if real is not None else [])
    opened = []
    for key, spec in sets:
        # --data-kind/--id-map describe the dataset folders given (a synthetic spec has
        # its own labels)
        synthetic = str(spec).startswith("synthetic")
        ds = open_dataset(spec, size=size if key == "data" else _real_size(size, spec),
                          limit=cfg.images, kind="auto" if synthetic else data_kind,
                          id_map=None if synthetic else id_map)
        if len(ds) == 0:
            raise SegscopeError(f"no images in {spec}")
        opened.append((key, str(spec), ds))
    # Check the perturbation settings on the first image before any long work.
    for _, _, ds in opened:
        h, w = ds[0][0].shape[-2:]
        p = check_patch(cfg.patch, (h, w))
        step_counts(int(patch_grid((h, w), p).max()) + 1, cfg.steps, cfg.regions)

    settings_json = {**cfg.as_json(), "checkpoint": str(checkpoint), "data": str(data),
                     "real": None if real is None else str(real)}
    folder = Path(out)
    if resume:
        mark = read_marker(folder) or {}
        now = json.loads(json.dumps(settings_json))
        if mark.get("command") == "faithfulness" and mark.get("settings") \
                and mark.get("settings") != now:
            changed = ", ".join(changed_settings(mark["settings"], now))
            raise SegscopeError(f"--resume: {folder} was made with other settings ({changed}); "
                                "use the same options, or --overwrite")
    inputs = [checkpoint, *[spec for _, spec, _ in opened if Path(spec).exists()]]
    folder = claim_output(out, "faithfulness", resume=resume, overwrite=overwrite,
                          settings=settings_json, inputs=inputs)
    (folder / "images").mkdir(exist_ok=True)
    say = log or (lambda _m: None)
    notes: list[str] = []
    by_set: dict[str, list[ImageResult]] = {}
    shown: tuple[torch.Tensor, Concept, ImageResult] | None = None  # for maps.png
    n_sanity_done = 0
    from tqdm import tqdm

    total = sum(len(ds) for _, _, ds in opened)
    bar = tqdm(total=total, desc="faithfulness", unit="image", leave=False,
               disable=quiet or not sys.stderr.isatty())
    for key, _spec, ds in opened:
        results = by_set.setdefault(key, [])
        for i in range(len(ds)):
            bar.update()
            item = folder / "images" / f"{key}-{i:04d}.json"
            image, label = ds[i]
            image, label = image.float(), label.long()
            name = _item_name(ds, i)
            if item.is_file():  # done by the run being resumed
                saved = json.loads(item.read_text(encoding="utf-8"))
                if saved.get("skipped"):
                    notes.append(saved["skipped"])
                    continue
                r = ImageResult.from_json(saved)
            else:
                concept = cli_concept(model, image, label, cfg.concept, c, cfg.assign)
                if concept is None:
                    msg = (f"{key} image {name}: the concept ({cfg.concept} of {names[c]!r}) "
                           "selects no pixels; left out")
                    notes.append(msg)
                    write_json(item, {"skipped": msg})
                    continue
                r = evaluate_image(model, image, concept, pairs, patch=cfg.patch,
                                   steps=cfg.steps, regions=cfg.regions, baseline=cfg.baseline,
                                   seed=cfg.seed + i,
                                   sanity=n_sanity_done < cfg.sanity_images,
                                   sanity_steps=cfg.sanity_steps, name=name)
                write_json(item, r.to_json())
                say(f"{key} {name}: {r.pixels} concept pixels, done")
            results.append(r)
            n_sanity_done += bool(r.sanity)
            if shown is None:
                shown = (image, cli_concept(model, image, label, cfg.concept, c, cfg.assign), r)
    bar.close()
    if not any(by_set.values()):
        raise SegscopeError(f"the concept ({cfg.concept} of {names[c]!r}) selects no pixels in "
                            f"any of the {total} images: nothing to evaluate")
    maps = None
    if shown is not None:
        image, concept, r = shown
        maps = r.maps or {label_of(m, rl): explain_map(model, image, concept, m, rl, cfg.seed)
                          for m, rl in pairs}
        maps = (image, maps, r)
    return _write_outputs(folder, by_set, labels, cfg, settings_json, notes, names[c], maps,
                          opened)


def _real_size(size: tuple[int, int] | None, spec: Any) -> tuple[int, int] | None:
    """Real images at the training width, their own aspect ratio (as the demo scores them)."""
    if size is None:
        return None
    from .data.real import open_dataset

    return dataset_at_training_scale(open_dataset(spec, limit=1), size)


def _item_name(data: Any, i: int) -> str:
    files = getattr(data, "files", None)
    try:
        return Path(files[i][0]).name
    except (TypeError, IndexError, KeyError):
        return f"#{i}"


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def _write_outputs(folder: Path, by_set: dict[str, list[ImageResult]], labels: list[str],
                   cfg: RunSettings, settings_json: dict[str, Any], notes: list[str],
                   class_name: str, maps, opened) -> dict[str, Any]:
    from .viz import faithfulness as V
    from .viz.figures import save_png

    tables = {key: aopc_table(rs, labels, cfg.seed) for key, rs in by_set.items() if rs}
    all_results = [r for rs in by_set.values() for r in rs]
    sanity = sanity_table(all_results, labels)
    header = ["set", "method", "images"]
    for m in METRICS:
        header += [m, f"{m}_lo", f"{m}_hi"]
    write_text(folder / "aopc.csv", _csv_text(header, [
        [key, *[row[h] for h in header[1:]]] for key, rows in tables.items() for row in rows]))
    raw = ["score", "baseline_score", *METRICS, *[f"{m}_raw" for m in METRICS]]
    write_text(folder / "per_image.csv", _csv_text(["set", "image", "pixels", "method", *raw], [
        [key, r.name, r.pixels, label, *[r.summaries[label][k] for k in raw]]
        for key, rs in by_set.items() for r in rs for label in labels]))
    write_text(folder / "curves.csv", _csv_text(
        ["set", "image", "method", "step", "fraction", "morf", "lerf", "insertion"], [
            [key, r.name, label, k, float(c.fraction[k]), float(c.morf[k]), float(c.lerf[k]),
             float(c.insertion[k])]
            for key, rs in by_set.items() for r in rs for label, c in r.curves.items()
            for k in range(len(c.fraction))]))
    if sanity["images"]:
        write_text(folder / "sanity.csv", _csv_text(
            ["method", "step", "layers_randomised", "last_layer", "spearman", "ssim"], [
                [label, k, sanity["counts"][k], sanity["layers"][k],
                 sanity["spearman"][label][k], sanity["ssim"][label][k]]
                for label in labels for k in range(len(sanity["layers"]))]))
    figures = {}
    by_set_curves = {key: mean_curves(rs, labels) for key, rs in by_set.items() if rs}
    save_png(V.curves_figure(by_set_curves, cfg.baseline, cfg.patch), folder / "curves.png")
    figures["curves"] = "curves.png"
    if sanity["images"]:
        save_png(V.sanity_figure(sanity), folder / "sanity.png")
        figures["sanity"] = "sanity.png"
    if maps is not None:
        image, by_label, r = maps
        save_png(V.maps_figure(image, by_label, r.name, r.concept), folder / "maps.png")
        figures["maps"] = "maps.png"
    summary = {
        "settings": settings_json,
        "class": class_name,
        "sets": {key: {"source": spec, "images": len(by_set.get(key, []))}
                 for key, spec, _ in opened},
        "methods": labels,
        "table": tables,
        "best": {key: _best(rows) for key, rows in tables.items()},
        "sanity": sanity,
        "notes": notes,
        "figures": figures,
        "tables": ["aopc.csv", "per_image.csv", "curves.csv",
                   *(["sanity.csv"] if sanity["images"] else [])],
    }
    write_json(folder / "summary.json", summary)
    from .faithfulness_report import write_faithfulness_report

    summary["report"] = str(write_faithfulness_report(folder))
    return summary


def mean_curves(results: Sequence[ImageResult], labels: Sequence[str]) -> dict[str, Any]:
    """Per method: the mean curves over images, each divided by its image's |f(x)|."""
    out = {}
    for label in labels:
        cs = [r.curves[label] for r in results if label in r.curves and r.curves[label].score]
        if not cs:
            continue
        out[label] = {"fraction": cs[0].fraction}
        for k in ("morf", "lerf", "insertion"):
            out[label][k] = np.mean([getattr(c, k) / abs(c.score) for c in cs], axis=0)
    return out


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The method with the best mean of each metric, floors included."""
    out = {}
    for m in METRICS:
        finite = [r for r in rows if np.isfinite(r[m])]
        if finite:
            pick = (max if HIGHER_IS_BETTER[m] else min)(finite, key=lambda r: r[m])
            out[m] = pick["method"]
    return out
