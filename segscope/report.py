"""The self-contained HTML report of a study folder.

:func:`write_report` reads ``summary.json`` and the PNGs a study wrote and makes one
``report.html``: every image embedded as a base64 data URI, the style inline, no script,
no external font, stylesheet or link to fetch, so the file reads the same offline, mailed
or archived. Every caption is generated from the numbers in ``summary.json``, so
``segscope report DIR`` rebuilds the same page from the folder alone.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._io import write_text
from .errors import SegscopeError

REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:2em;
 border-bottom:1px solid #ddd;padding-bottom:.2em}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.93em;color:#333;margin-top:.4em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.meta{color:#555;font-size:.9em} .note{background:#fff8e1;border-left:4px solid #f0b400;
 padding:.4em .8em;margin:.4em 0;font-size:.92em} .missing{color:#a00}
"""


def write_report(folder: str | os.PathLike) -> Path:
    """(Re)build ``report.html`` in a study folder from its ``summary.json`` and PNGs.

    Parameters
    ----------
    folder
        A folder written by :func:`segscope.study.run_study`.

    Returns
    -------
    Path
        The report's path.
    """
    folder = Path(folder)
    summary = read_summary(folder)
    page = render(summary, folder)
    return write_text(folder / REPORT_NAME, page)


def read_summary(folder: Path) -> dict[str, Any]:
    """The ``summary.json`` of a study folder; a one-line error when absent or broken."""
    if not folder.is_dir():
        what = "is a file, not a study folder" if folder.exists() else "not found"
        raise SegscopeError(f"study folder {folder} {what}")
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


