"""``segscope diagnose``: rank real images by how likely the model fails on them, and say
which layers and channels see something the synthetic data never showed."""

from __future__ import annotations

import click

from ._options import dataset_kind_options, device_option, parse_size


@click.command("diagnose")
@click.option("--checkpoint", "-c", required=True, type=click.Path(),
              help="Model file written by segscope train.")
@click.option("--synthetic", required=True,
              help="Synthetic reference: synthetic:N[:PRESET[:SEED]] or a segscope synth "
                   "folder (use scenes the model was not trained on; at least 2).")
@click.option("--real", required=True, type=click.Path(),
              help="Real images: a dataset folder (CamVid, Cityscapes, ...) or any folder "
                   "of images.")
@click.option("--calibration", multiple=True, metavar="SPEC",
              help="Fit the failure score on this labelled synthetic set "
                   "(synthetic:N[:PRESET[:SEED]] or a synth folder; repeat for several; "
                   "'presets': 40 scenes of each preset) instead of using the relevance "
                   "fingerprint's distance (fv_knn) [default: no fit].")
@click.option("--split", default=None, help="Dataset split (default: the evaluation split).")
@dataset_kind_options
@click.option("--labels/--no-labels", default=None,
              help="Require the real labels (and measure each score against IoU) or ignore "
                   "them [default: use them when the folder has them].")
@click.option("--class", "cls", default="road", show_default=True,
              help="Concept class: the pixels predicted as this class are explained.")
@click.option("--assign", default="score", show_default=True,
              type=click.Choice(["score", "prob", "one"]),
              help="Initial relevance of the concept's pixels.")
# the default is segscope.fingerprint.DIAGNOSE_RULE (not imported: --help stays fast)
@click.option("--rule", default="epsilon", show_default=True,
              help="LRP rule, e.g. epsilon, alpha1beta0 (the study's), epsilon:0.01, or per "
                   "layer 'conv1_1=zbox, default=epsilon'.")
@click.option("--size", default=None,
              help="Resize every image to HxW (default: the scale the model was trained on: "
                   "real images at its training width with their own aspect ratio, synthetic "
                   "scenes at the same size; else each image's own size).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N real images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per batch: read together, fingerprinted in one forward pass "
                   "and one LRP sweep (about 0.8 GB each for the full SegNet at "
                   "360x480).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes.")
@click.option("--chunk", type=click.IntRange(min=1), default=16, show_default=True,
              help="Images per cached chunk of fingerprints (the unit --resume keeps and "
                   "torchrun processes share out).")
@click.option("--top", type=click.IntRange(0, 24), default=6, show_default=True,
              help="Top channels reported, with their feature-separation maps (at most 24: "
              "each is a map pair in one figure).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples of the correlation intervals.")
@click.option("--out", "-o", type=click.Path(), default="segscope-diagnose", show_default=True,
              help="Output folder.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted diagnosis in --out (keeps its fingerprints).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier diagnosis in --out.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def diagnose(checkpoint, synthetic, real, calibration, split, data_kind, id_map,
             labels, cls, assign, rule, size, limit, batch_size, workers, chunk, top, bootstrap,
             out, resume, overwrite, device, quiet) -> None:
    """Score every real image by how likely the model fails on it, without real labels.

    Each image gets a fingerprint (feature-value profiles of all 37 layers from one LRP
    sweep, mean activations, confidence); the failure score is the fingerprint's distance
    from the synthetic reference (or, with --calibration, 1 - the IoU predicted by a model
    fitted on labelled synthetic scenes; never on real labels). With real labels, every
    score (and the baselines:
    max-softmax, entropy, ATC, activation profiles, colour statistics, class shares) is
    measured against IoU. Writes images.csv, diagnosis.json, figures and report.html.
    Runs under torchrun --nproc_per_node=N (images shared out, rows gathered on rank 0).
    """
    from ..diagnose_report import run_diagnose

    summary = run_diagnose(
        checkpoint, out, synthetic=synthetic, real=real, calibration=calibration, split=split,
        data_kind=data_kind, id_map=id_map, labels=labels, cls=cls, assign=assign, rule=rule,
        size=parse_size(size) if size else None, limit=limit, batch_size=batch_size,
        workers=workers, chunk=chunk, top=top, n_boot=bootstrap, resume=resume, overwrite=overwrite,
        device=device, quiet=quiet)
    if summary is None:  # not rank 0
        return
    skipped = (summary.get("failure_model") or {}).get("skipped")
    if calibration and skipped:
        click.echo(f"segscope: {skipped}", err=True)
    img = summary["images"]
    click.echo(f"{img['real']} real and {img['synthetic']} synthetic images diagnosed"
               + (f"; {img['real_empty_concept']} real image(s) with no pixel predicted "
                  f"{summary['settings']['class']} (kept, marked empty_concept)"
                  if img["real_empty_concept"] else ""))
    if summary["correlations"]:
        click.echo(f"{'score':<14} {'Spearman':>9} {'95 % CI':>17} {'Kendall':>8}")
        for r in summary["correlations"]:
            click.echo(f"{r['score']:<14} {r['spearman']:>+9.3f} "
                       f"[{r['spearman_lo']:+.2f}, {r['spearman_hi']:+.2f}] {r['kendall']:>+8.3f}")
        v = summary["verdict"]
        if summary.get("winner"):
            best = next(r for r in summary["correlations"] if r["score"] == summary["winner"])
            click.echo(f"best score on these images: {best['score']} ({best['spearman']:+.3f})")
        if v:
            click.echo(f"the failure score ranks the images at least as well as every "
                       f"baseline (best: {v['best_baseline']})" if v["relevance_wins"] else
                       f"the failure score loses to {v['best_baseline']} on this model")
    click.echo(f"report: {summary['report']}")
