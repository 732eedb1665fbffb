"""``segscope diagnose``: which real images will the model get wrong, and what shifted.

:func:`diagnose` fingerprints a synthetic reference set and a real set
(:mod:`segscope.fingerprint`), fits the label-free failure score on the synthetic
fingerprints only (:mod:`segscope.failure`), and — where the real images have labels —
measures how well the score and every baseline rank the images by IoU
(:mod:`segscope.stats`). It also says which layers shifted and which channels moved most
between synthetic and badly segmented real images (§9.10 over a whole dataset).

Images are processed in chunks of :data:`CHUNK`; with ``cache_dir`` each chunk's
fingerprints are written there, so an interrupted run continues where it stopped. Under
``torchrun`` the chunks are shared out over the processes and gathered, so every process
ends with the same rows as a one-process run.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data.classes import MARKINGS
from .errors import SegscopeError
from .failure import (
    DIRECTION,
    FAILURE_SCORE,
    FailureModel,
    Reference,
    fit_failure_model,
    fit_reference,
    layer_divergence,
    score_images,
)
from .fingerprint import DIAGNOSE_RULE, Fingerprints, Layout, image_fingerprints, layout_of

#: Images per cached chunk (and per unit of work shared out under torchrun).
CHUNK = 16
#: Scores in the order of the correlation table: the failure score, its variants, baselines.
SCORES = ("failure_score", "fv_js", "fv_js_z", "fv_knn", "fv_z", "fv_conflict", "max_softmax",
          "entropy", "atc", "act_js", "colour_js", "share_shift")
#: The baselines (label-free signals that do not use relevance).
BASELINES = ("max_softmax", "entropy", "atc", "act_js", "colour_js", "share_shift")
#: Channels reported as moving most between synthetic and badly segmented real images.
TOP_CHANNELS = 6
#: The most of them one figure shows (a pair of feature-separation maps each).
MAX_TOP = 24
#: Calibration sets for a fitted failure score (``--calibration presets``): 40 labelled
#: scenes of each preset, with a seed no training or reference default uses. Opt-in: on
#: CamVid val the fitted score was less robust than the plain distance (docs/diagnose.md).
PRESET_CALIBRATION = ("synthetic:40:narrow:1001", "synthetic:40:urban:1001",
                      "synthetic:40:randomized:1001")


# -- the images --------------------------------------------------------------------------------
@dataclasses.dataclass
class Source:
    """One set of images: where they come from and how to read them.

    ``dataset[i]`` gives ``(image (3,H,W), label (H,W) or None)``; ``names[i]`` is the
    file name (or scene number), ``paths[i]`` the absolute file path
    (``synthetic:<i>`` for generated scenes).
    """

    what: str  # "synthetic" or "real"
    spec: str
    dataset: Dataset
    names: list[str]
    paths: list[str]
    has_labels: bool
    road_surface: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


class _Unlabelled(Dataset):
    """Image files without labels: (image, None)."""

    def __init__(self, files: Sequence[Path], size: tuple[int, int] | None) -> None:
        self.files, self.size = list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from .predict import load_image

        return load_image(self.files[i], self.size), None


class _Labelled(Dataset):
    """A labelled dataset, with labels dropped when ``use_labels`` is False."""

    def __init__(self, data: Dataset, use_labels: bool) -> None:
        self.data, self.use_labels = data, use_labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        image, label = self.data[i]
        return image.float(), (label.long() if self.use_labels else None)


def open_synthetic(spec: str, size: tuple[int, int] | None = None,
                   limit: int | None = None, option: str = "--synthetic") -> Source:
    """The synthetic reference: ``synthetic:N[:PRESET[:SEED]]`` or a ``segscope synth``
    folder. Always labelled (the labels give ATC its synthetic accuracy). ``option``
    names the command-line option in error messages."""
    from .data.real import LabelFolder, open_dataset

    text = str(spec)
    if not text.startswith("synthetic:"):
        root = Path(text).expanduser()
        if not root.is_dir():
            raise SegscopeError(f"{option} {text}: not a folder nor synthetic:N[:PRESET[:SEED]]")
        if not (root / "manifest.json").is_file():
            raise SegscopeError(f"{option} {text} is not a segscope synth folder (it has no "
                                "manifest.json); use synthetic:N[:PRESET[:SEED]] or such a folder")
        data = LabelFolder.synth(root, size=size, limit=limit)
        text = str(root.resolve())  # recorded as an absolute path: it names the folder anywhere
    else:
        data = open_dataset(text, size=size, limit=limit)
    n = len(data)
    if n < 2:
        raise SegscopeError(f"{option} {text} has {n} image(s); at least 2 are needed to "
                            "say how synthetic images vary")
    files = getattr(data, "files", None)
    names = [Path(files[i][0]).name for i in range(n)] if files else \
        [f"{i:06d}" for i in range(n)]
    return Source("synthetic", text, _Labelled(data, True), names,
                  [f"synthetic:{i}" for i in range(n)], True)


def open_real(path: str | os.PathLike, split: str | None = None, labels: bool | None = None,
              kind: str = "auto", id_map: Any = None, size: tuple[int, int] | None = None,
              limit: int | None = None) -> Source:
    """The real images: a labelled dataset folder (CamVid, Cityscapes, ..., see
    :func:`segscope.data.open_dataset`) or a plain folder of images.

    ``labels``: True requires labels, False ignores them, None uses them when present.
    """
    from .data.real import LabelFolder, open_dataset
    from .predict import find_images

    root = Path(path).expanduser()
    if not root.exists():
        raise SegscopeError(f"real folder not found: {root}")
    try:
        data = open_dataset(root, split=split, size=size, limit=limit, kind=kind, id_map=id_map)
    except SegscopeError as exc:
        if labels:
            raise SegscopeError(f"--labels: the real folder {root} has no labels a dataset "
                                f"reader understands ({exc})") from None
        if kind != "auto" or split is not None or id_map is not None:
            raise
        data = None  # a plain folder of images
    if data is not None:
        if split is not None and isinstance(data, LabelFolder):
            raise SegscopeError(f"{root} has no splits: drop --split {split}")
        n = len(data)
        if n == 0:
            raise SegscopeError(f"no images in the real data {root}")
        files = data.files
        has_markings = getattr(data, "has_markings", True)
        use = labels is not False
        return Source("real", str(root), _Labelled(data, use),
                      [Path(files[i][0]).name for i in range(n)],
                      [str(Path(files[i][0]).resolve()) for i in range(n)], use,
                      road_surface=not has_markings,
                      info={"root": str(root.resolve()), "split": split,
                            "kind": type(data).__name__, "has_markings": has_markings})
    files = find_images([root])
    if limit is not None:
        files = files[:limit]
    return Source("real", str(root), _Unlabelled(files, size), [f.name for f in files],
                  [str(f.resolve()) for f in files], False,
                  info={"root": str(root.resolve()), "split": split, "kind": "images"})


def training_sizes(meta: Any, real: str | os.PathLike, split: str | None = None,
                   kind: str = "auto", id_map: Any = None
                   ) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(synthetic size, real size) that show the model images at the scale it was
    trained on: real images at the training width with the first real image's aspect
    ratio (as the demo scores them), and synthetic scenes rendered at that same size, so
    that no fingerprint distance comes from a difference in image shape. (None, None)
    when the checkpoint metadata ``meta`` does not say how it was trained."""
    from .checkpoint import dataset_at_training_scale, training_size

    trained = training_size(meta)
    if trained is None:
        return None, None
    probe = open_real(real, split=split, kind=kind, id_map=id_map, limit=1)
    scaled = dataset_at_training_scale(probe.dataset, trained)
    return scaled, scaled


