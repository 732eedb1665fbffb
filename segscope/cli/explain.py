"""``segscope explain``: explain one prediction with LRP, Grad-CAM or a gradient method."""

from __future__ import annotations

import click

from ..explain.methods import METHODS, OPTIONS
from ._options import device_option

LRP = "lrp"


@click.command("explain")
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Model file written by segscope train.")
@click.option("--image", "-i", "image_path", required=True, type=click.Path(),
              help="The picture to explain.")
@click.option("--method", "-m", default=LRP, show_default=True,
              help=f"One of {', '.join(METHODS)}.")
@click.option("--class", "cls", default=None, help="Class name or index to explain.")
@click.option("--pixel", default=None, metavar="Y,X", help="Explain one output pixel.")
@click.option("--mask", "mask_path", default=None, type=click.Path(),
              help="Explain the pixels drawn in this PNG: non-zero (any colour channel), "
              "or not transparent on a transparent canvas.")
@click.option("--from-prediction", "kind", type=click.Choice(["tp", "fp", "fn"]), default=None,
              help="Explain the true/false positives/negatives of --class against --label.")
@click.option("--label", "label_path", default=None, type=click.Path(),
              help="Ground-truth label PNG (class ids) for --from-prediction.")
@click.option("--assign", type=click.Choice(["score", "prob", "one"]), default=None,
              help="Initial relevance on the chosen neurons [default: one for --pixel, "
                   "score otherwise].")
@click.option("--rule", default="alpha1beta0", show_default=True,
              help="LRP rule, or per layer: 'conv1_1=zbox,default=alpha1beta0'.")
@click.option("--keep", default="none", show_default=True,
              help="LRP layers to save: all, none, totals (per-channel sums of every "
                   "layer), or names separated by commas.")
@click.option("--layer", default=None,
              help="gradcam/gradcam-rf: the layer [conv5_1_D]; actmax: the layer of --channel.")
@click.option("--channel", type=int, default=None, help="actmax: channel of --layer.")
@click.option("--steps", type=int, default=None, help="actmax: ascent steps.")
@click.option("--root", type=float, default=None, help="gradxinput: root point (default 0).")
@click.option("--out", required=True, type=click.Path(),
              help="Output folder: new or empty, or an earlier explain with --overwrite.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier explanation in --out (a folder of other files is "
                   "never touched).")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def explain(ctx, checkpoint, image_path, method, cls, pixel, mask_path, kind, label_path, assign,
            rule, keep, layer, channel, steps, root, out, overwrite, device, quiet) -> None:
    """Explain why the model predicts what it does on one image.

    \b
    LRP writes into --out:
      relevance.npz   pixels (H,W), input (3,H,W), layer/<name> (C,h,w) for --keep
                      NAMES or all, totals/<name> (C,) for --keep totals,
                      absorbed_names/absorbed_values, output_total, concept, rule
      heatmap.png     pixel relevance, blue (negative) - white - red (positive), eq 8.2
      overlay.png     the heatmap blended over the image
    Other methods write <method>.npz and <method>.png (the map over the image).
    Each explanation gets its own folder: --out must be new or empty.

    The image is explained at its own size (pixels and masks are in its coordinates).
    predict and evaluate show a real image to the model at its training scale instead:
    to explain that decision, give the image resized to it (e.g. 144x192 for a model
    trained at 128x192 on 360x480 frames).

    \b
    Example:
      segscope explain -c model.safetensors -i scene.png --class road --pixel 200,240 \\
          --keep all --out explain/
    """

    from ..checkpoint import load_model
    from ..errors import SegscopeError
    from ..explain.rules import parse_rules
    from ..outdir import check_out_path, claim_output
    from ..predict import load_image
    from ._options import resolve_device

    method = method.lower()
    if method not in METHODS:
        raise SegscopeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _check_applies(ctx, method)
    rule_spec = parse_rules(rule)  # a bad --rule fails before any work
    image = load_image(image_path)
    concept = _concept(cls, pixel, mask_path, kind, label_path, assign,
                       optional=method == "actmax" and channel is not None)
    dev = resolve_device(device)
    check_out_path(out)  # a file named as --out fails before the model loads
    model, _ = load_model(checkpoint, map_location=dev)
    _check_files(concept, image, model, mask_path, label_path)
    # claimed once every input has been read: a bad one leaves no folder behind
    settings = {k: v for k, v in ctx.params.items() if k not in ("overwrite", "quiet")}
    out_dir = claim_output(out, "explain", overwrite=overwrite, can_resume=False,
                           settings=settings,
                           inputs=[checkpoint, image_path, mask_path, label_path])
    if method == LRP:
        _run_lrp(model, image, concept, rule_spec, keep, out_dir, quiet)
    else:
        _run_method(method, model, image, concept, layer, channel, steps, root, out_dir, quiet)


