"""The output folder of ``segscope diagnose``: images.csv, diagnosis.json, figures, report.

:func:`run_diagnose` is the command (claim the folder, diagnose, write it; under torchrun
rank 0 writes), :func:`demo_step` the demo's quick diagnosis, and :func:`write_diagnosis`
writes every file of a :class:`~segscope.diagnose.Diagnosis`;
``report.html`` is self-contained (figures inlined, styled like the study's report) and
every number in it comes from ``diagnosis.json``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import write_json, write_text
from .diagnose import (
    PRESET_CALIBRATION,
    SCORES,
    Diagnosis,
    Source,
    _Labelled,
    check_settings,
    diagnose,
    open_real,
    open_synthetic,
    training_sizes,
)
from .errors import SegscopeError, agree
from .explain.rules import parse_rules
from .fingerprint import DIAGNOSE_RULE

#: Real images shown on the contact sheet of the most likely failures.
CONTACT_IMAGES = 12
FIGURES = {
    "scores": "scores_vs_iou.png",
    "layer_shift": "layer_shift.png",
    "failures": "most_likely_failures.png",
    "channels": "top_channels.png",
}


def write_images_csv(diag: Diagnosis, path: str | os.PathLike) -> Path:
    """``images.csv``: one row per image (synthetic first), the columns of ``diag.rows``."""
    rows = diag.rows
    cols = list(rows[0]) if rows else ["dataset", "image", "path", "failure_score"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if isinstance(v, float) and math.isnan(v) else
                    (f"{v:.6g}" if isinstance(v, float) else v) for v in (r[c] for c in cols)])
    return write_text(path, buf.getvalue())


def write_diagnosis(diag: Diagnosis, out: str | os.PathLike, model: torch.nn.Module | None = None,
                    synthetic=None, real=None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``images.csv``, ``diagnosis.json``, the figures and ``report.html`` into
    ``out``. ``model`` and the :class:`~segscope.diagnose.Source` objects are needed for
    the contact sheet and the channel maps (left out without them). Returns the report."""
    from .viz.figures import save_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_images_csv(diag, out / "images.csv")
    summary = diag.summary()
    summary.update(extra or {})
    summary["created"] = time.strftime("%Y-%m-%d %H:%M")
    figures: dict[str, str] = {}
    from .viz import diagnosis as F

    real_rows = [r for r in diag.rows if r["dataset"] == "real"]
    if diag.correlations:
        iou = np.array([r["iou"] for r in real_rows])
        rho = {r["score"]: r["spearman"] for r in diag.correlations}
        show = {k: diag.scores["real"][k] for k in SCORES if k != "failure_score"}
        show = {"failure_score": diag.scores["real"]["failure_score"], **{
            k: v for k, v in show.items() if k != summary["failure_score"]}}
        save_png(F.scores_figure(show, iou, rho, diag.real.scalar("empty") > 0),
                 out / FIGURES["scores"])
        figures["scores"] = FIGURES["scores"]
    save_png(F.layer_shift_figure(diag.layer_shift, diag.groups["by"]),
             out / FIGURES["layer_shift"])
    figures["layer_shift"] = FIGURES["layer_shift"]
    if model is not None and real is not None:
        _contact(diag, model, real, out / FIGURES["failures"])
        figures["failures"] = FIGURES["failures"]
        if synthetic is not None and diag.top_channels:
            panels = _channel_panels(diag, model, synthetic, real)
            if panels:
                save_png(F.channel_maps_figure(panels), out / FIGURES["channels"])
                figures["channels"] = FIGURES["channels"]
    summary["figures"] = figures
    write_json(out / "diagnosis.json", summary)
    return write_text(out / "report.html", render_report(summary, out))


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _contact(diag: Diagnosis, model, real, path: Path) -> None:
    from .viz.contact import contact_sheet

    order = np.argsort(-diag.scores["real"]["failure_score"], kind="stable")[:CONTACT_IMAGES]
    images, preds = [], []
    for i in order:
        image, _ = real.dataset[int(i)]
        images.append(image)
        preds.append(model(image[None].to(_device(model)))[0].argmax(0).cpu().numpy())
    size = images[0].shape[-2:]
    keep = [j for j, im in enumerate(images) if im.shape[-2:] == size]
    contact_sheet([images[j] for j in keep], [preds[j] for j in keep], path, cols=3)