def _collate(batch):
    return batch


def _same_size(batch: list) -> list[list]:
    """``batch`` of (image, label) cut into runs of images of one size, in order."""
    runs: list[list] = []
    for item in batch:
        if runs and runs[-1][0][0].shape == item[0].shape:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


# -- fingerprints, chunked, cached, shared out ------------------------------------------------
def _world() -> tuple[int, int]:
    import torch.distributed as dist

    # WORLD_SIZE=1 inside a torchrun process: a caller that gives each process work of
    # its own (segscope ablate: one setting each) runs this on its own
    if dist.is_available() and dist.is_initialized() and os.environ.get("WORLD_SIZE") != "1":
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _chunk_path(cache_dir: Path, what: str, c: int) -> Path:
    return cache_dir / f"{what}-{c:05d}.npz"


def _load_chunk(path: Path, n: int, layout: Layout) -> Fingerprints | None:
    try:
        with np.load(path) as z:
            fp = Fingerprints(**{k: z[k] for k in Fingerprints.ARRAYS}, layout=layout)
    except (OSError, KeyError, ValueError):
        return None
    ok = len(fp) == n and fp.fv.shape[1] == sum(layout.channels) \
        and fp.act.shape[1] == sum(layout.act_channels)
    return fp if ok else None


def _save_chunk(path: Path, fp: Fingerprints) -> None:
    from ._io import write_atomic

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **fp.arrays())

    write_atomic(path, write)


