"""The self-contained ``report.html`` of a ``segscope faithfulness`` folder.

Built from ``summary.json`` and the PNGs beside it only (images inlined as base64, the
style inline, nothing fetched), so that it can be rebuilt from the folder alone.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from ._io import write_text
from .errors import SegscopeError
from .report import _CSS, _figure, _num, _table

REPORT_NAME = "report.html"


def write_faithfulness_report(folder: str | os.PathLike) -> Path:
    """(Re)write ``report.html`` in a faithfulness folder; returns its path."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SegscopeError(f"{folder} holds no readable summary.json ({exc})") from None
    return write_text(folder / REPORT_NAME, render(summary, folder))


def _interval(row: dict[str, Any], metric: str) -> str:
    return (f"{_num(row[metric])} [{_num(row[f'{metric}_lo'])}, "
            f"{_num(row[f'{metric}_hi'])}]")


def table_html(rows: list[dict[str, Any]]) -> str:
    """The AOPC table: per method the mean and 95 % interval of each metric."""
    header = ["method", "images", "AOPC MoRF ↑", "AOPC LeRF ↓", "ABPC ↑", "deletion ↓",
              "insertion ↑"]
    body = [[r["method"], r["images"], *[_interval(r, m) for m in
                                         ("aopc_morf", "aopc_lerf", "abpc", "deletion",
                                          "insertion")]] for r in rows]
    return _table(header, body)


def render(summary: dict[str, Any], folder: Path) -> str:
    esc = html.escape
    s = summary["settings"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>segscope faithfulness"
             f"</title><style>{_CSS}</style></head><body>",
             "<h1>Which explanation to trust?</h1>",
             f"<p class='meta'>model <code>{esc(str(s['checkpoint']))}</code>; concept: "
             f"{esc(s['concept'])} of {esc(summary['class'])} ({esc(s['assign'])}); "
             f"{s['patch']}x{s['patch']} patches replaced by <code>{esc(s['baseline'])}</code>"
             f"; {len(summary['methods'])} methods.</p>"]
    for note in summary.get("notes", []):
        parts.append(f"<p class='note'>{esc(note)}</p>")
    parts.append("<h2>Region perturbation</h2><p>Each method explains the concept once per "
                 "image. Its patches are then replaced by the baseline most relevant first "
                 "(MoRF) or least relevant first (LeRF), or put back into the baseline most "
                 "relevant first (insertion), and the concept's score is measured after "
                 "every step. AOPC (Samek et al. 2017) is the mean drop of the score over the "
                 "curve; ABPC = AOPC MoRF − AOPC LeRF; deletion and insertion are the areas "
                 "under the curves. All are divided by the unperturbed score |f(x)| of each "
                 "image; mean over images with a 95 % bootstrap interval. The random map and "
                 "the Sobel edge map ignore the model: a method must beat them.</p>")
    for key, rows in summary["table"].items():
        info = summary["sets"].get(key, {})
        best = summary.get("best", {}).get(key, {})
        parts.append(f"<h3>{esc(key)}: {esc(str(info.get('source', '')))} "
                     f"({info.get('images', 0)} images)</h3>")
        parts.append(table_html(rows))
        if best:
            parts.append("<p>Best by AOPC MoRF: <b>" + esc(best.get("aopc_morf", "n/a"))
                         + "</b>; by ABPC: <b>" + esc(best.get("abpc", "n/a")) + "</b>.</p>")
    figs = summary.get("figures", {})
    if "curves" in figs:
        parts.append(_figure(folder / figs["curves"], "Mean perturbation curves per method "
                             "(score relative to the unperturbed score)."))
    if "maps" in figs:
        parts.append(_figure(folder / figs["maps"], "The maps scored, on the first image."))
    san = summary.get("sanity", {})
    parts.append("<h2>Sanity check: cascading randomisation</h2>")
    if san.get("images"):
        flagged = san.get("flagged", [])
        parts.append(
            "<p>The weighted layers are replaced by random weights from the output layer "
            f"down (Adebayo et al. 2018), on {san['images']} image(s). A faithful method's "
            "map must change: its Spearman correlation and SSIM with the trained model's "
            "map should fall. Flagged (Spearman ≥ "
            f"{san.get('threshold', 0.5):g} with every layer random): "
            + (", ".join(f"<b>{esc(f)}</b>" for f in flagged) if flagged else "none")
            + ". The floors are expected to be flagged.</p>")
        if "sanity" in figs:
            parts.append(_figure(folder / figs["sanity"], "Similarity to the trained "
                                 "model's map per cascade step."))
        last = [[m, _num(v[-1]), _num(san["ssim"][m][-1]), "yes" if m in flagged else ""]
                for m, v in san["spearman"].items()]
        parts.append(_table(["method", "Spearman, all random", "SSIM, all random",
                             "flagged"], last))
    else:
        parts.append("<p>Not run (--sanity-images 0).</p>")
    parts.append("<p class='meta'>Numbers: " + ", ".join(
        f"<code>{esc(t)}</code>" for t in summary.get("tables", []))
        + ", <code>summary.json</code>.</p></body></html>")
    return "\n".join(parts) + "\n"
