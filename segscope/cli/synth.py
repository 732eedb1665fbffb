"""``segscope synth``: write synthetic road scenes and their labels to a folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from ..errors import SegscopeError
from ._options import parse_size

#: How many samples the contact sheet shows.
SHEET_SAMPLES = 16


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
        from ..outdir import read_marker

        before = (read_marker(folder) or {}).get("settings")
        if before != settings:
            raise SegscopeError(
                f"--resume: {out} was written with other settings; run the same command "
                "again with --resume, or use --overwrite to start over")
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


def write_dataset(data, out: Path, progress=lambda it: it, resume: bool = False) -> dict:
    """Write every scene of ``data`` (a :class:`SyntheticRoads`) under ``out``; return the
    manifest. With ``resume``, scenes whose image and label are already there are kept
    (each file is written atomically, so a file that exists is complete)."""
    from PIL import Image

    from .. import __version__
    from .._io import atomic_path, write_json
    from ..data.classes import IGNORE, ROAD3
    from ..viz.contact import contact_sheet

    if out.exists() and not out.is_dir():
        raise SegscopeError(f"--out {out} exists and is not a folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    counts = np.zeros(len(ROAD3), np.int64)
    sheet_images, sheet_labels = [], []
    for i in progress(range(len(data))):
        stem = f"{i:06d}"
        img_path, lab_path = out / "images" / f"{stem}.png", out / "labels" / f"{stem}.png"
        if resume and img_path.is_file() and lab_path.is_file():
            from ..data.io import read_label

            label = read_label(lab_path)
            counts += np.bincount(label.ravel(), minlength=len(ROAD3))[: len(ROAD3)]
            if i < SHEET_SAMPLES:
                sheet_images.append(np.asarray(Image.open(img_path).convert("RGB")))
                sheet_labels.append(label)
            continue
        image, label = data.render(i)
        rgb = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        with atomic_path(img_path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        with atomic_path(lab_path) as tmp:
            Image.fromarray(label).save(tmp, format="PNG")
        counts += np.bincount(label.ravel(), minlength=len(ROAD3))[: len(ROAD3)]
        if i < SHEET_SAMPLES:
            sheet_images.append(rgb)
            sheet_labels.append(label)
    contact_sheet(sheet_images, sheet_labels, out / "contact_sheet.png", cols=4)
    total = max(int(counts.sum()), 1)
    manifest = {
        "format": "segscope-folder/1",
        "generator": "segscope.data.synthetic",
        "generator_version": data.settings["generator_version"],
        "segscope_version": __version__,
        "settings": data.settings,
        "count": len(data),
        "size": list(data.size),
        "images": "images",
        "labels": "labels",
        "image_suffix": ".png",
        "label_suffix": ".png",
        "class_names": list(ROAD3),
        "ignore_index": IGNORE,
        "class_pixel_shares": {name: counts[k] / total for k, name in enumerate(ROAD3)},
        "contact_sheet": "contact_sheet.png",
    }
    write_json(out / "manifest.json", manifest)
    return manifest