def fingerprint_source(
    model: nn.Module,
    source: Source,
    cls: int,
    *,
    assign: str = "score",
    rule: str = DIAGNOSE_RULE,
    batch_size: int = 4,
    workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = True,
    layout: Layout | None = None,
    graph=None,
    chunk: int = CHUNK,
) -> Fingerprints:
    """Fingerprints of every image of ``source``, in order.

    Images are read in batches of ``batch_size`` (``workers`` DataLoader processes
    prefetch them); the images of a batch that share a size are fingerprinted together,
    in one forward pass and one LRP sweep (:func:`image_fingerprints`). With
    ``cache_dir``, each chunk of ``chunk`` images is written there and reused when
    present. Under ``torch.distributed`` each process does every world-th chunk and the
    chunks are gathered, so all processes return the same rows.
    """
    from tqdm import tqdm

    from .explain.graph import build_graph

    n = len(source)
    rank, world = _world()
    graph = graph if graph is not None else build_graph(model)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    if chunk < 1:
        raise SegscopeError(f"chunk must be at least 1, got {chunk}")
    n_chunks = -(-n // chunk)
    mine = [c for c in range(n_chunks) if c % world == rank]
    done: dict[int, Fingerprints] = {}
    todo = []
    if layout is None:
        first, _ = source.dataset[0]
        layout = layout_of(model, tuple(first.shape[-2:]), graph=graph)
    for c in mine:
        lo, hi = c * chunk, min(n, (c + 1) * chunk)
        fp = _load_chunk(_chunk_path(cache, source.what, c), hi - lo, layout) \
            if cache is not None else None
        if fp is not None:
            done[c] = fp
        else:
            todo.append(c)
    indices = [i for c in todo for i in range(c * chunk, min(n, (c + 1) * chunk))]
    bar = tqdm(total=len(indices), desc=f"{source.what} fingerprints", unit="img",
               disable=quiet or rank != 0 or not sys.stderr.isatty(), leave=False)
    # batches never straddle two chunks: a chunk's rows then come out of the same
    # batches (the same float rounding) whichever process does it, resumed or not
    per_batch, batches, pos = max(1, batch_size), [], 0
    for c in todo:
        count = min(n, (c + 1) * chunk) - c * chunk
        batches += [list(range(pos + b, pos + min(count, b + per_batch)))
                    for b in range(0, count, per_batch)]
        pos += count
    loader = DataLoader(torch.utils.data.Subset(source.dataset, indices),
                        batch_sampler=batches, num_workers=workers, collate_fn=_collate)
    rows: list[Fingerprints] = []
    pos = 0
    try:
        for batch in loader:
            for part in _same_size(batch):
                fps = image_fingerprints(
                    model, [image for image, _ in part], cls, assign=assign, rule=rule,
                    labels=[label for _, label in part], road_surface=source.road_surface,
                    graph=graph, layout=layout)
                for b in range(len(part)):
                    rows.append(fps.take([b]))
                    pos += 1
                    bar.update(1)
                    c = indices[pos - 1] // chunk
                    end = min(n, (c + 1) * chunk)
                    if indices[pos - 1] == end - 1:  # the chunk is complete
                        done[c] = Fingerprints.concat(rows, layout)
                        rows = []
                        if cache is not None:
                            _save_chunk(_chunk_path(cache, source.what, c), done[c])
    finally:
        bar.close()
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, {c: fp.arrays() for c, fp in done.items()})
        done = {c: Fingerprints(**arrs, layout=layout)
                for part in gathered for c, arrs in part.items()}
    return Fingerprints.concat([done[c] for c in range(n_chunks)], layout)


