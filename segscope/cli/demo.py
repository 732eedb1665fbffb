"""``segscope demo``: synthetic data -> training -> evaluation (-> real data), one folder."""

from __future__ import annotations

import click

from ._options import SEED, device_option, overwrite_option, split_option


@click.command("demo")
@click.option("--out", default="segscope-demo", show_default=True, type=click.Path(),
              help="Output folder.")
@click.option("--real", type=click.Path(), default=None,
              help="Also score on real images: a CamVid folder (or any --data folder).")
@split_option
@click.option("--quick", is_flag=True, help="Smoke test: tiny model, few iterations (< 30 s).")
@device_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--iters", type=int, default=None, help="Training iterations (default: tuned).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; only the summary table.")
@overwrite_option
@click.option("--resume", is_flag=True,
              help="Continue an earlier demo run in --out with the same settings (an "
                   "interrupted training resumes from its checkpoint).")
def demo(out, real, split, quick, device, seed, iters, quiet, overwrite, resume) -> None:
    """Run segscope end to end on built-in synthetic road scenes, on a CPU.

    \b
    Renders synthetic scenes, trains a small SegNet, scores it on synthetic validation
    scenes and, with --real, on real images (CamVid is scored on the road surface).
    Writes everything into --out: summary.json, train/ (model, metrics, curves),
    synthetic-sample/ (scenes + contact sheet), predictions/, study/ (report.html).
    --out must be new or empty, or an earlier demo run with --overwrite or --resume.
    """
    from pathlib import Path

    from ..demo import DemoOptions, format_summary, run_demo
    from ..errors import SegscopeError

    if real is not None and not Path(real).exists():
        raise SegscopeError(f"--real folder not found: {real}")
    if split is not None and real is None:
        raise SegscopeError("--split needs --real")
    kw = {"out": out, "real": real, "split": split, "device": device, "seed": seed,
          "quiet": quiet, "overwrite": overwrite, "resume": resume}
    if iters is not None:
        if iters < 1:
            raise SegscopeError(f"--iters must be at least 1, got {iters}")
        kw["iters"] = iters
    options = DemoOptions.quick_options(**kw) if quick else DemoOptions(**kw)
    summary = run_demo(options)
    click.echo(format_summary(summary))
    click.echo(f"results: {Path(out) / 'summary.json'}")
    if (summary.get("study") or {}).get("report"):
        click.echo(f"report: {summary['study']['report']}")
