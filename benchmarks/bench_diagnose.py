"""Diagnose throughput: the fingerprints of a batch of images (one forward pass + one LRP
sweep keeping every layer's per-channel totals + activation and confidence statistics)
against a plain forward pass over the same batches, in the same run (target: <= 2.5x).

    python benchmarks/bench_diagnose.py
    python benchmarks/bench_diagnose.py --threads 1 --clock cpu
    python benchmarks/bench_diagnose.py --width 0.25 --images 8 --rounds 3
    python benchmarks/bench_diagnose.py --rule alpha1beta0 --rule epsilon

``--rule`` (repeatable) fingerprints with each LRP rule in the same run, one ratio each
(default: diagnose's rule, ε, and the study's α1β0): α1β0 needs a convolution of its own
for the denominators z⁺; ε takes z from the forward pass.

``--clock cpu`` times the CPU the process used instead of the wall clock: with
``--threads 1`` other processes on a shared machine do not inflate it. Both sides run with
the allocator setting every ``segscope`` command uses (``--allocator keep``,
:func:`segscope.allocator.keep_freed_memory`); ``--allocator system`` keeps glibc's
defaults, under which both sides page-fault their large maps afresh every pass.

The model is untrained and the concept is the class it predicts most: pixels all over
the image, so the sweep cannot skip any part of a map (a trained model's road, in the
lower part of the image, costs less).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from segscope import SegNet
from segscope.allocator import keep_freed_memory
from segscope.data import SyntheticRoads
from segscope.explain.graph import build_graph
from segscope.fingerprint import DIAGNOSE_RULE, RELEVANCE_KEEP, image_fingerprints, layout_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", default="360x480")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--batch", type=int, default=2, help="images per forward pass and sweep")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall clock, or the CPU time of the process (CPU only)")
    p.add_argument("--allocator", choices=("keep", "system"), default="keep",
                   help="keep freed memory as the segscope command does, or glibc's defaults")
    p.add_argument("--rule", action="append", default=None,
                   help="LRP rule of the sweep (repeat to compare; default: diagnose's "
                        f"{DIAGNOSE_RULE} and the study's alpha1beta0)")
    args = p.parse_args()
    rules = args.rule or [DIAGNOSE_RULE, "alpha1beta0"]
    kept = args.allocator == "keep" and keep_freed_memory()
    if args.clock == "cpu" and args.device != "cpu":
        p.error("--clock cpu times CPU work; use the wall clock on a GPU")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    h, w = (int(v) for v in args.size.split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = SegNet(width=args.width).to(device).eval()
    data = SyntheticRoads(args.images, size=(h, w), seed=5, preset="randomized")
    images = torch.stack([data[i][0] for i in range(args.images)])
    batches = list(images.split(args.batch))
    graph = build_graph(model)
    layout = layout_of(model, (h, w), graph=graph)
    # An untrained model: explain the class it predicts most, so no concept is empty.
    with torch.no_grad():
        counts = sum(torch.bincount(model(b.to(device)).argmax(1).flatten().cpu(),
                                    minlength=3) for b in batches)
    cls = int(counts.argmax())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward(batch: torch.Tensor) -> None:
        with torch.no_grad():
            model(batch.to(device))

    def fingerprinter(rule: str):
        def fingerprint(batch: torch.Tensor) -> None:
            fp = image_fingerprints(model, batch.to(device), cls, rule=rule, graph=graph,
                                    layout=layout)
            assert not fp.scalar("empty").any()
        return fingerprint

    sides = [("plain forward", forward)] + [(f"diagnose fingerprint {r}", fingerprinter(r))
                                            for r in rules]
    for _, fn in sides:  # warm-up
        fn(batches[0])
        sync()
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for _ in range(args.rounds):  # interleaved rounds: all see the same machine load
        for name, fn in sides:
            for b in batches:
                t = clock()
                fn(b)
                sync()
                times[name].append((clock() - t) / len(b))
    med = {name: statistics.median(v) for name, v in times.items()}
    f = med["plain forward"]
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"SegNet width {args.width}, {h}x{w}, {args.device}, {torch.get_num_threads()} "
          f"threads, {args.images} images in batches of {args.batch} x {args.rounds} rounds, "
          f"{args.clock} clock medians per image; relevance totals via "
          f"lrp_batch(keep={RELEVANCE_KEEP!r}); freed memory "
          f"{'kept' if kept else 'returned (glibc defaults)'}; load average {load}")
    for name, g in med.items():
        print(f"{name:<34}{1000 * g:>10.1f} ms/image {1 / g:>8.2f} images/s")
    for r in rules:
        print(f"ratio fingerprint {r} / forward: {med[f'diagnose fingerprint {r}'] / f:.2f}x "
              f"(target <= 2.5x)")


if __name__ == "__main__":
    main()
