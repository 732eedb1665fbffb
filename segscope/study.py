"""The chapter-9 study in one call: every analysis, figure, table and the HTML report.

:func:`run_study` builds a :class:`~segscope.analyses.StudyContext` (checks the inputs,
loads the model, picks the images), runs the analyses of
:data:`segscope.analyses.REGISTRY` on it and writes into one folder:

- PNG figures (``figures`` in ``summary.json`` maps each figure to its file);
- CSV tables of the numbers behind them (``tables``);
- ``summary.json`` with every number the report states;
- ``report.html``, self-contained (:mod:`segscope.report`).

The analyses follow thesis §9.4-§9.11; see ``docs/study.md`` for what each one shows
and for the keys of ``summary.json``, ``docs/extending.md`` to add one.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from . import analyses as _analyses
from ._io import write_json
from ._typed import to_json
from .analyses import (
    DEFAULT_SYNTHETIC,
    Analysis,
    NoTruePositives,
    StudyContext,
    StudySettings,
)

__all__ = ["DEFAULT_SYNTHETIC", "NoTruePositives", "StudySettings", "run_study"]


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
    analyses: Sequence[Analysis] | None = None,
    before_work: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Run the chapter-9 study and write figures, tables, summary.json and report.html.

    Parameters
    ----------
    checkpoint
        A model saved with :func:`segscope.save_model`.
    out
        Output folder (created; the ``segscope study`` command claims it first, see
        :func:`segscope.outdir.claim_output`).
    synthetic
        ``synthetic:N[:PRESET[:SEED]]`` or a synthetic folder; default: the checkpoint's
        validation data when it names synthetic data, else ``synthetic:8:narrow:1``.
    real
        A real dataset (any layout :func:`segscope.data.open_dataset` reads); the study
        scans up to ``settings.scan`` images of ``settings.split`` (default ``val`` when
        present, else the only split) and explains the best and worst segmented.
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
    analyses
        The analyses to run, in report order; default :data:`segscope.analyses.REGISTRY`.
    before_work
        Called once every input is checked and the images are chosen, before the long
        work (the ``study`` command claims its output folder there).

    Returns
    -------
    dict
        The summary written to ``summary.json``, plus ``"report"``: the report's path.
    """
    from . import __version__
    from .report import write_report

    start = time.perf_counter()
    # The registry is read when the study runs, so that an analysis registered later counts.
    analyses = list(_analyses.REGISTRY if analyses is None else analyses)
    ctx = StudyContext.build(
        checkpoint, out, settings=settings or StudySettings(), synthetic=synthetic, real=real,
        real_kind=real_kind, id_map=id_map, images=images, labels=labels, device=device,
        model=model, before_work=before_work)
    bar = _progress(len(analyses) + 1, quiet)
    results: dict[str, Any] = {}
    for i, analysis in enumerate(analyses):
        bar.set_description(analysis.name)
        results[analysis.key] = to_json(analysis.run(ctx))
        ctx.release(set().union(*(a.needs for a in analyses[i + 1:])))
        bar.update()
    bar.set_description("report")
    cfg = ctx.settings
    full = {
        "segscope_version": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "checkpoint": str(checkpoint),
        "model": {"width": getattr(ctx.model, "width", None), "num_classes": len(ctx.names),
                  "class_names": ctx.names},
        "settings": {
            "class": ctx.names[ctx.cls], "layer": cfg.layer, "compare_layer": cfg.compare_layer,
            "rule": str(cfg.rule), "quick": cfg.quick, "pixels": cfg.pixels, "scan": cfg.scan,
            "candidates": cfg.candidates, "channels": cfg.channels,
            "size": list(cfg.size) if cfg.size else None, "device": str(ctx.device),
            "synthetic": ctx.synthetic_spec, "real": ctx.real, "split": ctx.split,
        },
        "notes": ctx.notes,
        **results,
        "figures": ctx.figures,
        "tables": ctx.tables,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(Path(out) / "summary.json", full)
    report = write_report(out, analyses=analyses)
    bar.update()
    bar.close()
    full["report"] = str(report)
    return full


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="study", unit="step",
                disable=quiet or not sys.stderr.isatty(), leave=False)
