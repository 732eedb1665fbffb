"""``segscope predict``: colour-coded predictions, overlays and raw label ids."""

from __future__ import annotations

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
    if not quiet:
        click.echo(f"{len(records)} image(s) -> {out}")
