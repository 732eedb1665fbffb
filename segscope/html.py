"""The pieces every segscope HTML page is made of.

The study report (:mod:`segscope.report`), the diagnosis, faithfulness and ablation
reports all render a Jinja2 template of ``segscope/templates`` (each extends
``base.html.j2``: the style inline, no script, nothing to fetch) with the helpers here:
:func:`render_page`, :func:`embed_figure` (a PNG of the page's own folder, checked and
base64-encoded), :class:`RenderedTable` and the number filters :func:`pct`, :func:`num`,
:func:`fixed` and :func:`largest`. The environment uses :class:`jinja2.StrictUndefined`,
so a template naming a field its data does not have raises instead of printing a blank.
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SegscopeError

if TYPE_CHECKING:
    import jinja2

#: The file whose figure entries :func:`embed_figure` names in its messages.
SUMMARY_NAME = "summary.json"


@dataclass
class RenderedTable:
    header: Sequence[str]
    rows: list[list[Any]]


@dataclass
class EmbeddedFigure:
    """A PNG of the folder as a page shows it (see :func:`embed_figure`)."""

    file: str
    alt: str
    image: str | None  # base64 PNG; None when the file is missing
    caption: Any  # str, or markupsafe.Markup for HTML
    folder_word: str = "study"  # "figure X is missing from the <word> folder"


def render_page(template: str, **context: Any) -> str:
    """A page from one of segscope's templates (``segscope/templates``): they extend
    ``base.html.j2`` (the style, no script, nothing to fetch) and may import the
    ``figure`` and ``table`` macros of ``macros.html.j2``."""
    return environment().get_template(template).render(**context)


# -- the template environment ---------------------------------------------------------------------
@functools.cache
def environment() -> jinja2.Environment:
    """The report's Jinja2 environment: package templates, autoescape, StrictUndefined,
    and the number filters ``pct``, ``num``, ``fixed`` and ``largest``."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("segscope", "templates"),
        undefined=jinja2.StrictUndefined, autoescape=True, keep_trailing_newline=True)
    env.filters.update(pct=pct, num=num, fixed=fixed, largest=largest)
    return env


@functools.cache
def caption_template(source: str) -> jinja2.Template:
    """A caption template, compiled once."""
    return environment().from_string(source)


def pct(v: float | None, digits: int = 1) -> str:
    """A share as a percentage, ``"n/a"`` for None or NaN, never ``"-0.0 %"``."""
    if v is None or float(v) != float(v):
        return "n/a"
    x = round(100 * float(v), digits)
    return f"{x if x != 0 else 0.0:.{digits}f} %"


def num(v: float | None, digits: int = 3) -> str:
    """``digits`` significant digits, ``"n/a"`` for None or NaN."""
    if v is None:
        return "n/a"
    v = float(v)
    return "n/a" if v != v else f"{v:.{digits}g}"


def fixed(v: float, digits: int = 2) -> str:
    """``digits`` decimals."""
    return f"{float(v):.{digits}f}"


def largest(mapping: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The ``n`` items of ``mapping`` with the largest absolute values (ties: in order)."""
    return sorted(mapping.items(), key=lambda kv: -abs(kv[1]))[:n]


# -- figures -----------------------------------------------------------------------------------
def embed_figure(folder: str | os.PathLike, name: str, caption: Any, key: str = "",
                 folder_word: str = "study") -> EmbeddedFigure:
    """The figure ``name`` of ``folder``, base64-encoded for a page, after checking that
    it lies inside the folder and is a whole PNG.

    A missing file gives ``image=None`` (the page says it is missing); an absolute path,
    a path or link leading out of the folder, a truncated or non-PNG file is a
    :class:`SegscopeError` naming ``summary.json.figures.<key>``.
    """
    from PIL import Image

    folder = Path(folder)
    where = f"{SUMMARY_NAME}.figures.{key}" if key else f"figure {name}"
    shown = EmbeddedFigure(file=Path(name).name, alt=Path(name).stem, image=None,
                           caption=caption, folder_word=folder_word)
    if not name or Path(name).is_absolute() or Path(name).drive:
        raise SegscopeError(f"{where} is {name!r}: a report embeds only files inside its "
                            "folder, named relative to it")
    root = folder.resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(root):
        raise SegscopeError(f"{where} is {name!r}, which is outside the {folder_word} "
                            "folder; a report embeds only files inside its folder")
    if not path.exists():
        return shown
    if not path.is_file():
        raise SegscopeError(f"{where}: {name} is not a file")
    data = path.read_bytes()
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise SegscopeError(f"{where}: {name} is a {img.format} file, not a PNG")
            img.load()  # decodes every row: a truncated file raises here
    except SegscopeError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise SegscopeError(f"{where}: {name} is not a readable PNG ({exc}); run again "
                            "to write it") from None
    shown.image = base64.b64encode(data).decode("ascii")
    return shown