def _channel_panels(diag: Diagnosis, model, synthetic, real) -> list[dict[str, Any]]:
    """For each top channel: its map on the worst real image that uses it most unlike
    synthetic images, and on the synthetic image where its feature value is highest."""
    from .explain import Concept, lrp, separate_features

    slices = diag.reference.layout.slices()
    worst = np.asarray(diag.groups["worst_index"], int)
    syn_ok = np.nonzero(diag.synthetic.scalar("empty") == 0)[0]
    cls = diag.settings["class"]
    panels = []
    for ch in diag.top_channels:
        j = slices[ch["layer"]].start + ch["channel"]
        dev = np.abs(diag.real.fv[worst, j] - diag.reference.fv_mean[j])
        r_i = int(worst[int(np.argmax(dev))])
        s_i = int(syn_ok[int(np.argmax(diag.synthetic.fv[syn_ok, j]))])
        for what, src, i, fp in (("real", real, r_i, diag.real),
                                 ("synthetic", synthetic, s_i, diag.synthetic)):
            image, _ = src.dataset[i]
            with torch.no_grad():
                pred = model(image[None].to(_device(model)))[0].argmax(0).cpu()
            names = list(diag.class_names)
            mask = pred == names.index(cls)
            if not bool(mask.any()):
                continue
            expl = lrp(model, image, Concept.mask(cls, mask, assign=diag.settings["assign"]),
                       rule=diag.settings["rule"], keep=[ch["layer"]])
            maps = separate_features(model, image, expl, ch["layer"], channels=[ch["channel"]])
            panels.append({
                "title": f"{ch['layer']} #{ch['channel']} · {what} {src.names[i]} "
                         f"(fv {fp.fv[i, j]:.2f})",
                "image": image.numpy(), "map": maps.pixels[0].numpy()})
    return panels


def _f(v: Any, d: int = 2) -> str:
    return "n/a" if v is None or not np.isfinite(float(v)) else f"{float(v):+.{d}f}"


