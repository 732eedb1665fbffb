"""``segscope evaluate``: score a checkpoint on a dataset (confusion matrix, IoU table)."""

from __future__ import annotations

import click

from ._options import (
    MAX_SIDE,
    dataset_kind_options,
    device_option,
    overwrite_option,
    parse_size,
    split_option,
)


@click.command("evaluate")
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Model file written by segscope train (model.safetensors).")
@click.option("--data", required=True,
              help="A dataset folder (CamVid, segscope synth, ...) or synthetic:N[:PRESET[:SEED]].")
@split_option
@dataset_kind_options
@click.option("--size", default=None,
              help="Resize images to HxW before scoring (default: the scale the model was "
                   "trained on, at its training width, when the checkpoint records it).")
@click.option("--limit", type=int, default=None, help="Score only the first N images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes.")
@click.option("--out", type=click.Path(), default=None,
              help="Write DIR/metrics.json (a new or empty folder, or an earlier evaluate "
              "run with --overwrite).")
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def evaluate(checkpoint, data, split, data_kind, id_map, size, limit, batch_size, workers, out,
             overwrite, as_json, device, quiet) -> None:
    """Score a checkpoint: global accuracy, mean class accuracy, per-class IoU, mIoU.

    Datasets without a markings class (CamVid 11-class, Cityscapes) are scored on the
    road surface: road and markings merged in prediction and label.
    """
    import json
    import sys
    from pathlib import Path

    from .._io import write_json
    from ..checkpoint import dataset_at_training_scale, load_model, training_size
    from ..data.classes import ROAD3
    from ..data.real import open_dataset
    from ..errors import SegscopeError
    from ..metrics import format_metrics
    from ..outdir import check_output, claim_output
    from ..predict import evaluate_dataset
    from ._options import resolve_device

    folder = {"overwrite": overwrite, "can_resume": False, "inputs": [checkpoint, data, id_map]}
    if out:
        check_output(out, "evaluate", **folder)  # refused before any note is printed
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, map_location=dev)
    if tuple(model.class_names) != tuple(ROAD3):
        raise SegscopeError(
            f"{checkpoint} predicts {len(model.class_names)} classes "
            f"({', '.join(model.class_names)}); datasets are scored on ROAD3 "
            f"({', '.join(ROAD3)})")
    size = parse_size(size, MAX_SIDE) if size else None
    scale_note = None
    trained = training_size(meta)
    if size is None and trained is not None:
        probe = open_dataset(data, split=split, limit=1, kind=data_kind, id_map=id_map)
        if len(probe):
            size = dataset_at_training_scale(probe, trained)
            scale_note = (f"scored at {size[0]}x{size[1]}, the scale the model was trained "
                          f"on (its width, {trained[1]}, at this dataset's aspect ratio; "
                          "--size HxW to change)")
    dataset = open_dataset(data, split=split, size=size, limit=limit, kind=data_kind,
                           id_map=id_map)
    if len(dataset) == 0:
        raise SegscopeError(f"no images to score in {data}")
    split = getattr(dataset, "split", split)
    note = getattr(dataset, "split_note", None)
    for line in (note, scale_note):
        if line and not quiet:
            click.echo(f"segscope: {line}", err=True)
    if out:
        claim_output(out, "evaluate", **folder,
                     settings={"checkpoint": str(checkpoint), "data": str(data), "split": split})
    road_surface = not getattr(dataset, "has_markings", True)
    cm = evaluate_dataset(model, dataset, device=dev, batch_size=batch_size, workers=workers,
                          road_surface=road_surface,
                          quiet=quiet or not sys.stderr.isatty())
    metrics = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "images": len(dataset),
        "size": list(size) if size else None,
        "scored_on": "road surface" if road_surface else "classes",
        **cm.metrics(),
    }
    if out:
        write_json(Path(out) / "metrics.json", metrics)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    what = "road surface (dataset has no markings class)" if road_surface else "all classes"
    click.echo(f"{len(dataset)} images of {data}, scored on {what}")
    click.echo(format_metrics(metrics))
    if out:
        click.echo(f"metrics: {Path(out) / 'metrics.json'}")