# -- the diagnosis -----------------------------------------------------------------------------
@dataclasses.dataclass
class Diagnosis:
    """The result of :func:`diagnose`.

    Attributes
    ----------
    rows
        One dict per image (synthetic first, then real): ``dataset``, ``image``, ``path``,
        ``failure_score``, every score of :data:`SCORES`, ``share_<class>``,
        ``empty_concept``, ``iou`` (NaN where unknown).
    correlations
        One dict per score (real images with an IoU): ``score``, ``kind``
        (failure score / variant / baseline), Spearman and Kendall with IoU and their 95 %
        bootstrap intervals, oriented so that +1 means "ranks the images exactly by how
        badly they are segmented". Empty without real labels.
    layer_shift
        {layer: {real, best, worst, synthetic}}: mean JS divergence of each group's fv
        profiles from the mean synthetic profile (``synthetic``: of synthetic images from
        the mean of the others).
    top_channels
        The channels whose feature values move most between synthetic and badly segmented
        (or, without labels, most likely failing) real images.
    """

    rows: list[dict[str, Any]]
    correlations: list[dict[str, Any]]
    layer_shift: dict[str, dict[str, float]]
    top_channels: list[dict[str, Any]]
    reference: Reference
    synthetic: Fingerprints
    real: Fingerprints
    scores: dict[str, dict[str, np.ndarray]]
    groups: dict[str, Any]
    settings: dict[str, Any]
    sources: dict[str, Any]
    class_names: tuple[str, ...]
    failure_model: FailureModel | None = None
    calibration_note: str | None = None

    @property
    def winner(self) -> dict[str, Any] | None:
        """The score with the highest Spearman agreement with IoU (None without labels)."""
        rows = [r for r in self.correlations if np.isfinite(r["spearman"])]
        return max(rows, key=lambda r: r["spearman"]) if rows else None

    def summary(self) -> dict[str, Any]:
        """Everything but the per-image rows, JSON-ready (``diagnosis.json``)."""
        best_base = [r for r in self.correlations if r["kind"] == "baseline"
                     and np.isfinite(r["spearman"])]
        fs = next((r for r in self.correlations if r["score"] == "failure_score"), None)
        verdict = None
        if fs is not None and best_base:
            b = max(best_base, key=lambda r: r["spearman"])
            verdict = {"failure_score": fs["spearman"], "best_baseline": b["score"],
                       "best_baseline_spearman": b["spearman"],
                       "relevance_wins": bool(fs["spearman"] >= b["spearman"])}
        return {
            "settings": self.settings, "sources": self.sources,
            "failure_score": self.settings.get("failure_score", FAILURE_SCORE),
            "directions": DIRECTION,
            "images": {"synthetic": len(self.synthetic), "real": len(self.real),
                       "real_empty_concept": int(self.real.scalar("empty").sum()),
                       "synthetic_empty_concept": int(self.synthetic.scalar("empty").sum())},
            "reference": {"atc_threshold": self.reference.atc_threshold,
                          "synthetic_pixel_accuracy": self.reference.accuracy},
            "correlations": self.correlations, "verdict": verdict,
            "winner": self.winner["score"] if self.winner else None,
            "layer_shift": self.layer_shift, "top_channels": self.top_channels,
            "groups": {k: v for k, v in self.groups.items() if k != "index"},
            "failure_model": self.failure_model.as_dict() if self.failure_model else
            {"skipped": self.calibration_note or "no calibration set given"},
        }