def render_report(summary: dict[str, Any], folder: Path) -> str:
    """The diagnosis report as one self-contained HTML page (``templates/diagnosis.html.j2``,
    the study report's style); every number comes from ``summary``."""
    from .html import RenderedTable, embed_figure, render_page

    figures = summary.get("figures", {})

    def fig(key: str, caption: str):
        if key not in figures:
            return None
        return embed_figure(folder, figures[key], caption, key=key, folder_word="diagnosis")

    table = verdict = channels_table = None
    if summary["correlations"]:
        table = RenderedTable(
            ["score", "kind", "Spearman", "95 % CI", "Kendall τ", "95 % CI", "images"],
            [[r["score"], r["kind"], _f(r["spearman"]),
              f"[{_f(r['spearman_lo'])}, {_f(r['spearman_hi'])}]", _f(r["kendall"]),
              f"[{_f(r['kendall_lo'])}, {_f(r['kendall_hi'])}]", r["n"]]
             for r in summary["correlations"]])
        v = summary.get("verdict")
        if v and v["relevance_wins"]:
            verdict = (f"The failure score ({summary['failure_score']}) ranks the real "
                       f"images by IoU with Spearman {_f(v['failure_score'])}, at least as well "
                       f"as the best baseline ({v['best_baseline']}, "
                       f"{_f(v['best_baseline_spearman'])}).")
        elif v:
            verdict = (f"On this model the failure score loses: Spearman "
                       f"{_f(v['failure_score'])} against {_f(v['best_baseline_spearman'])} "
                       f"for the best baseline, {v['best_baseline']}.")
    best = next((r for r in summary["correlations"] if r["score"] == summary.get("winner")),
                None)
    if verdict and best is not None and best["score"] != "failure_score":
        verdict += f" The best score on these images: {best['score']} ({_f(best['spearman'])})."
    fm = summary.get("failure_model") or {}
    model_table = None
    if "features" in fm:
        imp = fm["importance"]
        model_text = (
            f"The failure score is 1 − the IoU predicted from the fingerprint by ridge "
            f"regressions fitted on {fm['n_images']} labelled synthetic images "
            f"({', '.join(s for s in summary['settings'].get('calibration', []))}); no real "
            f"label was used. Share of its weight on the relevance fingerprint's distance "
            f"(fv_knn): {imp['fv_knn']:.0%}; on the other signals: "
            + ", ".join(f"{k} {v:.0%}" for k, v in imp.items() if k != "fv_knn") + ".")
        if fm.get("held_out") or fm.get("held_out_skipped"):
            model_table = RenderedTable(
                ["calibration set left out", "Spearman of the prediction with its IoU"],
                [[k, _f(v)] for k, v in fm.get("held_out", {}).items()]
                + [[k, f"not checked: {why}"]
                   for k, why in fm.get("held_out_skipped", {}).items()])
    else:
        model_text = (f"The failure score is the plain relevance fingerprint distance "
                      f"({summary['failure_score']}): {fm.get('skipped', 'no calibration')}.")
    if summary["top_channels"]:
        channels_table = RenderedTable(
            ["layer", "channel", "mean fv synthetic", "mean fv worst real", "standardised shift"],
            [[c["layer"], c["channel"], f"{c['fv_synthetic']:.3f}", f"{c['fv_worst_real']:.3f}",
              _f(c["effect"])] for c in summary["top_channels"]])
    shift = summary["layer_shift"]
    excess = sorted(shift, key=lambda n: -(shift[n]["worst"] - shift[n]["synthetic"])
                    if np.isfinite(shift[n]["worst"]) else 0.0)[:3]
    by = summary["groups"]["by"]
    return render_page(
        "diagnosis.html.j2", s=summary["settings"], images=summary["images"],
        checkpoint=str(summary.get("checkpoint", "?")),
        synthetic=str(summary["sources"]["synthetic"]),
        real=str(summary["sources"]["real"].get("root", "")),
        failure_score=summary["failure_score"], created=summary.get("created", ""),
        table=table, verdict=verdict, channels_table=channels_table,
        model_text=model_text, model_table=model_table,
        scores=fig("scores", "Each score against IoU, one point per real image (crosses: "
                             "empty concept)."),
        failures=fig("failures", "The real images most likely to fail (highest failure "
                                 "score first), each with the model's prediction."),
        layer_shift=fig("layer_shift",
                        "How far real fv profiles sit from the mean synthetic profile, layer "
                        f"by layer (best/worst quarter by {by}). Largest excess of the worst "
                        "images over the synthetic spread: " + ", ".join(excess) + "."),
        channels=fig("channels", "Each top channel's relevance at the pixels on a badly "
                                 "segmented real image and on the synthetic image where it "
                                 "is strongest."))


