"""SegNet inference time per image at 360x480 (median), for width 1.0 and 0.25.

    python benchmarks/bench_inference.py
    python benchmarks/bench_inference.py --widths 0.25 --runs 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segscope import SegNet
from segscope.predict import predict_labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="1.0,0.25")
    p.add_argument("--size", default="360x480")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{h}x{w}, batch 1, {args.device}, {torch.get_num_threads()} threads, "
          f"median of {args.runs}")
    print(f"{'width':>6}{'params (M)':>12}{'ms/image':>10}{'bf16 ms':>10}{'ch-last ms':>12}")
    image = torch.rand(1, 3, h, w)
    for width in (float(v) for v in args.widths.split(",")):
        torch.manual_seed(0)
        model = SegNet(width=width).to(device).eval()
        params = sum(t.numel() for t in model.parameters()) / 1e6
        row = []
        for kw in ({}, {"bf16": True}, {"channels_last": True}):
            net = model.to(memory_format=torch.channels_last) if kw.get("channels_last") \
                else model.to(memory_format=torch.contiguous_format)
            times = []
            for i in range(args.warmup + args.runs):
                t = time.perf_counter()
                predict_labels(net, image, device=device, **kw)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
            row.append(1000 * statistics.median(times))
        print(f"{width:>6}{params:>12.2f}{row[0]:>10.1f}{row[1]:>10.1f}{row[2]:>12.1f}")


if __name__ == "__main__":
    main()