def _class_index(model: nn.Module, cls: str | int) -> tuple[int, tuple[str, ...]]:
    from .explain.concepts import resolve_class

    names = tuple(getattr(model, "class_names", ()) or ())
    if not names:
        raise SegscopeError("the model has no class names")
    return resolve_class(cls, names), names


def check_settings(model: nn.Module, cls: str | int, assign: str, rule: str,
                   real: Source | None = None, labels: bool | None = None) -> int:
    """Check the concept settings before any long work; the class index."""
    from .explain.concepts import ASSIGNMENTS

    c, names = _class_index(model, cls)
    if assign not in ASSIGNMENTS:
        raise SegscopeError(
            f"unknown assignment {assign!r}; choose one of {', '.join(ASSIGNMENTS)}")
    from .explain import forward_state

    forward_state(model, torch.zeros(3, 32, 32), rule)  # a bad rule fails here, at once
    if real is not None and real.has_labels and real.road_surface and c == MARKINGS \
            and names[c] == "markings":
        raise SegscopeError(
            f"the real data {real.spec} has no markings class, so markings IoU cannot be "
            "measured: use --class road (scored on the road surface) or --no-labels")
    return c


def diagnose(
    model: nn.Module | str | os.PathLike,
    synthetic: str | Source,
    real: str | os.PathLike | Source,
    *,
    cls: str | int = "road",
    assign: str = "score",
    rule: str = DIAGNOSE_RULE,
    labels: bool | None = None,
    split: str | None = None,
    data_kind: str = "auto",
    id_map: Any = None,
    size: tuple[int, int] | None = None,
    real_size: tuple[int, int] | None = None,
    limit: int | None = None,
    synthetic_limit: int | None = None,
    calibration: Sequence[str | Source] | None = None,
    batch_size: int = 4,
    workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    n_boot: int = 1000,
    top: int = TOP_CHANNELS,
    quiet: bool = True,
    chunk: int = CHUNK,
) -> Diagnosis:
    """Diagnose ``model`` on real images against a synthetic reference.

    Parameters
    ----------
    model
        A SegNet (or any model :func:`segscope.explain.lrp` accepts), in eval mode, on the
        device to use; or the path of a checkpoint (loaded on the CPU).
    synthetic
        ``synthetic:N[:PRESET[:SEED]]``, a ``segscope synth`` folder, or a :class:`Source`.
    real
        A real dataset folder, a folder of images, or a :class:`Source`.
    cls, assign, rule
        The concept: the pixels predicted as ``cls``, initial relevance ``assign``, LRP
        ``rule`` (text, per-layer composites included).
    labels
        True: real labels required; False: ignored; None: used when present.
    split, data_kind, id_map
        How to read the real dataset (as ``segscope evaluate``).
    size, real_size
        Resize the synthetic images to ``size`` and the real ones to ``real_size``
        (default: ``size``), (H, W). When both are None and ``model`` is a checkpoint
        path, the images are shown at the scale the model was trained on
        (:func:`training_sizes`); else each image keeps its size.
    limit, synthetic_limit
        Use only the first N real / synthetic images.
    calibration
        Labelled synthetic sets (specs, folders or :class:`Source`; e.g.
        :data:`PRESET_CALIBRATION`) to fit the failure score on: it is then ``1 -`` the
        IoU a :class:`~segscope.failure.FailureModel` predicts from the fingerprint.
        None or empty (the default): the failure score is the relevance fingerprint's
        distance :data:`~segscope.failure.FAILURE_SCORE`.
    batch_size, workers
        Images per batch (read together, fingerprinted in one forward pass and one LRP
        sweep) and loader processes.
    cache_dir
        Keep each chunk's fingerprints there and reuse them (resume).
    n_boot
        Bootstrap resamples of the correlation intervals.
    top
        Number of top channels reported.
    quiet
        No progress bars.
    chunk
        Images per cached chunk and per unit of work under torchrun.

    Returns
    -------
    Diagnosis
    """
    real_size = real_size or size
    if not 0 <= top <= MAX_TOP:
        raise SegscopeError(f"top must be in [0, {MAX_TOP}] channels, got {top}")
    if n_boot < 0:
        raise SegscopeError(f"n_boot must be 0 (no intervals) or more, got {n_boot}")
    if isinstance(model, str | os.PathLike):
        from .checkpoint import load_model

        model, meta = load_model(model)
        model = model.eval()
        if size is None and real_size is None and not isinstance(real, Source):
            size, real_size = training_sizes(meta, real, split, data_kind, id_map)
    syn = synthetic if isinstance(synthetic, Source) else \
        open_synthetic(synthetic, size=size, limit=synthetic_limit)
    rea = real if isinstance(real, Source) else \
        open_real(real, split=split, labels=labels, kind=data_kind, id_map=id_map,
                  size=real_size, limit=limit)
    c = check_settings(model, cls, assign, rule, rea, labels)
    _, names = _class_index(model, cls)
    kw = dict(assign=assign, rule=rule, batch_size=batch_size, workers=workers, quiet=quiet,
              chunk=chunk)
    calib = [src if isinstance(src, Source) else open_synthetic(src, size=size)
             for src in (calibration or ())]
    syn_fp = fingerprint_source(model, syn, c, cache_dir=cache_dir, **kw)
    ref = fit_reference(syn_fp)  # fails early (< 2 usable images) before the real pass
    failure_model, note = None, None
    if calib:
        parts = [fingerprint_source(model, dataclasses.replace(src, what=f"calibration-{i}"),
                                    c, cache_dir=cache_dir, layout=syn_fp.layout, **kw)
                 for i, src in enumerate(calib)]
        groups = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
        try:
            failure_model = fit_failure_model(ref, Fingerprints.concat(parts, syn_fp.layout),
                                              groups, [src.spec for src in calib])
        except SegscopeError as exc:  # e.g. a model that predicts no road on them
            note = f"failure model not fitted ({exc}); failure_score is {FAILURE_SCORE}"
    real_fp = fingerprint_source(model, rea, c, cache_dir=cache_dir, layout=syn_fp.layout, **kw)
    settings = {"class": names[c], "assign": assign, "rule": str(rule), "size": size,
                "real_size": real_size,
                "failure_score": "calibrated" if failure_model else FAILURE_SCORE,
                "calibration": [src.spec for src in calib], "n_boot": n_boot}
    sources = {"real": {**rea.info, "labels": rea.has_labels}, "synthetic": syn.spec}
    return analyse(ref, syn_fp, real_fp, syn, rea, names, settings, sources, n_boot=n_boot,
                   top=top, failure_model=failure_model, calibration_note=note)


