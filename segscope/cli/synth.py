"""``segscope synth``: write synthetic road scenes and their labels to a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from ..errors import SegscopeError
from ._options import parse_size, prepare_out_dir

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


@click.command("synth")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output folder (created): images/, labels/, manifest.json, contact_sheet.png.")
@click.option("--n", "n", default="100", show_default=True, callback=_parse_n,
              help="Number of scenes.")
@click.option("--size", default="360x480", show_default=True, callback=_parse_size,
              help="Image size HxW.")
@click.option("--seed", default="0", show_default=True, callback=_parse_seed,
              help="Seed; scene i of a seed is always the same picture.")
@click.option("--preset", default="narrow", show_default=True,
              help="narrow (one fixed look) or randomized (domain randomization).")
@click.option("--set", "sets", multiple=True, callback=_parse_sets, metavar="KEY=VALUE",
              help="Fix a scene setting for every image, e.g. --set curvature=0 --set vehicles=0.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def synth(out: str, n: int, size: tuple[int, int], seed: int, preset: str,
          sets: dict[str, object], quiet: bool) -> None:
    """Write N synthetic road scenes with exact ROAD3 labels to OUT.

    Layout: OUT/images/000000.png (RGB), OUT/labels/000000.png (8-bit ids: 0 background,
    1 road, 2 markings), OUT/manifest.json and OUT/contact_sheet.png.

    \b
    Example:
      segscope synth --out data/synth --n 1000 --preset randomized
    """
    from tqdm import tqdm

    from ..data.synthetic import SyntheticRoads

    data = SyntheticRoads(n, size=size, seed=seed, preset=preset, **sets)
    prepare_out_dir(out)
    write_dataset(data, Path(out),
                  progress=lambda it: tqdm(it, total=n, desc="synth", unit="img",
                                           disable=quiet or not sys.stderr.isatty()))
    if not quiet:
        click.echo(f"wrote {n} scenes ({size[0]}x{size[1]}, preset {preset}) to {out}")


def write_dataset(data, out: Path, progress=lambda it: it) -> dict:
    """Write every scene of ``data`` (a :class:`SyntheticRoads`) under ``out``; return the
    manifest."""
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
        image, label = data.render(i)
        rgb = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        stem = f"{i:06d}"
        with atomic_path(out / "images" / f"{stem}.png") as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        with atomic_path(out / "labels" / f"{stem}.png") as tmp:
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