def render(summary: Mapping[str, Any], folder: Path) -> str:
    """The report page as one HTML string."""
    esc = html.escape
    s = summary.get("settings", {})
    model = summary.get("model", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>segscope study: {esc(str(s.get('class', '')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Why does the network decide what it decides? A chapter-9 study</h1>",
        '<p class="meta">'
        f"checkpoint <code>{esc(str(summary.get('checkpoint', '?')))}</code> · "
        f"SegNet width {esc(str(model.get('width', '?')))}, classes "
        f"{esc(', '.join(model.get('class_names', [])))} · LRP rule "
        f"{esc(str(s.get('rule', '?')))} · class <b>{esc(str(s.get('class', '?')))}</b> · "
        f"layer {esc(str(s.get('layer', '?')))} · "
        f"{'quick run · ' if s.get('quick') else ''}"
        f"{esc(str(summary.get('created', '')))} · segscope "
        f"{esc(str(summary.get('segscope_version', '')))}</p>",
    ]
    for note in summary.get("notes", []):
        parts.append(f'<p class="note">{esc(str(note))}</p>')
    figures = summary.get("figures", {})
    for key, title, caption in SECTIONS:
        if key not in figures:
            continue
        try:
            text = caption(summary)
        except (KeyError, TypeError, ValueError, IndexError):
            text = ""  # a summary from another version: show the figure without numbers
        parts.append(f"<section id=\"{esc(key)}\"><h2>{esc(title)}</h2>")
        parts.append(_figure(folder / figures[key], text))
        extra = _EXTRAS.get(key)
        if extra is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError, IndexError):
                parts.append(extra(summary))
        parts.append("</section>")
    tables = summary.get("tables", {})
    if tables:
        parts.append("<h2>Files</h2><p>Numbers behind the figures, in the study folder: "
                     + ", ".join(f"<code>{esc(str(v))}</code>" for v in tables.values())
                     + f", and <code>{SUMMARY_NAME}</code>.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _figure(path: Path, caption: str) -> str:
    if not path.is_file():
        return (f'<p class="missing">figure {html.escape(path.name)} is missing from the '
                "study folder</p>")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _pct(v: float | None, digits: int = 1) -> str:
    if v is None or float(v) != float(v):
        return "n/a"
    x = round(100 * float(v), digits)
    return f"{x if x != 0 else 0.0:.{digits}f} %"  # never "-0.0 %"


def _num(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    v = float(v)
    return "n/a" if v != v else f"{v:.{digits}g}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    esc = html.escape
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"


# -- captions: each says what the figure shows and states its numbers -------------------------
def _cap_images(s: Mapping[str, Any]) -> str:
    im = s["images"]
    out = [f"The images the study explains, with their labels and the model's prediction. "
           f"Synthetic: {html.escape(im['synthetic']['name'])} (road-surface IoU "
           f"{_pct(im['synthetic'].get('iou'))})."]
    for key, word in (("real_best", "best"), ("real_worst", "worst")):
        if im.get(key):
            out.append(f"Real, segmented {word} among {im.get('scanned', '?')} scanned: "
                       f"{html.escape(im[key]['name'])} (IoU {_pct(im[key].get('iou'))}).")
    return " ".join(out)


def _cap_overlay(s: Mapping[str, Any]) -> str:
    lw = s["layerwise"]
    return (f"Relevance of each pixel (eq 8.1) for {html.escape(lw['concept'])}, on its own "
            "blue-white-red scale (eq 8.2) and blended over the image. Red pixels speak for "
            f"the class. The pixels receive {_pct(lw['share_reaching_pixels'])} of the output "
            "relevance; the rest was absorbed by the biases (§9.11)"
            + (f" or reached the zero padding beyond the image ({_pct(lw['dropped_share'])})"
               if lw.get("dropped_share") else "") + ".")


def _cap_layerwise(s: Mapping[str, Any]) -> str:
    lw = s["layerwise"]
    n = len(lw["totals"])
    return (f"Layer-wise propagation (§9.4, fig 9.4): the layer-sum map Σ_k R(k,y,x) (eq 9.1) "
            f"of all {n} layers, from the output <code>conv1_1_D</code> to the pixels "
            "<code>data</code>, each on its own scale; titles give the layer's total "
            f"relevance. The output starts with {_num(lw['output_total'])} and the pixels "
            f"end with {_num(lw['pixel_total'])} ({_pct(lw['share_reaching_pixels'])}).")


def _cap_feature_maps(s: Mapping[str, Any]) -> str:
    fv = s["feature_values"]
    top = fv["top"][0]
    return (f"Relevance of single features of <code>{html.escape(fv['layer'])}</code> on one "
            f"global scale (eq 9.2, fig 9.5): the features with the highest feature values, "
            f"then the lowest. Feature {top['feature']} holds the most, fv = "
            f"{top['fv']:.2f}, i.e. {top['fv']:.2f} times an equal share of the layer's "
            "relevance.")


def _cap_feature_values(s: Mapping[str, Any]) -> str:
    fv = s["feature_values"]
    top = ", ".join(f"{t['feature']} ({t['fv']:.2f})" for t in fv["top"][:5])
    return (f"Feature values (eq 9.3) of the {fv['channels']} features of "
            f"<code>{html.escape(fv['layer'])}</code>: each feature's share of the layer's "
            "relevance times the number of features, so they sum to the number of features "
            f"and 1 is an average share. Highest: {top}. The top {fv['top_share_features']} "
            f"features hold {_pct(fv['top_share'])} of the layer's relevance.")


def _cap_all_fv(s: Mapping[str, Any]) -> str:
    peaks = s["feature_values"]["max_fv_per_layer"]
    items = sorted(peaks.items(), key=lambda kv: -kv[1])[:3]
    return ("Feature values of every layer (fig 9.6 for all of them). A high peak means few "
            "features carry the decision in that layer; the most peaked layers here are "
            + ", ".join(f"<code>{html.escape(k)}</code> (max {v:.1f})" for k, v in items) + ".")


def _cap_switch_off(s: Mapping[str, Any]) -> str:
    so = s["switch_off"]
    sh = so["pixel_shares"]
    parts = [f"{_pct(float(k), 0)} of the relevance sits in {_pct(v)} of the pixels"
             for k, v in sh.items()]
    neg = so.get("negative_share", 0.0)
    return (f"Switch-off (§9.7, fig 9.8) for {html.escape(so['concept'])}: pixels are switched "
            "off from the least relevant up; the curve shows the relevance kept against the "
            "pixels still on, the frames the pixels still on at each share (the rest dark). "
            + "; ".join(parts) + ". Shares are of the positive relevance; "
            f"{_pct(neg)} of the absolute pixel relevance is negative.")


def _cap_separation(s: Mapping[str, Any]) -> str:
    sp = s["separation"]
    ranking = sp["ranking"]
    dark = sum(1 for r in ranking if r["lit_pixels"] == 0)
    top = ", ".join(str(r["feature"]) for r in ranking[:5])
    return (f"Feature separation (§9.8, fig 9.9): the relevance of each of "
            f"{len(ranking)} features of <code>{html.escape(sp['layer'])}</code> alone, "
            "propagated to the pixels, lit from the most relevant pixel of the whole block "
            f"down to a common threshold holding {_pct(sp['threshold_share'], 0)} of the "
            f"block's relevance. {dark} of the {len(ranking)} features stay dark. The most "
            f"important features (by feature value) are {top}.")


def _cap_classes(s: Mapping[str, Any]) -> str:
    cc = s["class_comparison"]
    spec = "; ".join(
        f"{html.escape(c)}: " + (", ".join(str(k) for k in ks) if ks else "none")
        for c, ks in cc["specific"].items()
    )
    return (f"Class comparison (§9.9, fig 9.11-9.12): each feature of "
            f"<code>{html.escape(cc['layer'])}</code> as the point of its feature values for "
            f"the true positives of {', '.join(map(html.escape, cc['classes']))}, raw (left) "
            "and scaled to unit length (eq 9.4, right); colour = the class of its largest "
            f"component. Features most specific to each class: {spec}.")


def _cap_profiles(s: Mapping[str, Any]) -> str:
    sv = s["synthetic_vs_real"]
    return ("Feature-value profiles of single road pixels (§9.10, fig 9.14-9.16), overlaid "
            "for a few layers: " + "; ".join(
                html.escape(c["description"]) for c in sv["comparisons"].values()) + ".")


def _cap_divergence(s: Mapping[str, Any]) -> str:
    sv = s["synthetic_vs_real"]
    parts = []
    for name, c in sv["comparisons"].items():
        parts.append(f"{html.escape(name)}: mean 1 − cosine {_num(c['mean_cosine'], 2)}, "
                     f"mean Jensen-Shannon {_num(c['mean_js'], 2)} (encoder "
                     f"{_num(c['encoder_js'], 2)}, decoder {_num(c['decoder_js'], 2)})")
    return ("How far the feature-value profiles of two explanations are, layer by layer "
            "(0 = the same profile): " + "; ".join(parts) + ". The thesis found two pixels "
            "of one image near-identical, a well-segmented real image different in the "
            "shallow layers, a badly segmented one in the deep layers.")


def _cap_bias(s: Mapping[str, Any]) -> str:
    b = s["bias"]
    return (f"Bias absorption (§9.11): for {b['pixels']} single-pixel concepts of class "
            f"{html.escape(b['class'])} on {b['images']} images, the share of the output "
            "relevance that reaches the pixels against the class probability at that pixel. "
            f"The share ranges from {_pct(b['share_min'])} to {_pct(b['share_max'])} (median "
            f"{_pct(b['share_median'])}); correlation with the probability: Pearson "
            f"{_num(b['pearson'], 2)}, Spearman {_num(b['spearman'], 2)}.")


def _cap_absorbed(s: Mapping[str, Any]) -> str:
    a = s["bias"]["absorbed_share"]
    items = sorted(a.items(), key=lambda kv: -abs(kv[1]))[:3]
    total = sum(a.values())
    return (f"Relevance absorbed by the biases in each layer for the main concept, as a share "
            f"of the output relevance: {_pct(total)} in all; most in "
            + ", ".join(f"<code>{html.escape(k)}</code> ({_pct(v)})" for k, v in items) + ".")


def _extra_separation(s: Mapping[str, Any]) -> str:
    rows = [[r["feature"], f"{r['fv']:.3f}", f"{r['pixel_total']:.4g}", r["lit_pixels"]]
            for r in s["separation"]["ranking"][:10]]
    return _table(["feature", "feature value", "relevance at pixels", "lit pixels"], rows)


def _extra_switch_off(s: Mapping[str, Any]) -> str:
    rows = [[_pct(float(k), 0), _pct(v)] for k, v in s["switch_off"]["pixel_shares"].items()]
    return _table(["relevance kept", "pixels needed"], rows)


SECTIONS: list[tuple[str, str, Callable[[Mapping[str, Any]], str]]] = [
    ("images", "Images", _cap_images),
    ("overlay", "Pixel relevance", _cap_overlay),
    ("layerwise", "Layer-wise propagation (§9.4)", _cap_layerwise),
    ("feature_maps", "Relevance of single features (§9.5)", _cap_feature_maps),
    ("feature_values", "Feature values (§9.6)", _cap_feature_values),
    ("all_feature_values", "Feature values of all layers (§9.6)", _cap_all_fv),
    ("switch_off", "Switching pixels off (§9.7)", _cap_switch_off),
    ("separation", "Feature separation (§9.8)", _cap_separation),
    ("class_comparison", "Class comparison (§9.9)", _cap_classes),
    ("profiles", "Synthetic vs real: profiles (§9.10)", _cap_profiles),
    ("divergence", "Synthetic vs real: divergence per layer (§9.10)", _cap_divergence),
    ("bias", "Bias absorption (§9.11)", _cap_bias),
    ("absorbed", "Relevance absorbed per layer (§9.11)", _cap_absorbed),
]

_EXTRAS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "separation": _extra_separation,
    "switch_off": _extra_switch_off,
}