def analyse(ref: Reference, syn_fp: Fingerprints, real_fp: Fingerprints, syn: Source,
            rea: Source, class_names: Sequence[str], settings: dict, sources: dict,
            n_boot: int = 1000, top: int = TOP_CHANNELS,
            failure_model: FailureModel | None = None,
            calibration_note: str | None = None) -> Diagnosis:
    """Scores, correlation table, layer shift and top channels from the fingerprints."""
    from .stats import correlation_row

    scores = {what: score_images(ref, fp, model=failure_model)
              for what, fp in (("synthetic", syn_fp), ("real", real_fp))}
    rows = []
    for what, fp, src in (("synthetic", syn_fp, syn), ("real", real_fp, rea)):
        sc = scores[what]
        for i in range(len(fp)):
            row: dict[str, Any] = {"dataset": what, "image": src.names[i], "path": src.paths[i]}
            row.update({k: float(sc[k][i]) for k in SCORES})
            row.update({f"share_{n}": float(fp.shares[i, j]) for j, n in enumerate(class_names)})
            row["empty_concept"] = int(fp.scalar("empty")[i])
            row["iou"] = float(fp.scalar("iou")[i]) if src.has_labels else float("nan")
            rows.append(row)
    iou = real_fp.scalar("iou")
    labelled = rea.has_labels and np.isfinite(iou).sum() >= 3
    correlations = []
    if labelled:
        for k in SCORES:
            kind = "failure score" if k == "failure_score" else \
                ("baseline" if k in BASELINES else "variant")
            r = correlation_row(-DIRECTION[k] * scores["real"][k], iou, n_boot=n_boot)
            correlations.append({"score": k, "kind": kind, **r})
    groups = _groups(real_fp, scores["real"]["failure_score"], labelled)
    layer_shift = _layer_shift(ref, syn_fp, real_fp, groups)
    top_channels = _top_channels(ref, real_fp, groups["worst_index"], top)
    return Diagnosis(rows, correlations, layer_shift, top_channels, ref, syn_fp, real_fp,
                     scores, groups, settings, sources, tuple(class_names), failure_model,
                     calibration_note)


