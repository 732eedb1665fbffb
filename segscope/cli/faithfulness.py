"""``segscope faithfulness``: which explanation method and LRP rule to trust on a model."""

from __future__ import annotations

import click

from ._options import SEED, dataset_kind_options, device_option, parse_size


@click.command("faithfulness")
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Model file written by segscope train.")
@click.option("--data", required=True,
              help="Images to evaluate on: a dataset folder or synthetic:N[:PRESET[:SEED]].")
@click.option("--real", default=None, type=click.Path(),
              help="A real dataset folder (CamVid, ...) evaluated as a second set.")
@dataset_kind_options
@click.option("--methods", default=None,
              help="Methods separated by commas [lrp,gradcam,gradcam-rf,sensitivity,"
                   "gradxinput,guided,deconvnet,random,edge].")
@click.option("--rule", "rules", multiple=True,
              help="LRP rule to score (repeatable), e.g. epsilon:0.01 or "
                   "'first=zbox,default=alpha1beta0' [alpha1beta0, alpha2beta1, epsilon, zplus, "
                   "gamma, flat, wsquare and two composites with zbox at the pixels].")
@click.option("--class", "cls", default="road", show_default=True,
              help="Class explained (a name or an index).")
@click.option("--concept", default="tp", show_default=True,
              type=click.Choice(["tp", "fp", "fn", "label", "predicted"]),
              help="Pixels of the class explained: true/false positives, false negatives, "
                   "its labelled or its predicted pixels.")
@click.option("--assign", default="score", show_default=True, type=click.Choice(["score", "prob"]),
              help="Score summed over the concept: class scores, or softmax probabilities.")
@click.option("--patch", type=int, default=8, show_default=True,
              help="Side of the square patches perturbed (1: single pixels).")
@click.option("--steps", type=int, default=None,
              help="Curve points after the unperturbed one [min(regions, 20)].")
@click.option("--regions", type=int, default=None,
              help="Patches perturbed at the last point [all].")
@click.option("--baseline", default="mean", show_default=True,
              help="What perturbed pixels become: mean, blur[:SIGMA], noise or colour:R,G,B.")
@click.option("--images", type=int, default=4, show_default=True,
              help="Images per set (the first ones).")
@click.option("--sanity-images", type=int, default=2, show_default=True,
              help="Images that also get the randomisation test (0: none).")
@click.option("--sanity-steps", type=int, default=8, show_default=True,
              help="Cascade points from the output layer down.")
@click.option("--size", default=None,
              help="Resize images to HxW [the checkpoint's training size].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(), help="Output folder.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in --out.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def faithfulness(checkpoint, data, real, data_kind, id_map, methods, rules, cls, concept, assign,
                 patch, steps, regions, baseline, images, sanity_images, sanity_steps, size,
                 seed, out, resume, overwrite, device, quiet) -> None:
    """Score explanation methods by region perturbation and sanity checks.

    \b
    Every method explains the concept once per image; its patches are then replaced by
    the baseline most relevant first (MoRF), least relevant first (LeRF), or put back
    into the baseline (insertion), in batched forward passes. Writes into --out:
      aopc.csv, per_image.csv   AOPC, ABPC, deletion and insertion per method
      curves.csv, curves.png    the perturbation curves
      sanity.csv, sanity.png    cascading randomisation (Spearman, SSIM per step)
      maps.png, summary.json, report.html

    \b
    Example:
      segscope faithfulness -c model.safetensors --data synthetic:8:narrow:1 \\
          --real CamVid --out faith/
    """
    from ..errors import SegscopeError
    from ..faithfulness import DEFAULT_METHODS, DEFAULT_RULES, RunSettings, run_faithfulness
    from ._options import resolve_device

    chosen = DEFAULT_METHODS if methods is None else tuple(
        m.strip() for m in methods.split(",") if m.strip())
    if not chosen:
        raise SegscopeError("--methods names no method (leave it out for all of them)")
    if rules and "lrp" not in chosen:
        raise SegscopeError("--rule applies to the lrp method, which --methods leaves out "
                            "(add lrp to --methods, or drop --rule)")
    settings = RunSettings(
        cls=cls, concept=concept, assign=assign,
        methods=chosen,
        rules=tuple(rules) if rules else DEFAULT_RULES,
        patch=patch, steps=steps, regions=regions, baseline=baseline, images=images,
        sanity_images=sanity_images, sanity_steps=sanity_steps,
        size=parse_size(size) if size else None, seed=seed,
    )
    summary = run_faithfulness(
        checkpoint, out, data=data, real=real, data_kind=data_kind, id_map=id_map,
        settings=settings, device=resolve_device(device), resume=resume, overwrite=overwrite,
        quiet=quiet)
    for note in summary["notes"]:
        click.echo(f"note: {note}")
    for key, rows in summary["table"].items():
        click.echo(f"{key} ({summary['sets'][key]['images']} images): "
                   "method, AOPC MoRF [95 % interval], ABPC")
        for r in sorted(rows, key=lambda r: -r["aopc_morf"] if r["aopc_morf"] == r["aopc_morf"]
                        else float("inf")):
            click.echo(f"  {r['method']:<44} {r['aopc_morf']:8.4f} "
                       f"[{r['aopc_morf_lo']:.4f}, {r['aopc_morf_hi']:.4f}]  {r['abpc']:8.4f}")
    flagged = summary["sanity"].get("flagged", [])
    if summary["sanity"].get("images"):
        click.echo(f"sanity check flags (maps unchanged by random weights): "
                   f"{', '.join(flagged) if flagged else 'none'}")
    click.echo(f"report: {summary['report']}")
