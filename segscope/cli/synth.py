"""``segscope synth``: write synthetic road scenes and their labels to a folder."""

from __future__ import annotations

import json
import sys

import click

from ..data.synth_folder import SHEET_SAMPLES, write_dataset  # noqa: F401 - re-exported
from ..errors import SegscopeError
from ._options import parse_size


def _parse_n(ctx, param, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise SegscopeError(f"--n must be a whole number, got {value!r}") from None
    if n < 1:
        raise SegscopeError(f"--n must be at least 1, got {n}")
    return n


def _parse_seed(ctx, param, value: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        raise SegscopeError(f"--seed must be a non-negative whole number, got {value!r}") from None
    if seed < 0:
        raise SegscopeError(f"--seed must be non-negative, got {seed}")
    return seed


def _parse_size(ctx, param, value: str) -> tuple[int, int]:
    h, w = parse_size(value)
    if h < 8 or w < 8:
        raise SegscopeError(f"--size must be at least 8x8, got {value!r}")
    return h, w


def _parse_sets(ctx, param, values: tuple[str, ...]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SegscopeError(f"--set expects KEY=VALUE, got {item!r}")
        value: object = text
        for conv in (int, float):
            try:
                value = conv(text)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def _parse_factors(ctx, param, values: tuple[str, ...]) -> dict[str, str]:
    from ..data.synthetic_factors import parse_factor

    return dict(parse_factor(v) for v in values)


def synthetic_from_options(n: int, size: tuple[int, int], seed: int, preset: str | None,
                           factor_file: str | None, factors: dict[str, str],
                           sets: dict[str, object]):
    """The :class:`SyntheticRoads` that ``--preset``, ``--factors FILE``, ``--factor`` and
    ``--set`` describe (the command line wins over the file)."""
    from ..data.synthetic import SyntheticRoads
    from ..data.synthetic_factors import load_factor_file

    base: dict = {"preset": "narrow", "factors": {}, "set": {}}
    if factor_file is not None:
        base = load_factor_file(factor_file)
    return SyntheticRoads(n, size=size, seed=seed, preset=preset or base["preset"],
                          factors={**base["factors"], **factors}, **{**base["set"], **sets})


@click.command("synth")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Output folder (created): images/, labels/, manifest.json, contact_sheet.png.")
@click.option("--n", "n", default="100", show_default=True, callback=_parse_n,
              help="Number of scenes.")
@click.option("--size", default="360x480", show_default=True, callback=_parse_size,
              help="Image size HxW.")
@click.option("--seed", default="0", show_default=True, callback=_parse_seed,
              help="Seed; scene i of a seed is always the same picture.")
@click.option("--preset", default=None,
              help="narrow (a highway, one look), urban (streets like CamVid's) or randomized "
                   "(either, every factor randomised). [default: narrow]")
@click.option("--factor", "factors", multiple=True, callback=_parse_factors,
              metavar="NAME=MODE",
              help="Switch a randomisation factor on, off or to one fixed value, e.g. "
                   "--factor shadows=off --factor camera=fixed (list: --list-factors).")
@click.option("--factors", "factor_file", type=click.Path(dir_okay=False), default=None,
              help='JSON (or TOML) file {"preset": ..., "factors": {NAME: MODE}, '
                   '"set": {KEY: VALUE}}; --preset/--factor/--set given here win.')
@click.option("--set", "sets", multiple=True, callback=_parse_sets, metavar="KEY=VALUE",
              help="Fix a scene setting for every image, e.g. --set curvature=0 --set vehicles=0.")
@click.option("--list-factors", is_flag=True, help="List the factors and presets, then exit.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted synth of the same settings in --out.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier synth run in --out (never a folder segscope did not make).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def synth(out: str | None, n: int, size: tuple[int, int], seed: int, preset: str | None,
          factors: dict[str, str], factor_file: str | None, sets: dict[str, object],
          list_factors: bool, resume: bool, overwrite: bool, quiet: bool) -> None:
    """Write N synthetic road scenes with exact ROAD3 labels to OUT.

    Layout: OUT/images/000000.png (RGB), OUT/labels/000000.png (8-bit ids: 0 background,
    1 road, 2 markings), OUT/manifest.json (settings, every factor's mode) and
    OUT/contact_sheet.png.

    \b
    Examples:
      segscope synth --out data/synth --n 1000 --preset urban
      segscope synth --out data/no-shadows --preset urban --factor shadows=off
    """
    from tqdm import tqdm

    from ..outdir import claim_output

    if list_factors:
        click.echo(factor_table())
        return
    if out is None:
        raise SegscopeError("--out is required: the folder to write the scenes to")
    data = synthetic_from_options(n, size, seed, preset, factor_file, factors, sets)
    settings = json.loads(json.dumps(data.settings))
    folder = claim_output(out, "synth", resume=resume, overwrite=overwrite, settings=settings)
    if resume:
        from ..outdir import changed_settings, read_marker

        before = (read_marker(folder) or {}).get("settings")
        if before != settings:
            changed = ", ".join(changed_settings(before if isinstance(before, dict) else {},
                                                 settings))
            raise SegscopeError(
                f"--resume: {out} was written with other settings ({changed}); run the same "
                "command again with --resume, or use --overwrite to start over")
    write_dataset(data, folder, resume=resume,
                  progress=lambda it: tqdm(it, total=n, desc="synth", unit="img",
                                           disable=quiet or not sys.stderr.isatty()))
    if not quiet:
        click.echo(f"wrote {n} scenes ({size[0]}x{size[1]}, preset {data.preset}) to {out}")


def factor_table() -> str:
    """The factors, their meaning and each preset's mode, as text."""
    from ..data.synthetic_factors import FACTORS, PRESETS_TABLE

    names = list(PRESETS_TABLE)
    lines = [f"{'factor':<14}" + "".join(f"{n:<11}" for n in names) + "what"]
    for name, f in FACTORS.items():
        modes = "".join(f"{PRESETS_TABLE[n].modes[name]:<11}" for n in names)
        lines.append(f"{name:<14}{modes}{f.help}")
    lines.append("")
    lines.append("modes: on (randomised), fixed (one nominal value), off (absent; for camera, "
                 "geometry, layout, palette, surface, exposure, white_balance: as fixed)")
    return "\n".join(lines)
