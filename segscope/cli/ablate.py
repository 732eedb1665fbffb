"""``segscope ablate``: one model per factor setting, each scored on a real set."""

from __future__ import annotations

import click

from ._options import SEED, device_option, parse_size


@click.command("ablate")
@click.option("--real", required=True,
              help="Real dataset every model is scored on (CamVid, Cityscapes, a folder ...).")
@click.option("--split", "real_split", default=None,
              help="Split of the real dataset (default: val when it has one, else the only "
                   "split there is; 'none' for datasets without splits).")
@click.option("--out", default="segscope-ablate", show_default=True, type=click.Path(),
              help="Output folder: runs/<setting>/, ablation.csv/.json/.png, report.html.")
@click.option("--preset", default="urban", show_default=True,
              help="Synthetic preset the settings vary (narrow, urban, randomized).")
@click.option("--factors", "factor_list", default=None, metavar="A,B,...",
              help="Factors to switch off one at a time [default: every factor the preset "
                   "randomises]; 'none' for only all_on and --setting rows.")
@click.option("--factor-mode", default="off", show_default=True,
              type=click.Choice(["off", "fixed"]), help="What 'without a factor' means.")
@click.option("--factor", "base", multiple=True, metavar="NAME=MODE",
              help="Change the preset for every setting, e.g. --factor jpeg=off.")
@click.option("--setting", "settings", multiple=True,
              metavar="NAME=FACTOR=MODE[,...] | NAME=FOLDER",
              help="An extra setting: factor modes, or a folder of your own synthetic data.")
@click.option("--no-all-on", is_flag=True, help="Leave out the all_on reference.")
@click.option("--scenes", "n", default=4000, show_default=True, type=click.IntRange(min=1),
              help="Synthetic training scenes per setting (rendered on the fly).")
@click.option("--size", default="128x192", show_default=True, help="Training image size HxW.")
@click.option("--real-size", default=None,
              help="Resize real images to HxW before scoring (default: the training width "
                   "of --size, with the images' own aspect ratio).")
@click.option("--real-limit", type=click.IntRange(min=1), default=None,
              help="Score on the first N real images only.")
@click.option("--width", default=0.25, show_default=True, type=float, help="SegNet width.")
@click.option("--iters", default=600, show_default=True, type=click.IntRange(min=1),
              help="Training iterations per setting.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=3e-3, show_default=True, type=float, help="Adam learning rate.")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--checkpoint-every", default=100, show_default=True, type=click.IntRange(min=0),
              help="Checkpoint each training every N iterations (what a resume keeps).")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="DataLoader workers rendering the scenes.")
@click.option("--diagnose/--no-diagnose", "run_diagnose", default=True, show_default=True,
              help="Run the segscope diagnose fingerprint of every model on the real set.")
@device_option
@click.option("--resume", is_flag=True, help="Continue an interrupted ablation in --out.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier ablation in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def ablate(real, real_split, out, preset, factor_list, factor_mode, base, settings, no_all_on,
           n, size, real_size, real_limit, width, iters, batch_size, lr, seed,
           checkpoint_every, workers, run_diagnose, device, resume, overwrite, quiet) -> None:
    """Train one model per factor setting of the synthetic data, score each on a real set.

    The settings are: all_on (the preset), no_<factor> for each factor (switched off),
    and any --setting. Every model is an ordinary resumable training in
    OUT/runs/<setting>/; after Ctrl-C, the same command with --resume continues where it
    stopped. Under torchrun each process trains its share of the settings.

    \b
    Examples:
      segscope ablate --real ~/data/CamVid --preset urban --iters 600
      segscope ablate --real ~/data/CamVid --factors shadows,sidewalks,vehicles
      segscope ablate --real ~/data/CamVid --factors none \\
          --setting mine=~/data/my-synth --setting plain=surface=fixed,shadows=off
    """
    import sys

    from ..ablate import AblationConfig, run_ablation
    from ..data.synthetic_factors import parse_factor
    from ..errors import SegscopeError

    if real_split == "none" and real is not None:
        from pathlib import Path

        from ..data.real import available_splits

        have = available_splits(real) if Path(real).expanduser().is_dir() else []
        if have:
            raise SegscopeError(f"--split none is for a folder without splits; {real} has "
                                f"{', '.join(have)} (name one, or leave --split out for val)")
    factors = None
    if factor_list is not None:
        factors = [] if factor_list.strip() == "none" else [
            f.strip() for f in factor_list.split(",") if f.strip()]
        if not factors and factor_list.strip() != "none":
            raise SegscopeError("--factors names no factor (give A,B,... or 'none' for "
                                "only all-on and the --setting runs)")
    config = AblationConfig(
        real=real, out=out, preset=preset, factors=factors, factor_mode=factor_mode,
        settings=tuple(settings), base_factors=dict(parse_factor(b) for b in base),
        include_all=not no_all_on, n=n, seed=seed, size=parse_size(size),
        real_split=None if real_split == "none" else real_split,
        real_size=parse_size(real_size) if real_size else None, real_limit=real_limit,
        width=width, iters=iters, batch_size=batch_size, lr=lr,
        checkpoint_every=checkpoint_every, workers=workers, device=device, quiet=quiet,
        resume=resume, overwrite=overwrite, diagnose=run_diagnose)

    def log(text: str) -> None:
        if not quiet:
            click.echo(text, err=not sys.stdout.isatty())

    summary = run_ablation(config, log=log)
    if summary and not quiet:
        click.echo(f"{'setting':<22}{'real IoU':>9}{'Δ all_on':>10}")
        for r in summary["rows"]:
            d = r["delta_to_all_on"]
            click.echo(f"{r['setting']:<22}{r['road_surface_iou']:>9.3f}"
                       f"{'' if d is None else f'{d:+.3f}':>10}")
        click.echo(f"report: {out}/report.html")
