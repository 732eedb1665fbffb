"""The chapter-9 study in one call: every analysis, figure, table and the HTML report.

:func:`run_study` takes a checkpoint, a synthetic validation set and (optionally) real
images, picks the images to explain, runs LRP and writes into one folder:

- PNG figures (``figures`` in ``summary.json`` maps each analysis to its file);
- CSV tables of the numbers behind them (``tables``);
- ``summary.json`` with every number the report states;
- ``report.html``, self-contained (:mod:`segscope.report`).

The analyses follow thesis §9.4-§9.11; see ``docs/study.md`` for what each one
shows and for the keys of ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import analysis as A
from ._io import write_json, write_text
from .errors import SegscopeError

#: Thesis figure 9.8 frames and figure 9.9 threshold.
SWITCH_OFF_FRAMES = (0.99, 0.9, 0.75, 0.5, 0.3)
SEPARATION_SHARE = 0.3
#: Layers drawn in the profile figure (fig 9.14-9.16 show nine layers).
PROFILE_LAYERS = ("conv1_2", "conv2_1", "conv3_1", "conv4_1", "conv5_3",
                  "conv5_1_D", "conv4_1_D", "conv3_1_D", "conv2_1_D")
#: Pixel concepts explained together in one LRP pass in the bias study.
BIAS_BATCH = 16
#: Default synthetic validation data: a seed different from the training default (0).
DEFAULT_SYNTHETIC = "synthetic:8:narrow:1"


class NoTruePositives(SegscopeError):
    """The model predicts no true positive of the class in any candidate image."""


@dataclass
class StudySettings:
    """What a study runs with; ``quick`` shrinks the defaults left as ``None``."""

    cls: str = "road"
    layer: str = "conv2_1"
    compare_layer: str = "conv2_1_D"
    rule: str = "alpha1beta0"
    quick: bool = False
    pixels: int | None = None  # single-pixel concepts per image for the bias study
    scan: int | None = None  # real images scanned for the best / worst
    candidates: int | None = None  # synthetic images tried for the main image
    channels: int | None = None  # features separated (the top ones by fv); None = all
    size: tuple[int, int] | None = None
    real_size: tuple[int, int] | None = None  # for the real images; default ``size``
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


# -- entry point --------------------------------------------------------------------------------
def run_study(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    synthetic: str | None = None,
    real: str | os.PathLike | None = None,
    real_kind: str = "auto",
    id_map: Any = None,
    images: Sequence[str | os.PathLike] = (),
    labels: Sequence[str | os.PathLike] = (),
    settings: StudySettings | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = False,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Run the chapter-9 study and write figures, tables, summary.json and report.html.

    Parameters
    ----------
    checkpoint
        A model saved with :func:`segscope.save_model`.
    out
        Output folder (created).
    synthetic
        ``synthetic:N[:PRESET[:SEED]]`` or a synthetic folder; default: the checkpoint's
        validation data when it names synthetic data, else ``synthetic:8:narrow:1``.
    real
        A real dataset (any layout :func:`segscope.data.open_dataset` reads); the study
        scans up to ``settings.scan`` images and explains the best and worst segmented.
    real_kind, id_map
        ``kind`` and ``id_map`` of :func:`segscope.data.open_dataset` for ``real`` (a plain
        folder of image/label pairs needs an id map).
    images, labels
        Extra real image files with ROAD3 label files (0 background, 1 road,
        2 markings, 255 ignore), scanned before ``real``.
    settings
        :class:`StudySettings`.
    device
        Where the model runs.
    quiet
        No progress bar.
    model
        An already loaded model (``checkpoint`` is then only recorded).

    Returns
    -------
    dict
        The summary written to ``summary.json``, plus ``"report"``: the report's path.
    """
    from .report import write_report

    start = time.perf_counter()
    cfg = (settings or StudySettings()).resolved()
    notes = list((settings or StudySettings()).notes)
    out = Path(out)
    device = torch.device(device)
    meta: dict[str, Any] = {}
    if model is None:
        model, meta = _load(checkpoint)
    trained_size = _train_config(meta).get("size")
    if cfg.size is None and isinstance(trained_size, list | tuple) and len(trained_size) == 2:
        # Images at the scale the model was trained on, unless asked otherwise.
        cfg.size = (int(trained_size[0]), int(trained_size[1]))
        cfg.real_size = cfg.real_size or cfg.size
    model = model.to(device).eval()
    names = list(model.class_names)
    _check_names(model, cfg)
    if len(images) != len(labels):
        raise SegscopeError(f"{len(images)} --image but {len(labels)} --label: give one label "
                            "per image")

    steps = ["images", "layer-wise", "features", "switch-off", "separation", "classes",
             "synthetic vs real", "bias", "report"]
    bar = _progress(len(steps), quiet)
    figures: dict[str, str] = {}
    tables: dict[str, str] = {}
    summary: dict[str, Any] = {}

    def step(name: str) -> None:
        bar.set_description(name)

    from .explain import Concept, lrp, separate_features
    from .explain.relevance import forward_state
    from .viz import figures as F

    # 1. images ----------------------------------------------------------------------------
    step("images")
    syn_spec = synthetic or _default_synthetic(meta)
    syn, syn_note = _pick_synthetic(model, syn_spec, cfg, device, names)
    if syn_note:
        notes.append(syn_note)
    real_samples = _scan_real(model, real, images, labels, cfg, device, real_kind, id_map)
    best = worst = None
    if real_samples:
        ranked = sorted(real_samples, key=lambda s: s.iou if s.iou is not None else -1.0)
        best, worst = ranked[-1], ranked[0]
    else:
        notes.append("No real images were given (--real / --image): the synthetic-vs-real "
                     "comparison shows two pixels of the synthetic image only.")
    rows = [_image_row(s, f"synthetic: {s.name}") for s in [syn]]
    if best is not None:
        rows.append(_image_row(best, f"real, best: {best.name}"))
        if worst is not best:
            rows.append(_image_row(worst, f"real, worst: {worst.name}"))
    from .data.classes import ROAD3_COLOURS

    colours = list(ROAD3_COLOURS) if len(names) == 3 else _grey_palette(len(names))
    figures["images"] = _save(F.images_figure(rows, colours), out, "images.png")
    summary["images"] = {
        "synthetic": _describe(syn, syn_spec),
        "real_best": _describe(best, real) if best is not None else None,
        "real_worst": _describe(worst, real) if worst is not None else None,
        "scanned": len(real_samples),
    }
    bar.update()

    # 2. layer-wise (§9.4) ------------------------------------------------------------------
    step("layer-wise")
    c = names.index(_class_name(cfg.cls, names))
    tp = (syn.prediction == c) & (syn.label == c)
    main_concept = Concept.mask(c, tp, assign="score")
    syn_state = forward_state(model, syn.image, cfg.rule)  # one forward pass, reused
    main = lrp(model, syn.image, main_concept, rule=cfg.rule, keep="all", state=syn_state)
    concept_text = f"the {int(tp.sum())} true positives of {names[c]!r} (score assignment)"
    order = list(reversed(model.layer_names))
    totals = {n: float(main.layers[n].sum()) for n in order}
    output_total = float(main.output_total)
    pixel_total = float(main.pixels.sum())
    maps = {n: A.layer_sum(main.layers[n]) for n in order}
    figures["overlay"] = _save(
        _overlay_figure(F, syn.image, main.pixels, concept_text), out, "overlay.png")
    figures["layerwise"] = _save(
        F.layerwise_figure(maps, totals, title=f"LRP {cfg.rule}: {concept_text}"),
        out, "layerwise.png")
    summary["layerwise"] = {
        "concept": concept_text, "output_total": output_total, "pixel_total": pixel_total,
        "share_reaching_pixels": A.share_reaching_input(pixel_total, output_total),
        "dropped_share": A.share_reaching_input(float(main.dropped), output_total),
        "totals": totals,
    }
    bar.update()

    # 3. feature maps and feature values (§9.5-9.6) -------------------------------------
    step("features")
    profiles = A.layer_profiles({n: main.layers[n] for n in model.layer_names})
    fv = profiles[cfg.layer]
    rank = A.rank_features(fv)
    figures["feature_maps"] = _save(
        F.feature_maps_figure(main.layers[cfg.layer], fv, cfg.layer), out, "feature_maps.png")
    figures["feature_values"] = _save(F.feature_values_figure(fv, cfg.layer), out,
                                      "feature_values.png")
    figures["all_feature_values"] = _save(F.all_feature_values_figure(profiles), out,
                                          "all_feature_values.png")
    tables["feature_values"] = _csv(
        out, "feature_values.csv", ["layer", "feature", "fv", "relevance"],
        [[n, k, float(v), float(t)] for n in model.layer_names
         for k, (v, t) in enumerate(zip(profiles[n], A.channel_totals(main.layers[n]),
                                        strict=True))])
    n_top = max(1, int(np.ceil(0.1 * fv.size)))
    summary["feature_values"] = {
        "layer": cfg.layer, "channels": int(fv.size),
        "top": [{"feature": int(k), "fv": float(fv[k])} for k in rank[:10]],
        "bottom": [{"feature": int(k), "fv": float(fv[k])} for k in rank[::-1][:5]],
        "top_share_features": n_top,
        "top_share": float(fv[rank[:n_top]].sum() / fv.size),
        "max_fv_per_layer": {n: float(p.max()) for n, p in profiles.items()},
    }
    bar.update()

    main.layers = {cfg.layer: main.layers[cfg.layer]}  # the rest is not needed (memory)

    # 4. switch-off on one pixel (§9.7) ----------------------------------------------------
    step("switch-off")
    ya, xa, yb, xb = _two_pixels(tp)
    pix_a = lrp(model, syn.image, Concept.pixel(c, ya, xa), rule=cfg.rule, keep="all",
                state=syn_state)
    prof_a = A.layer_profiles(pix_a.layers)
    pix_a.layers = {}  # only the profiles are needed from here on (memory)
    curve = A.switch_off_curve(pix_a.pixels)
    pixel_concept = f"the {names[c]!r} score of pixel ({ya}, {xa})"
    figures["switch_off"] = _save(
        F.switch_off_figure(curve, pix_a.pixels, SWITCH_OFF_FRAMES), out, "switch_off.png")
    step_idx = np.unique(np.linspace(0, curve.pixel_share.size - 1, 201).astype(int))
    tables["switch_off"] = _csv(
        out, "switch_off.csv", ["pixel_share_on", "relevance_share_kept"],
        [[float(curve.pixel_share[i]), float(curve.relevance_share[i])] for i in step_idx])
    summary["switch_off"] = {
        "concept": pixel_concept, "pixel": [ya, xa],
        "pixel_shares": {f"{s:g}": curve.pixels_holding(s) for s in A.REPORTED_SHARES},
        "frames": list(SWITCH_OFF_FRAMES),
        "negative_share": A.negative_share(pix_a.pixels),
    }
    bar.update()

    # 5. feature separation (§9.8) --------------------------------------------------------
    step("separation")
    chosen = rank if cfg.channels is None else rank[: cfg.channels]
    chosen = np.sort(chosen)
    sep = separate_features(model, syn.image, main, cfg.layer, channels=[int(k) for k in chosen])
    sep_maps = A.as_numpy(sep.pixels)
    threshold = A.common_threshold(sep_maps, SEPARATION_SHARE)
    layer_totals = A.channel_totals(main.layers[cfg.layer])
    ranking = []
    for i, k in enumerate(chosen):
        ranking.append({
            "feature": int(k), "fv": float(fv[k]), "layer_total": float(layer_totals[k]),
            "pixel_total": float(sep_maps[i].sum()),
            "lit_pixels": int((sep_maps[i] >= threshold).sum()),
        })
    ranking.sort(key=lambda r: -r["fv"])
    figures["separation"] = _save(
        F.separation_figure(sep_maps, threshold, SEPARATION_SHARE, cfg.layer,
                            fv=fv[chosen], channels=chosen), out, "separation.png")
    tables["separation"] = _csv(out, "separation.csv", list(ranking[0]),
                                [list(r.values()) for r in ranking])
    summary["separation"] = {
        "layer": cfg.layer, "channels": [int(k) for k in chosen],
        "threshold_share": SEPARATION_SHARE,
        "threshold": threshold if np.isfinite(threshold) else None,
        "ranking": ranking,
    }
    if cfg.channels is not None and cfg.channels < fv.size:
        notes.append(f"Feature separation covers the {len(chosen)} features of {cfg.layer} "
                     f"with the highest feature values, of {fv.size}.")
    bar.update()

    # 6. class comparison (§9.9) -------------------------------------------------------------
    step("classes")
    cmp_concepts, cmp_text, cmp_notes = _class_concepts(syn, names, Concept)
    notes.extend(cmp_notes)
    cmp_fv: dict[str, np.ndarray] = {}
    present = [n for n in names if n in cmp_concepts]
    results = lrp(model, syn.image, [cmp_concepts[n] for n in present], rule=cfg.rule,
                  state=syn_state,
                  keep=[cfg.compare_layer])
    for n, r in zip(present, results, strict=True):
        cmp_fv[n] = A.feature_values(r.layers[cfg.compare_layer])
    width = next(iter(cmp_fv.values())).size
    for n in names:
        cmp_fv.setdefault(n, np.zeros(width))
    axes = _comparison_axes(names)
    points = A.class_points({n: cmp_fv[n] for n in axes})
    unit = A.unit_points(points)
    figures["class_comparison"] = _save(
        F.class_scatter_figure(points, unit, axes, cfg.compare_layer), out,
        "class_comparison.png")
    tables["class_comparison"] = _csv(
        out, "class_comparison.csv",
        ["feature", *[f"fv_{n}" for n in axes], *[f"unit_{n}" for n in axes]],
        [[k, *map(float, points[k]), *map(float, unit[k])] for k in range(points.shape[0])])
    summary["class_comparison"] = {
        "layer": cfg.compare_layer, "classes": axes, "concepts": cmp_text,
        "specific": A.specific_features(points, axes),
    }
    bar.update()

    # 7. synthetic vs real (§9.10) ---------------------------------------------------------
    step("synthetic vs real")
    pix_b = lrp(model, syn.image, Concept.pixel(c, yb, xb), rule=cfg.rule, keep="all",
                state=syn_state)
    prof = {"synthetic A": prof_a, "synthetic B": A.layer_profiles(pix_b.layers)}
    del pix_b
    comparisons = {"two synthetic pixels": (
        f"synthetic pixels ({ya}, {xa}) and ({yb}, {xb})",
        A.profile_divergence(prof_a, prof["synthetic B"], model.layer_names))}
    for key, sample, word in (("best", best, "well"), ("worst", worst, "badly")):
        if sample is None or (key == "worst" and worst is best):
            continue
        where = _real_pixel(sample, c, names)
        if where is None:
            notes.append(f"The {key} real image {sample.name} has no {names[c]!r} pixel in "
                         "its label or prediction; it is left out of the comparison.")
            continue
        ry, rx = where
        expl = lrp(model, sample.image, Concept.pixel(c, ry, rx), rule=cfg.rule, keep="all")
        label = f"real {key}"
        prof[label] = A.layer_profiles(expl.layers)
        del expl
        comparisons[f"synthetic vs {label}"] = (
            f"synthetic pixel ({ya}, {xa}) vs pixel ({ry}, {rx}) of the {word} segmented real "
            f"image {sample.name}",
            A.profile_divergence(prof_a, prof[label], model.layer_names))
    div = {k: v[1] for k, v in comparisons.items()}
    layers_io = list(model.layer_names)
    figures["profiles"] = _save(
        F.profiles_figure(prof, [n for n in PROFILE_LAYERS if n in layers_io]), out,
        "profiles.png")
    figures["divergence"] = _save(F.divergence_figure(div, layers_io), out, "divergence.png")
    header = ["layer"] + [f"{k} {m}" for k in div for m in ("cosine", "js")]
    tables["divergence"] = _csv(out, "divergence.csv", header, [
        [n, *[div[k][n][m] for k in div for m in ("cosine", "js")]] for n in layers_io])
    n_enc = layers_io.index("pool5") + 1
    summary["synthetic_vs_real"] = {"comparisons": {
        k: {
            "description": text,
            "mean_cosine": float(np.mean([d[n]["cosine"] for n in layers_io])),
            "mean_js": float(np.mean([d[n]["js"] for n in layers_io])),
            "encoder_js": float(np.mean([d[n]["js"] for n in layers_io[:n_enc]])),
            "decoder_js": float(np.mean([d[n]["js"] for n in layers_io[n_enc:]])),
            "per_layer": d,
        } for k, (text, d) in comparisons.items()}}
    bar.update()

    # 8. bias absorption (§9.11) ------------------------------------------------------------
    step("bias")
    bias_images = [syn, *([best] if best is not None else []),
                   *([worst] if worst is not None and worst is not best else [])]
    rng = np.random.default_rng(cfg.seed)
    rows_b = []
    for sample in bias_images:
        h, w = sample.label.shape
        picks = rng.choice(h * w, size=min(cfg.pixels, h * w), replace=False)
        coords = [(int(p // w), int(p % w)) for p in picks]
        probs = sample.probs[c]
        state = syn_state if sample is syn else forward_state(model, sample.image, cfg.rule)
        for i in range(0, len(coords), BIAS_BATCH):
            batch = coords[i:i + BIAS_BATCH]
            res = lrp(model, sample.image, [Concept.pixel(c, y, x) for y, x in batch],
                      rule=cfg.rule, state=state)
            for (y, x), r in zip(batch, res, strict=True):
                rows_b.append([sample.name, y, x, float(probs[y, x]),
                               A.share_reaching_input(float(r.pixels.sum()),
                                                      float(r.output_total))])
    prob_arr = np.array([r[3] for r in rows_b])
    share_arr = np.array([r[4] for r in rows_b])
    ok = np.isfinite(share_arr)
    pr, sr = A.pearson(prob_arr[ok], share_arr[ok]), A.spearman(prob_arr[ok], share_arr[ok])
    figures["bias"] = _save(F.bias_figure(prob_arr[ok], share_arr[ok], pr, sr, names[c]), out,
                            "bias.png")
    tables["bias"] = _csv(out, "bias.csv", ["image", "y", "x", "probability", "share"], rows_b)
    absorbed = {n: float(v) / output_total if output_total else 0.0
                for n, v in main.absorbed.items()}
    figures["absorbed"] = _save(F.absorbed_figure(dict(main.absorbed), output_total), out,
                                "absorbed.png")
    tables["absorbed"] = _csv(out, "absorbed.csv", ["layer", "absorbed", "share_of_output"],
                              [[n, float(v), absorbed[n]] for n, v in main.absorbed.items()])
    summary["bias"] = {
        "class": names[c], "pixels": int(ok.sum()), "images": len(bias_images),
        "pearson": pr, "spearman": sr,
        "share_min": float(share_arr[ok].min()) if ok.any() else None,
        "share_median": float(np.median(share_arr[ok])) if ok.any() else None,
        "share_max": float(share_arr[ok].max()) if ok.any() else None,
        "absorbed_share": absorbed,
    }
    bar.update()

    # 9. summary and report ---------------------------------------------------------------
    step("report")
    from . import __version__

    full = {
        "segscope_version": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "checkpoint": str(checkpoint),
        "model": {"width": getattr(model, "width", None), "num_classes": len(names),
                  "class_names": names},
        "settings": {
            "class": names[c], "layer": cfg.layer, "compare_layer": cfg.compare_layer,
            "rule": cfg.rule, "quick": cfg.quick, "pixels": cfg.pixels, "scan": cfg.scan,
            "candidates": cfg.candidates, "channels": cfg.channels,
            "size": list(cfg.size) if cfg.size else None, "device": str(device),
            "synthetic": syn_spec, "real": str(real) if real is not None else None,
        },
        "notes": notes,
        **summary,
        "figures": figures,
        "tables": tables,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(out / "summary.json", full)
    report = write_report(out)
    bar.update()
    bar.close()
    full["report"] = str(report)
    return full


# -- the demo's last step -------------------------------------------------------------------------
def demo_step(ctx) -> None:
    """``segscope demo``'s study step: a quick study of the model just trained.

    Runs on a few of the demo's synthetic validation scenes (and on ``--real`` when
    given, at the demo's real-image size) into ``<out>/study`` and records the report's
    path in ``ctx.summary["study"]``. A model that predicts no road yet (a very short
    training) is studied on the first class it does predict correctly; one that predicts
    nothing correctly is recorded as skipped, not an error: the demo's other results stand.
    """
    o = ctx.options
    spec = f"synthetic:{min(o.n_val, 4)}:{o.preset}:{o.seed + 1}"
    real_size = None
    if o.real:
        real_size = ctx.summary.get("real", {}).get("size") if ctx.summary.get("real") else None
    names = list(ctx.model.class_names)
    order = [n for n in ("road", "markings") if n in names] + \
        [n for n in names if n not in ("road", "markings")]
    last: SegscopeError | None = None
    for cls in order:
        settings = StudySettings(
            cls=cls, quick=True, size=tuple(o.size), channels=8 if o.quick else 16,
            real_size=tuple(real_size) if real_size else None, scan=4 if o.quick else 8,
            candidates=4, pixels=4 if o.quick else 8,
            notes=[] if cls == order[0] else
            [f"The model predicts no true positives of {order[0]!r} yet; the study explains "
             f"{cls!r} instead."])
        try:
            summary = run_study(ctx.model_path, ctx.out / "study", synthetic=spec, real=o.real,
                                settings=settings, device=ctx.device,
                                quiet=o.quiet, model=ctx.model)
        except NoTruePositives as exc:
            last = exc
            continue
        ctx.summary["study"] = {
            "folder": str(ctx.out / "study"), "report": summary["report"], "class": cls,
            "pixels_holding_99": summary["switch_off"]["pixel_shares"]["0.99"],
            "share_reaching_pixels": summary["layerwise"]["share_reaching_pixels"],
        }
        ctx.log(f"study: {summary['report']}")
        return
    ctx.summary["study"] = {"skipped": str(last)}
    ctx.log(f"study skipped: {last}")


# -- helpers ------------------------------------------------------------------------------------
def _load(checkpoint: str | os.PathLike):
    from .checkpoint import load_model

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
    _class_name(cfg.cls, list(model.class_names))


def _class_name(cls: str | int, names: list[str]) -> str:
    from .explain.concepts import resolve_class

    return names[resolve_class(cls, names)]


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="study", unit="step",
                disable=quiet or not sys.stderr.isatty(), leave=False)


def _train_config(meta: dict[str, Any]) -> dict[str, Any]:
    cfg = meta.get("train_config") if isinstance(meta, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def _default_synthetic(meta: dict[str, Any]) -> str:
    """The checkpoint's synthetic validation data; else 8 scenes of its training preset
    with the next seed (never training scenes); else :data:`DEFAULT_SYNTHETIC`."""
    cfg = _train_config(meta)
    val, data = cfg.get("val_data"), cfg.get("data")
    if isinstance(val, str) and val.startswith("synthetic:"):
        return val
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
    from .data.real import open_dataset

    c = names.index(_class_name(cfg.cls, names))
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


def _scan_real(model, real, images, labels, cfg: StudySettings, device, kind="auto",
               id_map=None) -> list[Sample]:
    from .data.io import read_label
    from .data.real import open_dataset, resize_image, resize_label
    from .predict import load_image

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
    if real is not None:
        data = open_dataset(real, size=cfg.real_size, limit=cfg.scan, kind=kind, id_map=id_map)
        if len(data) == 0:
            raise SegscopeError(f"the real data {real} has no images")
        for i in range(len(data)):
            image, label = data[i]
            name = _item_name(data, i)
            samples.append(Sample(name, image.float(), label.long(),
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


def _describe(s: Sample, source) -> dict[str, Any]:
    return {"name": s.name, "source": str(source), "iou": s.iou,
            "size": list(s.image.shape[1:])}


def _image_row(s: Sample, title: str) -> dict[str, Any]:
    iou = f" (IoU {100 * s.iou:.1f} %)" if s.iou is not None else ""
    return {"title": title + iou, "image": s.image, "label": s.label, "prediction": s.prediction}


def _grey_palette(n: int) -> list[tuple[int, int, int]]:
    return [(int(255 * i / max(n - 1, 1)),) * 3 for i in range(n)]


def _two_pixels(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Two pixels of ``mask``: the one nearest its centroid, and the one farthest from it
    (§9.10 compares two distant pixels of one class)."""
    ys, xs = (t.numpy() for t in torch.nonzero(mask, as_tuple=True))
    cy, cx = ys.mean(), xs.mean()
    d = (ys - cy) ** 2 + (xs - cx) ** 2
    a, b = int(np.argmin(d)), int(np.argmax(d))
    return int(ys[a]), int(xs[a]), int(ys[b]), int(xs[b])


def _real_pixel(s: Sample, c: int, names: list[str]) -> tuple[int, int] | None:
    """A pixel of class ``c`` in a real image: a true positive near the centre of mass
    when there is one, else a labelled pixel (a badly segmented image may have none
    predicted), else a predicted one. Road counts markings labels as road surface."""
    surface = {1, 2} if names[c] == "road" else {c}
    in_label = torch.zeros_like(s.label, dtype=torch.bool)
    for k in surface:
        in_label |= s.label == k
    pred = s.prediction == c
    for mask in (pred & in_label, in_label, pred):
        if bool(mask.any()):
            y, x, _, _ = _two_pixels(mask)
            return y, x
    return None


def _class_concepts(s: Sample, names: list[str], Concept):
    """One concept per class for §9.9: its true positives; failing that its labelled
    pixels; failing that the class is left out (its feature values drawn as 0)."""
    concepts, text, notes = {}, {}, []
    pred = s.prediction
    for k, n in enumerate(names):
        tp = (pred == k) & (s.label == k)
        if bool(tp.any()):
            concepts[n] = Concept.mask(k, tp, assign="score")
            text[n] = f"{int(tp.sum())} true positives"
        elif bool((s.label == k).any()):
            concepts[n] = Concept.mask(k, s.label == k, assign="score")
            text[n] = f"{int((s.label == k).sum())} labelled pixels (no true positives)"
            notes.append(f"Class comparison: the model predicts no true positives of {n!r} "
                         f"in {s.name}; its labelled pixels are used instead.")
        else:
            text[n] = "absent"
            notes.append(f"Class comparison: {s.name} has no {n!r} pixels; its feature "
                         "values are drawn as 0.")
    if not concepts:
        raise SegscopeError(f"no class has any pixel in {s.name}")
    return concepts, text, notes


def _comparison_axes(names: list[str]) -> list[str]:
    """Three classes for the 3-D plot, in the thesis's order (road, markings, background)."""
    preferred = [n for n in ("road", "markings", "background") if n in names]
    rest = [n for n in names if n not in preferred]
    axes = (preferred + rest)[:3]
    if len(axes) < 3:
        raise SegscopeError("the class comparison needs a model with at least 3 classes")
    return axes


def _save(fig, out: Path, name: str) -> str:
    from .viz.figures import save_png

    save_png(fig, out / name)
    return name


def _csv(out: Path, name: str, header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    write_text(out / name, buf.getvalue())
    return name


def _overlay_figure(F, image, pixels, concept: str):
    fig = F.new_figure(9, 3.4)
    ax = fig.add_subplot(1, 2, 1)
    from .viz.cmap import heatmap_rgb

    ax.imshow(heatmap_rgb(A.as_numpy(pixels)), interpolation="nearest")
    ax.set_title("pixel relevance (eq 8.1, 8.2)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = fig.add_subplot(1, 2, 2)
    ax.imshow(F.overlay_rgb(image, pixels))
    ax.set_title(f"over the image: {concept}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig
