"""``segscope study``: the chapter-9 analyses on one checkpoint, with an HTML report."""

from __future__ import annotations

import click

from ._options import (
    dataset_kind_options,
    device_option,
    overwrite_option,
    parse_size,
    split_option,
)


@click.command("study")
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Model file written by segscope train.")
@click.option("--synthetic", default=None,
              help="Synthetic validation data: synthetic:N[:PRESET[:SEED]] or a segscope "
                   "synth folder (default: the checkpoint's synthetic validation data, "
                   "else 8 scenes of its training preset with the next seed, else "
                   "synthetic:8:narrow:1).")
@click.option("--real", default=None, type=click.Path(),
              help="A real dataset folder (CamVid, Mapillary, ...): the study explains the "
                   "images it segments best and worst among the first --scan.")
@split_option
@dataset_kind_options
@click.option("--image", "images", multiple=True, type=click.Path(),
              help="A real image to consider (repeatable; one --label each).")
@click.option("--label", "labels", multiple=True, type=click.Path(),
              help="Its label map in ROAD3 ids (0 background, 1 road, 2 markings, 255 ignore).")
@click.option("--layer", default="conv2_1", show_default=True,
              help="Layer of the per-feature maps, feature values and feature separation.")
@click.option("--compare-layer", default="conv2_1_D", show_default=True,
              help="Layer of the class comparison (§9.9).")
@click.option("--class", "cls", default="road", show_default=True,
              help="Class explained (a name or an index).")
@click.option("--rule", default="alpha1beta0", show_default=True,
              help="LRP rule, as for segscope explain: a name (epsilon:0.01, zbox, ...) or a "
                   "per-layer composite such as conv1_1=zbox,default=alpha1beta0.")
@click.option("--pixels", type=int, default=None,
              help="Single-pixel concepts per image for the bias study [32; quick 8].")
@click.option("--scan", type=int, default=None,
              help="Real images scanned for the best and worst [20; quick 4].")
@click.option("--candidates", type=int, default=None,
              help="Synthetic images tried for the one explained [4; quick 2].")
@click.option("--channels", type=int, default=None,
              help="Features separated, the top ones by feature value [all; quick 16].")
@click.option("--size", default=None,
              help="Resize every image to HxW (default: the training size recorded in the "
                   "checkpoint, else each image's own).")
@click.option("--out", "-o", type=click.Path(), default="segscope-study", show_default=True,
              help="Output folder: new or empty, or an earlier study with --overwrite.")
@overwrite_option
@click.option("--quick", is_flag=True, help="Fewer images, pixels and features.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def study(checkpoint, synthetic, real, split, data_kind, id_map, images, labels, layer,
          compare_layer, cls, rule, pixels, scan, candidates, channels, size, out, overwrite,
          quick, device, quiet) -> None:
    """Run the thesis's chapter-9 analyses and write figures, tables and report.html.

    Layer-wise propagation (§9.4), per-feature maps (§9.5), feature values (§9.6),
    switch-off (§9.7), feature separation (§9.8), class comparison (§9.9), synthetic vs
    real (§9.10) and bias absorption (§9.11).
    """
    from ..device import resolve_device
    from ..errors import SegscopeError
    from ..outdir import claim_output
    from ..study import StudySettings, run_study

    for name, value in (("--pixels", pixels), ("--scan", scan), ("--candidates", candidates),
                        ("--channels", channels)):
        if value is not None and value < 1:
            raise SegscopeError(f"{name} must be at least 1, got {value}")
    settings = StudySettings(
        cls=cls, layer=layer, compare_layer=compare_layer, rule=rule, quick=quick,
        pixels=pixels, scan=scan, candidates=candidates, channels=channels,
        size=parse_size(size) if size else None, split=split,
    )
    if split is not None and real is None:
        raise SegscopeError("--split needs --real")
    marker = {"checkpoint": str(checkpoint), "synthetic": synthetic, "real": real,
              "split": split, "class": cls, "layer": layer, "compare_layer": compare_layer,
              "rule": rule, "quick": quick}
    # The folder is claimed once every input has been checked, before the long work: a
    # typo never empties an earlier study.
    summary = run_study(checkpoint, out, synthetic=synthetic, real=real, real_kind=data_kind,
                        id_map=id_map, images=images, labels=labels, settings=settings,
                        device=resolve_device(device), quiet=quiet,
                        before_work=lambda: claim_output(out, "study", overwrite=overwrite,
                                                         can_resume=False, settings=marker))
    for note in summary["notes"]:
        click.echo(f"note: {note}")
    so = summary["switch_off"]["pixel_shares"]
    click.echo(f"99 % of the relevance of one {summary['settings']['class']} pixel sits in "
               f"{100 * so['0.99']:.1f} % of the pixels; "
               f"{100 * summary['layerwise']['share_reaching_pixels']:.1f} % of the output "
               "relevance reaches the pixels")
    if summary["settings"].get("split"):
        click.echo(f"real data: {summary['settings']['real']}, split "
                   f"{summary['settings']['split']}")
    click.echo(f"report: {summary['report']}")
