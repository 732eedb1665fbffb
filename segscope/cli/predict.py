"""``segscope predict``: colour-coded predictions, overlays and raw label ids."""

from __future__ import annotations

from pathlib import Path

import click

from ._options import MAX_SIDE, device_option, overwrite_option, parse_size


@click.command("predict")
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Model file written by segscope train (model.safetensors).")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(),
              help="Output folder: new or empty, or an earlier predict run with --overwrite.")
@overwrite_option
@click.option("--size", default=None,
              help="Resize inputs to HxW first (default: each image is shown to the model "
                   "at the scale it was trained on and the masks keep the image's size).")
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="Opacity of the colours in the overlay.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def predict(checkpoint, inputs, out, overwrite, size, alpha, device, quiet) -> None:
    """Predict INPUTS (images or folders of images).

    \b
    Writes, per image, into --out:
      <name>_pred.png     colour-coded classes (background grey, road purple, markings yellow)
      <name>_overlay.png  the colours blended over the image
      <name>_labels.png   the class ids as an 8-bit grey PNG (0, 1, 2)
    and predictions.csv: each input file, its three outputs and the predicted class shares.
    <name> is the file name without extension; where two inputs share it, with the
    extension (a_png, a_jpg), and a number where those are shared too (a_png_2).
    """
    import sys

    from ..checkpoint import load_model, training_size
    from ..data.io import check_image
    from ..errors import SegscopeError
    from ..outdir import check_output, claim_output
    from ..predict import find_images, predict_files
    from ._options import resolve_device

    if not 0.0 <= alpha <= 1.0:
        raise SegscopeError(f"--alpha must be in [0, 1], got {alpha}")
    shape = parse_size(size, MAX_SIDE) if size else None
    files = find_images(inputs)  # bad inputs fail before the model is read
    folder = {"overwrite": overwrite, "can_resume": False, "inputs": [*files, checkpoint]}
    check_output(out, "predict", **folder)
    for path in files:  # a file that is no picture fails before anything is written
        check_image(path)
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, map_location=dev)
    claim_output(out, "predict", **folder,
                 settings={"checkpoint": str(checkpoint), "inputs": [str(i) for i in inputs]})
    records = predict_files(model, inputs, out, device=dev,
                            size=shape, alpha=alpha, trained_size=training_size(meta),
                            quiet=quiet or not sys.stderr.isatty())
    write_index(records, Path(out) / INDEX)
    if not quiet:
        click.echo(f"{len(records)} image(s) -> {out} (index: {INDEX})")


#: The file in --out that says which outputs belong to which input.
INDEX = "predictions.csv"


def write_index(records: list[dict], path: Path) -> None:
    """One row per image: its input file, its three outputs and the predicted shares."""
    import csv
    import io

    from .._io import write_text

    classes = list(records[0]["share"]) if records else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["input", "prediction", "overlay", "labels", *(f"share_{c}" for c in classes)])
    for r in records:
        w.writerow([r["input"], *(Path(r[k]).name for k in ("prediction", "overlay", "labels")),
                    *(f"{r['share'][c]:.6f}" for c in classes)])
    write_text(path, buf.getvalue())
