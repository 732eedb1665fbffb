"""``segscope report``: rebuild report.html from a study folder."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("folder", type=click.Path())
def report(folder) -> None:
    """Rebuild FOLDER/report.html from FOLDER/summary.json and the PNGs beside it.

    The page is self-contained: images are embedded, nothing is fetched when it is read.
    """
    from ..report import write_report

    click.echo(f"report: {write_report(folder)}")
