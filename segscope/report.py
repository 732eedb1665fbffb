"""The self-contained HTML report of a study folder.

:func:`write_report` reads ``summary.json`` and the PNGs a study wrote and makes one
``report.html`` from the Jinja2 template ``segscope/templates/report.html.j2`` (which
extends ``base.html.j2``, shared by every segscope page): every
image embedded as a base64 data URI, the style inline, no script, no external font,
stylesheet or link to fetch, so the file reads the same offline, mailed or archived.
Every caption is generated from the numbers in ``summary.json`` by the analysis that owns
the figure (:mod:`segscope.analyses`), so ``segscope report DIR`` rebuilds the same page
from the folder alone.

What the folder holds is checked before anything is embedded: ``summary.json`` is read
into typed dataclasses (a field of the wrong type is one line naming it), a figure must
be a file inside the folder (no absolute path, no ``..``, no link leading out) and a
readable PNG. The template environment uses :class:`jinja2.StrictUndefined`: a caption
that names a field the data does not have raises instead of printing a blank.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import write_text
from ._typed import from_json
from .errors import SegscopeError
from .html import (
    SUMMARY_NAME,
    EmbeddedFigure,
    RenderedTable,
    caption_template,
    embed_figure,
    render_page,
)

if TYPE_CHECKING:
    from .analyses import Analysis

REPORT_NAME = "report.html"
TEMPLATE = "report.html.j2"


# -- the typed header of summary.json -----------------------------------------------------------
@dataclass
class ModelInfo:
    width: int | float | None = None
    num_classes: int | None = None
    class_names: list[str] = field(default_factory=list)


@dataclass
class SettingsInfo:
    cls: str = field(default="?", metadata={"json": "class"})
    layer: str = "?"
    compare_layer: str | None = None
    rule: str = "?"
    quick: bool = False
    pixels: int | None = None
    scan: int | None = None
    candidates: int | None = None
    channels: int | None = None
    size: list[int] | None = None
    device: str | None = None
    synthetic: str | None = None
    real: str | None = None
    split: str | None = None


@dataclass
class StudyHeader:
    """The fields of ``summary.json`` the report reads besides the analyses' own."""

    figures: dict[str, str]
    segscope_version: str = ""
    created: str = ""
    checkpoint: str = "?"
    model: ModelInfo = field(default_factory=ModelInfo)
    settings: SettingsInfo = field(default_factory=SettingsInfo)
    notes: list[str] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)


@dataclass
class RenderedSection:
    """One section of the page as the template sees it."""

    id: str
    title: str
    figure: EmbeddedFigure
    table: RenderedTable | None


# -- entry points ------------------------------------------------------------------------------
def write_report(folder: str | os.PathLike,
                 analyses: Sequence[Analysis] | None = None) -> Path:
    """(Re)build ``report.html`` in a study folder from its ``summary.json`` and PNGs.

    Parameters
    ----------
    folder
        A folder written by :func:`segscope.study.run_study`.
    analyses
        The analyses whose sections the page shows, in order; default
        :data:`segscope.analyses.REGISTRY`.

    Returns
    -------
    Path
        The report's path.
    """
    folder = Path(folder)
    summary = read_summary(folder)
    page = render(summary, folder, analyses)
    return write_text(folder / REPORT_NAME, page)


def read_summary(folder: Path) -> dict[str, Any]:
    """The ``summary.json`` of a study folder; a one-line error when absent or broken."""
    if not folder.is_dir():
        what = "is a file, not a study folder" if folder.exists() else "not found"
        raise SegscopeError(f"study folder {folder} {what}")
    from .outdir import read_marker

    made_by = (read_marker(folder) or {}).get("command")
    if made_by not in (None, "study"):
        inside = folder / "study"
        where = (f"its study is {inside}" if (inside / SUMMARY_NAME).is_file()
                 else "it writes its own report.html")
        raise SegscopeError(f"{folder} is not a study folder: 'segscope {made_by}' made it "
                            f"({where})")
    path = folder / SUMMARY_NAME
    if not path.is_file():
        raise SegscopeError(f"{folder} is not a study folder: it has no {SUMMARY_NAME}")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegscopeError(f"cannot read {path}: {exc}") from None
    if not isinstance(summary, dict) or "figures" not in summary:
        raise SegscopeError(f"{path} is not a segscope study summary (no 'figures' key)")
    return summary


def render(summary: Mapping[str, Any], folder: Path,
           analyses: Sequence[Analysis] | None = None) -> str:
    """The report page as one HTML string.

    Raises
    ------
    SegscopeError
        A field of ``summary`` of the wrong type or missing, a figure outside ``folder``
        or not a readable PNG.
    """
    from markupsafe import Markup

    if analyses is None:
        from .analyses import REGISTRY as analyses
    folder = Path(folder)
    header = from_json(StudyHeader, dict(summary), SUMMARY_NAME)
    sections = []
    for analysis in analyses:
        shown = [s for s in analysis.sections if s.figure in header.figures]
        if not shown:
            continue
        if analysis.key not in summary:
            raise SegscopeError(f"{SUMMARY_NAME} has no {analysis.key!r}, which figure "
                                f"{shown[0].figure!r} needs")
        data = from_json(analysis.data, summary[analysis.key], f"{SUMMARY_NAME}.{analysis.key}")
        for s in shown:
            caption = Markup(caption_template(s.caption).render(d=data))
            table = None
            if s.table is not None:
                table = RenderedTable(s.table.header, s.table.rows(data))
            sections.append(RenderedSection(
                id=s.figure, title=s.title, table=table,
                figure=embed_figure(folder, header.figures[s.figure], caption, s.figure)))
    # A figure no analysis here owns (a newer segscope, a plug-in not loaded) is shown
    # with a caption that says so, never dropped without a word.
    owned = {s.id for s in sections} | {s.figure for a in analyses for s in a.sections}
    for key, name in header.figures.items():
        if key not in owned:
            caption = f"No analysis of this segscope version describes the figure {key!r}."
            sections.append(RenderedSection(id=key, title=key, table=None,
                                            figure=embed_figure(folder, name, caption, key)))
    return render_page(TEMPLATE, h=header, sections=sections, summary_name=SUMMARY_NAME)