# -- inputs ------------------------------------------------------------------------------
#: Method-specific options (the --flag names) and the methods that use them; given to
#: another method they would be ignored, and the user would read a result computed
#: without them.
_APPLIES = {name: OPTIONS[name] for name in ("rule", "keep", "layer", "channel", "steps",
                                             "root")}


def _check_applies(ctx, method: str) -> None:
    from ..errors import SegscopeError

    for name, methods in _APPLIES.items():
        given = ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        if given and method not in methods:
            raise SegscopeError(f"--{name} does not apply to --method {method} "
                                f"(only to {', '.join(methods)})")
    if method == "actmax":
        has_concept = any(ctx.params[k] is not None for k in ("pixel", "mask_path", "kind"))
        if ctx.params["channel"] is not None and has_concept:
            raise SegscopeError("actmax maximizes either a concept (--pixel, --mask, "
                                "--from-prediction) or --layer/--channel, not both")
        if ctx.params["layer"] is not None and ctx.params["channel"] is None:
            raise SegscopeError("actmax: --layer needs --channel (the channel to maximize)")


def _concept(cls, pixel, mask_path, kind, label_path, assign, optional=False):
    from ..errors import SegscopeError
    from ..explain import Concept

    chosen = [name for name, v in (("--pixel", pixel), ("--mask", mask_path),
                                   ("--from-prediction", kind)) if v is not None]
    if not chosen and optional:
        return None
    if len(chosen) != 1:
        raise SegscopeError(
            "choose exactly one of --pixel Y,X, --mask M.png, --from-prediction tp|fp|fn"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if cls is None:
        raise SegscopeError("--class is required (a class name or index)")
    if kind is None and label_path is not None:
        raise SegscopeError("--label is only used with --from-prediction")
    cls_key = int(cls) if cls.isdigit() else cls
    if pixel is not None:
        try:
            y, x = (int(v) for v in pixel.split(","))
        except ValueError:
            raise SegscopeError(f"--pixel must be Y,X (two integers), got {pixel!r}") from None
        return Concept.pixel(cls_key, y, x, assign=assign or "one")
    if mask_path is not None:
        from ..data.io import read_mask

        return Concept.mask(cls_key, read_mask(mask_path), assign=assign or "score")
    if label_path is None:
        raise SegscopeError("--from-prediction needs --label (the ground-truth label PNG)")
    return Concept.from_prediction(cls_key, kind, _read_ids(label_path, "label"),
                                   assign=assign or "score")


def _check_files(concept, image, model, mask_path, label_path) -> None:
    """A mask or label that does not fit the image or the model, named by its file
    (the concept's own checks, later, cannot say which file it came from)."""
    from ..data.classes import IGNORE
    from ..errors import SegscopeError

    h, w = image.shape[-2:]
    for path, ids, what in ((mask_path, getattr(concept, "pixels", None), "mask"),
                            (label_path, getattr(concept, "label", None), "label")):
        if path is None or ids is None:
            continue
        if tuple(ids.shape) != (h, w):
            raise SegscopeError(f"{what} is {ids.shape[0]}x{ids.shape[1]}, the image is "
                                f"{h}x{w} ({what} file {path})")
        k = getattr(model, "num_classes", None)
        if what == "label" and k is not None:
            bad = (ids != IGNORE) & ((ids < 0) | (ids >= k))
            if bool(bad.any()):
                raise SegscopeError(
                    f"label {path} has id {int(ids[bad][0])}, which is not a class of this "
                    f"model (0..{k - 1}, or {IGNORE} for ignore)")


def _read_ids(path, what: str):
    """(H,W) int64 ids of a label-style PNG; errors call the file what it is (a mask)."""
    from ..data.io import read_label
    from ..errors import SegscopeError

    try:
        return read_label(path).astype("int64")
    except SegscopeError as exc:
        msg = str(exc)
        for old in ("label file ", "cannot read label "):
            msg = msg.replace(old, old.replace("label", what), 1)
        raise SegscopeError(msg) from None


def _parse_keep(text: str):
    text = text.strip()
    if text.lower() in ("", "none"):
        return None
    if text.lower() in ("all", "totals"):
        return text.lower()
    return [t.strip() for t in text.split(",") if t.strip()]


# -- LRP ---------------------------------------------------------------------------------
def _run_lrp(model, image, concept, rule, keep, out_dir, quiet) -> None:
    import numpy as np

    from ..explain.relevance import lrp

    e = lrp(model, image, concept, rule=rule, keep=_parse_keep(keep))
    arrays = {
        "pixels": e.pixels.numpy(),
        "input": e.input.numpy(),
        "initial": e.initial.numpy(),
        "output_total": np.float64(e.output_total),
        "input_total": np.float64(e.input_total),
        "dropped": np.float64(e.dropped),
        "absorbed_names": np.array(list(e.absorbed), dtype=str),
        "absorbed_values": np.array(list(e.absorbed.values()), dtype=np.float64),
        "concept": np.array(e.description),
        "rule": np.array(e.rule),
    }
    for name, rel in e.layers.items():
        arrays[f"layer/{name}"] = rel.float().numpy()
    for name, totals in e.totals.items():
        arrays[f"totals/{name}"] = totals.numpy()
    _save_npz(out_dir / "relevance.npz", arrays)
    _save_pictures(image, e.pixels, out_dir / "heatmap.png", out_dir / "overlay.png")
    if not quiet:
        share = e.input_total / e.output_total if e.output_total else float("nan")
        import click

        click.echo(f"{e.description}: output relevance {e.output_total:.4g}, pixels "
                   f"{e.input_total:.4g} ({share:.1%}), absorbed on the way (biases, "
                   f"stabilisers) {sum(e.absorbed.values()):.4g} -> {out_dir}")


# -- gradient family ---------------------------------------------------------------------
def _run_method(method, model, image, concept, layer, channel, steps, root, out_dir,
                quiet) -> None:
    import numpy as np
    import torch

    from ..analysis import as_numpy
    from ..explain import methods

    result = methods.attribute(method, model, image, concept, layer=layer, root=root,
                               channel=channel, steps=steps, seed=0, quiet=quiet)
    arrays = {"pixels": as_numpy(result.pixels, None), "method": np.array(result.method),
              "concept": np.array(result.concept)}
    if result.input is not None:
        arrays["input"] = as_numpy(result.input, None)
    for key, value in result.extras.items():
        if torch.is_tensor(value) or isinstance(value, np.ndarray):
            arrays[f"extras/{key}"] = as_numpy(value, None)
        elif isinstance(value, bool | int | float | str):
            arrays[f"extras/{key}"] = np.array(value)
    _save_npz(out_dir / f"{method}.npz", arrays)
    signed = method not in ("gradcam", "gradcam-rf", "sensitivity")
    _save_pictures(image, result.pixels, None, out_dir / f"{method}.png", signed=signed)
    if not quiet:
        import click

        click.echo(f"{method}: {result.concept} -> {out_dir}")


# -- files -------------------------------------------------------------------------------
def _save_npz(path, arrays) -> None:
    import numpy as np

    from .._io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def _save_pictures(image, relevance, heatmap_path, overlay_path, signed=True) -> None:
    import numpy as np

    from ..data.io import write_png
    from ..viz.cmap import heatmap_rgb, overlay_rgb

    if heatmap_path is not None:
        write_png(heatmap_path, heatmap_rgb(relevance))
    # The colours over the colour picture, opaque where |R| is large.
    blend = overlay_rgb(image, relevance, alpha=0.9, grey=False, signed=signed)
    write_png(overlay_path, np.round(blend * 255).astype(np.uint8))
