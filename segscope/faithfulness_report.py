"""The self-contained ``report.html`` of a ``segscope faithfulness`` folder.

Rendered from ``templates/faithfulness.html.j2`` (segscope's shared page style) with the
numbers of ``summary.json`` and the PNGs beside it only (images inlined as base64,
nothing fetched), so that it can be rebuilt from the folder alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._io import write_text
from .errors import SegscopeError
from .html import RenderedTable, embed_figure, num, render_page

REPORT_NAME = "report.html"
TEMPLATE = "faithfulness.html.j2"
#: Captions of the figures a faithfulness folder holds.
CAPTIONS = {
    "curves": "Mean perturbation curves per method (score relative to the unperturbed score).",
    "maps": "The maps scored, on the first image.",
    "sanity": "Similarity to the trained model's map per cascade step.",
}
_METRICS = ("aopc_morf", "aopc_lerf", "abpc", "deletion", "insertion")


def write_faithfulness_report(folder: str | os.PathLike) -> Path:
    """(Re)write ``report.html`` in a faithfulness folder; returns its path."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SegscopeError(f"{folder} holds no readable summary.json ({exc})") from None
    return write_text(folder / REPORT_NAME, render(summary, folder))


def _interval(row: dict[str, Any], metric: str) -> str:
    return f"{num(row[metric])} [{num(row[f'{metric}_lo'])}, {num(row[f'{metric}_hi'])}]"


def aopc_rendered(rows: list[dict[str, Any]]) -> RenderedTable:
    """The AOPC table: per method the mean and 95 % interval of each metric."""
    return RenderedTable(
        ("method", "images", "AOPC MoRF ↑", "AOPC LeRF ↓", "ABPC ↑", "deletion ↓",
         "insertion ↑"),
        [[r["method"], r["images"], *[_interval(r, m) for m in _METRICS]] for r in rows])


def render(summary: dict[str, Any], folder: Path) -> str:
    figs = summary.get("figures", {})

    def fig(key: str):
        return embed_figure(folder, figs[key], CAPTIONS[key], key, folder_word="faithfulness")

    tables = []
    for key, rows in summary["table"].items():
        info = summary["sets"].get(key, {})
        best = summary.get("best", {}).get(key, {})
        tables.append({"key": key, "source": info.get("source", ""),
                       "images": info.get("images", 0), "table": aopc_rendered(rows),
                       "best_morf": best.get("aopc_morf"), "best_abpc": best.get("abpc")})
    san = summary.get("sanity", {})
    flagged = san.get("flagged", [])
    sanity_rows = [[m, num(v[-1]), num(san["ssim"][m][-1]), "yes" if m in flagged else ""]
                   for m, v in san.get("spearman", {}).items()]
    return render_page(
        TEMPLATE, s=summary["settings"], cls=summary["class"],
        n_methods=len(summary["methods"]), notes=summary.get("notes", []), tables=tables,
        figures=[fig(k) for k in ("curves", "maps") if k in figs],
        sanity_images=san.get("images", 0), threshold=f"{san.get('threshold', 0.5):g}",
        flagged=flagged, sanity_figure=fig("sanity") if "sanity" in figs else None,
        sanity_table=RenderedTable(("method", "Spearman, all random", "SSIM, all random",
                                    "flagged"), sanity_rows),
        files=summary.get("tables", []))