# -- the command -------------------------------------------------------------------------------
def run_diagnose(checkpoint: str | os.PathLike, out: str | os.PathLike, *, synthetic: str,
                 real: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                 device: str = "auto", size: tuple[int, int] | None = None,
                 **kwargs: Any) -> dict[str, Any] | None:
    """``segscope diagnose``: load the checkpoint, claim ``out``, diagnose, write the
    folder. Under torchrun every process fingerprints its share; rank 0 writes. Returns
    the summary on rank 0 (with ``report``: the report's path), None on the others."""
    from .checkpoint import load_model
    from .outdir import changed_settings, claim_output, read_marker
    from .training import _setup_distributed

    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise SegscopeError(f"checkpoint not found: {ckpt}")
    d = _setup_distributed(device)
    try:
        model, meta = load_model(ckpt, map_location=d.device)
        model = model.to(d.device).eval()
        real_size = size
        if size is None:  # the scale the model was trained on
            size, real_size = training_sizes(meta, real, kwargs.get("split"),
                                             kwargs.get("data_kind", "auto"),
                                             kwargs.get("id_map"))
        settings = {"checkpoint": str(ckpt.resolve()), "synthetic": str(synthetic),
                    "real": str(Path(real).expanduser().resolve()),
                    "size": list(size) if size else None,
                    "real_size": list(real_size) if real_size else None,
                    **{k: kwargs.get(k) for k in ("split", "data_kind", "labels", "cls",
                                                  "assign", "rule", "limit")}}
        settings["id_map"] = str(kwargs["id_map"]) if kwargs.get("id_map") else None
        # the rule as parsed: "EPSILON" and "epsilon:1e-06" are the rule "epsilon" is
        kwargs["rule"] = settings["rule"] = parse_rules(kwargs.get("rule", DIAGNOSE_RULE)).text
        calibration = kwargs.get("calibration") or ()
        if tuple(calibration) == ("presets",):
            calibration = PRESET_CALIBRATION
        settings["calibration"] = [str(c) for c in calibration]
        # Bad input fails here, before the output folder is touched.
        syn = open_synthetic(synthetic, size=size)
        kwargs["calibration"] = [open_synthetic(spec, size=size, option="--calibration")
                                 for spec in calibration]
        rea = open_real(real, split=kwargs.get("split"), labels=kwargs.get("labels"),
                        kind=kwargs.get("data_kind", "auto"), id_map=kwargs.get("id_map"),
                        size=real_size, limit=kwargs.get("limit"))
        check_settings(model, kwargs.get("cls", "road"), kwargs.get("assign", "score"),
                       kwargs["rule"], rea)
        error = None
        if d.rank == 0:
            try:
                if resume:
                    mark = read_marker(out) or {}
                    old = mark.get("settings")
                    if mark.get("command") == "diagnose" and old and old != settings:
                        diff = changed_settings(old, settings)
                        raise SegscopeError(
                            f"--resume: {out} holds a diagnosis with other settings "
                            f"({', '.join(diff)}); use --overwrite or another --out")
                claim_output(out, "diagnose", resume=resume, overwrite=overwrite,
                             settings=settings)
            except SegscopeError as exc:
                error = str(exc)
        agree(d.world, error)
        out = Path(out)
        diag = diagnose(model, syn, rea, size=size, real_size=real_size,
                        cache_dir=out / "fingerprints",
                        **{k: v for k, v in kwargs.items()
                           if k not in ("split", "labels", "data_kind", "id_map", "limit")})
        if d.rank != 0:
            return None
        report = write_diagnosis(diag, out, model, syn, rea,
                                 extra={"checkpoint": str(ckpt), "device": str(d.device),
                                        "processes": d.world})
        summary = diag.summary()
        summary["report"] = str(report)
        return summary
    finally:
        if d.world > 1 and d.initialised_here:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def demo_step(ctx) -> None:
    """``segscope demo --real``'s diagnosis step: a quick :func:`diagnose` of the trained
    model on the demo's real images against a few synthetic validation scenes, written to
    ``<out>/diagnose`` (report.html, images.csv, diagnosis.json) and recorded in
    ``ctx.summary["diagnose"]``. Without ``--real`` it records that it was skipped."""

    o = ctx.options
    data = ctx.data.get("real")
    if not o.real or data is None:
        ctx.summary["diagnose"] = None
        return
    size = tuple(ctx.data.get("real_size") or o.size)
    files = getattr(data, "files", None) or []
    n = len(data)
    names = [Path(files[i][0]).name if i < len(files) else f"{i:06d}" for i in range(n)]
    paths = [str(Path(files[i][0]).resolve()) if i < len(files) else f"real:{i}"
             for i in range(n)]
    real = Source("real", str(o.real), _Labelled(data, True), names, paths, True,
                  road_surface=not getattr(data, "has_markings", True),
                  info={"root": str(Path(o.real).expanduser().resolve()),
                        "split": ctx.data.get("real_split"), "kind": type(data).__name__})
    spec = f"synthetic:{4 if o.quick else 24}:{o.preset}:{o.seed + 1}"
    syn = open_synthetic(spec, size=size)
    try:
        d = diagnose(ctx.model, syn, real, n_boot=200, top=2 if o.quick else 4,
                     quiet=o.quiet or not sys.stderr.isatty())
    except SegscopeError as exc:  # e.g. a model that predicts no road yet
        ctx.summary["diagnose"] = {"skipped": str(exc)}
        ctx.log(f"diagnose skipped: {exc}")
        return
    folder = ctx.out / "diagnose"
    report = write_diagnosis(d, folder, ctx.model, syn, real,
                             extra={"checkpoint": str(ctx.model_path)})
    fs = next((r for r in d.correlations if r["score"] == "failure_score"), None)
    ctx.summary["diagnose"] = {
        "folder": str(folder), "report": str(report), "synthetic": spec,
        "failure_score_spearman": fs["spearman"] if fs else None,
        "winner": d.winner["score"] if d.winner else None}
    ctx.log(f"diagnose: {report}")
