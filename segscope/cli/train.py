"""``segscope train``: train SegNet (SPEC §2 defaults), resumable, DDP under torchrun."""

from __future__ import annotations

import click

from ..errors import SegscopeError
from ._options import MAX_SIDE, SEED, device_option, overwrite_option, parse_size


@click.command("train")
@click.option("--data", default="synthetic:2000", show_default=True,
              help="Training data: a folder (segscope synth, CamVid, ...) or "
              "synthetic:N[:PRESET[:SEED]].")
@click.option("--val-data", default=None,
              help="Validation data, same forms (use another seed for synthetic data).")
@click.option("--split", default=None,
              help="Split of --data to train on (default: train, or the only split there is).")
@click.option("--val-split", default=None,
              help="Split of --val-data (default: val, or the only split there is).")
@click.option("--out", "out", default="segscope-train", show_default=True, type=click.Path(),
              help="Output folder (models, checkpoints, metrics, curves): new or empty, or "
              "an earlier train run with --resume / --overwrite.")
@click.option("--size", default=None, help="Resize images to HxW, e.g. 360x480.")
@click.option("--limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--val-limit", type=int, default=None, help="Use only the first N validation images.")
@click.option("--width", type=float, default=1.0, show_default=True,
              help="SegNet channel multiplier (1.0 = the published network).")
@click.option("--iters", type=int, default=None, help="Train for N iterations (batches).")
@click.option("--epochs", type=int, default=None, help="Train for N passes over the data.")
@click.option("--batch-size", type=int, default=4, show_default=True,
              help="Images per batch (per GPU/rank).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["constant", "cosine", "poly"]), default="constant",
              show_default=True, help="Learning-rate schedule over the run.")
@click.option("--warmup", type=int, default=0, show_default=True,
              help="Linear learning-rate warm-up over the first N iterations.")
@click.option("--class-weights", type=click.Choice(["median", "sqrt", "none"]),
              default="median", show_default=True,
              help="Cross-entropy class weights: median-frequency balancing, its square "
              "root (milder), or none.")
@click.option("--loss", type=click.Choice(["ce", "ce+dice"]), default="ce", show_default=True,
              help="Cross-entropy, or cross-entropy plus 1 - the mean soft Dice of the "
              "classes (thin classes such as markings weigh as much as large ones).")
@click.option("--weight-sample", type=int, default=64, show_default=True,
              help="Training images the median-frequency weights are estimated from.")
@click.option("--val-every", type=int, default=0, show_default=True,
              help="Validate every N iterations (0: only at the end; needs --val-data).")
@click.option("--log-every", type=int, default=10, show_default=True,
              help="Write the mean training loss to metrics.csv every N iterations.")
@click.option("--checkpoint-every", type=int, default=0, show_default=True,
              help="Write a resumable checkpoint every N iterations (0: at the end and on Ctrl-C).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the initialisation and the data order.")
@device_option
@click.option("--workers", type=int, default=0, show_default=True,
              help="DataLoader worker processes (persistent, prefetching).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="NHWC memory format: 0.78x the step time on CPU "
              "(benchmarks/bench_train.py).")
@click.option("--bf16/--no-bf16", default=False, show_default=True,
              help="bfloat16 autocast: about 2x faster on CPUs with AVX512-BF16 and on "
              "recent GPUs, much slower on CPUs without it.")
@click.option("--pretrained", type=click.Path(), default=None,
              help="VGG16-BN weights (torchvision layout) for the encoder: .safetensors "
              "(preferred) or .pth, read with torch.load(weights_only=True).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out exactly.")
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--stop-after", type=int, default=None, hidden=True,
              help="Stop (as if interrupted) after N iterations: for tests.")
@click.pass_context
def train(ctx: click.Context, **kw) -> None:
    """Train SegNet on a dataset.

    \b
    Defaults follow SPEC §2: SGD lr 0.001, momentum 0.9, weight decay 0.0005, batch 4,
    cross-entropy with median-frequency class weights, ignore label 255.
    Multi-GPU / multi-process: torchrun --nproc_per_node=N -m segscope.cli train ...
    """
    from ..outdir import check_out_path, claim_output
    from ..training import (
        RESUME_FIXED,
        TrainConfig,
        adopt_unmarked_run,
        check_resumed,
        resume_point,
    )
    from ..training import train as run

    size = parse_size(kw["size"], MAX_SIDE) if kw["size"] else None
    if kw["resume"]:
        if kw["overwrite"]:
            raise SegscopeError("--resume and --overwrite exclude each other")
        out = check_out_path(kw["out"])
        adopt_unmarked_run(out)
        claim_output(out, "train", resume=True)  # only checks: a train run is there
        _, _, saved = resume_point(out, tensors=False)
        given = [name for name in RESUME_FIXED
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        check_resumed(TrainConfig(**{**kw, "size": size}), saved, given, cli=True)
    config = TrainConfig(**{**kw, "size": size})
    result = run(config)
    if not config.quiet and result.model_path is not None:
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(f"model: {result.model_path}  ({result.step} iterations, "
                       f"{result.seconds:.0f} s)")
            if result.val_metrics:
                from ..metrics import format_metrics

                click.echo(format_metrics(result.val_metrics))
