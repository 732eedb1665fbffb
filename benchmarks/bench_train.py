"""One training step through segscope vs a bare PyTorch step of the same model and batch.

segscope's step (:class:`segscope.training.TrainStep`: weighted cross-entropy with ignore
index, zero_grad, backward, SGD update, and the loss read back as the training loop does)
against the plain five lines of PyTorch a user would write. Measurements alternate between
the two so that load from other processes hits both alike; medians and their ratio are
printed. Variants: channels_last memory format and bf16 autocast.

    python benchmarks/bench_train.py                      # width 0.25, 360x480, batch 4
    python benchmarks/bench_train.py --width 1.0 --steps 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from segscope import SegNet
from segscope.training import TrainStep


def bare_step(model, optimizer, weight, images, labels) -> float:
    scores = model(images)
    loss = F.cross_entropy(scores, labels, weight=weight, ignore_index=255)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)


def measure(args, channels_last: bool, bf16: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    base = SegNet(width=args.width).to(device).train()
    ours, bare = copy.deepcopy(base), copy.deepcopy(base)
    if channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    weight = torch.tensor([1.0, 1.0, 5.0], device=device)
    step = TrainStep(ours, sgd(ours), weight, device, channels_last=channels_last, bf16=bf16)
    opt_bare = sgd(bare)
    h, w = args.size
    images = torch.rand(args.batch, 3, h, w)
    labels = torch.randint(0, 3, (args.batch, h, w))
    t_ours, t_bare = [], []
    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def run_ours():
        float(step(images, labels))

    def run_bare():
        bare_step(bare, opt_bare, weight, images.to(device), labels.to(device))

    for i in range(args.warmup + args.steps):
        if i % 2:
            b, a = timed(run_bare), timed(run_ours)
        else:
            a, b = timed(run_ours), timed(run_bare)
        if i >= args.warmup:
            t_ours.append(a)
            t_bare.append(b)
    return statistics.median(t_ours), statistics.median(t_bare)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--size", default="360x480")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--variants", default="default,channels_last,bf16,channels_last+bf16",
                   help="comma list of default, channels_last, bf16, channels_last+bf16")
    args = p.parse_args()
    args.size = tuple(int(v) for v in args.size.split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"SegNet width {args.width}, batch {args.batch} x {args.size[0]}x{args.size[1]}, "
          f"{args.device}, {torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'variant':<16}{'segscope ms':>13}{'bare ms':>10}{'ratio':>8}")
    results = {}
    for variant in args.variants.split(","):
        ours, bare = measure(args, channels_last="channels_last" in variant,
                             bf16="bf16" in variant)
        results[variant] = ours
        print(f"{variant:<16}{1000 * ours:>13.1f}{1000 * bare:>10.1f}{ours / bare:>8.3f}")
    if "default" in results:
        for variant, t in results.items():
            if variant != "default":
                print(f"{variant} vs default (segscope step): {t / results['default']:.3f}x time")


if __name__ == "__main__":
    main()
