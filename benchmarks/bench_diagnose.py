"""Diagnose throughput: one image's fingerprint (forward pass + LRP sweep keeping every
layer's per-channel totals + activation and confidence statistics) against a plain
forward pass over the same images, in the same run (target: <= 2.5x).

    python benchmarks/bench_diagnose.py
    python benchmarks/bench_diagnose.py --width 0.25 --images 8 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segscope import SegNet
from segscope.data import SyntheticRoads
from segscope.explain.graph import build_graph
from segscope.fingerprint import RELEVANCE_KEEP, image_fingerprint, layout_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--size", default="360x480")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = SegNet(width=args.width).to(device).eval()
    data = SyntheticRoads(args.images, size=(h, w), seed=5, preset="randomized")
    images = [data[i][0] for i in range(args.images)]
    graph = build_graph(model)
    layout = layout_of(model, (h, w), graph=graph)
    # An untrained model: explain the class it predicts most, so no concept is empty.
    with torch.no_grad():
        counts = sum(torch.bincount(model(im[None].to(device))[0].argmax(0).flatten().cpu(),
                                    minlength=3) for im in images)
    cls = int(counts.argmax())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward(im: torch.Tensor) -> None:
        with torch.no_grad():
            model(im[None].to(device))

    def fingerprint(im: torch.Tensor) -> None:
        fp = image_fingerprint(model, im, cls, graph=graph, layout=layout)
        assert fp.scalar("empty")[0] == 0

    for fn in (forward, fingerprint):  # warm-up
        fn(images[0])
        sync()
    fwd, fpr = [], []
    for _ in range(args.rounds):  # interleaved rounds: both see the same machine load
        for fn, times in ((forward, fwd), (fingerprint, fpr)):
            for im in images:
                t = time.perf_counter()
                fn(im)
                sync()
                times.append(time.perf_counter() - t)
    f, g = statistics.median(fwd), statistics.median(fpr)
    print(f"SegNet width {args.width}, {h}x{w}, {args.device}, {torch.get_num_threads()} "
          f"threads, {args.images} images x {args.rounds} rounds, medians; "
          f"relevance totals via lrp(keep={RELEVANCE_KEEP!r})")
    print(f"{'plain forward':<26}{1000 * f:>10.1f} ms/image {1 / f:>8.2f} images/s")
    print(f"{'diagnose fingerprint':<26}{1000 * g:>10.1f} ms/image {1 / g:>8.2f} images/s")
    print(f"ratio fingerprint / forward: {g / f:.2f}x (target <= 2.5x)")


if __name__ == "__main__":
    main()