def _groups(real_fp: Fingerprints, failure: np.ndarray, labelled: bool) -> dict[str, Any]:
    """The best and worst quarter of the real images with a non-empty concept: by IoU with
    labels, else by the failure score."""
    ok = np.nonzero(real_fp.scalar("empty") == 0)[0]
    iou = real_fp.scalar("iou")
    if labelled:
        ok = ok[np.isfinite(iou[ok])]
        key, by = -iou[ok], "iou"
    else:
        key, by = failure[ok], "failure_score"
    order = ok[np.argsort(key, kind="stable")]  # best first
    q = max(1, len(order) // 4)
    return {"by": by, "n": int(q), "best_index": order[:q], "worst_index": order[::-1][:q],
            "best": [int(i) for i in order[:q]], "worst": [int(i) for i in order[::-1][:q]]}


def _layer_shift(ref: Reference, syn_fp: Fingerprints, real_fp: Fingerprints,
                 groups: dict[str, Any]) -> dict[str, dict[str, float]]:
    real_ok = real_fp.scalar("empty") == 0
    d = layer_divergence(ref, real_fp)
    syn_d = ref.js_mean
    out = {}
    def mean(idx, j: int) -> float:
        return float(d[idx, j].mean()) if np.size(idx) else float("nan")

    for j, name in enumerate(ref.slices):
        out[name] = {"real": mean(np.nonzero(real_ok)[0], j), "best": mean(groups["best_index"], j),
                     "worst": mean(groups["worst_index"], j), "synthetic": float(syn_d[j])}
    return out


def _top_channels(ref: Reference, real_fp: Fingerprints, worst: np.ndarray,
                  top: int) -> list[dict[str, Any]]:
    """Channels ranked by |standardised mean difference| of fv, synthetic vs worst real."""
    if np.size(worst) == 0:
        return []
    fw = real_fp.fv[worst]
    mw = fw.mean(0)
    vw = fw.var(0, ddof=1) if len(worst) > 1 else np.zeros_like(mw)
    vs = ref.fv.var(0, ddof=1)
    effect = (mw - ref.fv_mean) / np.sqrt((vw + vs) / 2 + 0.05 ** 2)
    cand = []
    for name, s in ref.slices.items():
        if name == "data":
            continue
        for k in range(s.stop - s.start):
            cand.append((abs(effect[s.start + k]), name, k, s.start + k))
    cand.sort(key=lambda t: -t[0])
    return [{"layer": name, "channel": int(k), "effect": float(effect[j]),
             "fv_synthetic": float(ref.fv_mean[j]), "fv_worst_real": float(mw[j])}
            for _, name, k, j in cand[:top]]
