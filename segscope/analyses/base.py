"""The shape of one analysis of a study, and of its sections in the report.

An analysis is a subclass of :class:`Analysis` with

- ``key``: where its numbers go in ``summary.json``;
- ``data``: the dataclass of those numbers (checked field by field when a report is
  rebuilt from ``summary.json``, see :func:`segscope._typed.from_json`);
- ``sections``: the report's sections it owns, one per figure, each with a heading, a
  Jinja2 caption template (the typed data is ``d``) and optionally a table;
- :meth:`Analysis.run`: computes the numbers from a
  :class:`~segscope.analyses.context.StudyContext`, writes its figures and CSV tables
  through the context and returns an instance of ``data``.

The report's order is the order of :data:`segscope.analyses.REGISTRY`; see
``docs/extending.md`` for a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .context import StudyContext


@dataclass(frozen=True)
class Table:
    """A small table under a figure: column headers and the rows, from the typed data."""

    header: tuple[str, ...]
    rows: Callable[[Any], list[list[Any]]]


@dataclass(frozen=True)
class Section:
    """One figure of the report.

    Attributes
    ----------
    figure
        The figure's key in ``summary["figures"]``; the section is shown when it is there.
    title
        The heading.
    caption
        Jinja2 template of the caption (HTML; values are escaped). ``d`` is the analysis's
        typed data; filters ``pct`` (a share as "12.3 %"), ``num`` (3 significant digits)
        and ``fixed`` (fixed decimals) format numbers. A name that is not there raises.
    table
        An optional :class:`Table` shown under the figure.
    """

    figure: str
    title: str
    caption: str
    table: Table | None = None


class Analysis:
    """One analysis of a study: its numbers, figures, tables and report sections."""

    #: Key of its numbers in ``summary.json``.
    key: ClassVar[str]
    #: The dataclass of its numbers.
    data: ClassVar[type]
    #: Its sections of the report, in order.
    sections: ClassVar[tuple[Section, ...]] = ()
    #: Short name shown by the progress bar.
    label: ClassVar[str] = ""
    #: Shared results of the context it reads that are freed once no analysis left needs
    #: them (``"main_layers"``: every layer of the main explanation).
    needs: ClassVar[frozenset[str]] = frozenset()

    def run(self, ctx: StudyContext) -> Any:
        """Compute the numbers, write figures and tables; return an instance of ``data``."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.label or self.key
