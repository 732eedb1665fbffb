"""Synthetic generator throughput vs one SegNet training step (and vs an older generator).

Measures images/s of :func:`segscope.data.render_scene` at 360x480 for every preset in
one process (median over several runs, by the wall clock and by this process's CPU
time), images/s delivered by a DataLoader over ``SyntheticRoads`` with 2 worker
processes (what training sees), and the time of one training step (forward, backward,
SGD) of a width-0.25 SegNet at batch 4 on the same size; "batch/step" is the generator's
time per batch of 4 over the step time (below 1 a single worker keeps up with training).

With ``--baseline DIR`` (a checkout of an earlier segscope, e.g. made with
``git worktree add /tmp/base <commit>``) the same measurements run on that generator too,
interleaved with this one round by round in a second process, and the ratios are printed.

    python benchmarks/bench_generator.py [--runs 5] [--images 20] [--workers 2]
                                         [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZE = (360, 480)
BATCH = 4

# Run in this process and, with --baseline, in a second one importing the older segscope:
# one JSON request per line on stdin ({"preset", "seed", "images"} or {"loader", ...}),
# one rate per line on stdout.
_WORKER = r'''
import json, sys, time, os
import torch
from segscope.data.synthetic import SyntheticRoads, render_scene
SIZE, BATCH = (360, 480), 4

WARM = set()

def generator_rate(preset, seed, images):
    if preset not in WARM:  # first-call costs (caches, allocator) are not per-image costs
        WARM.add(preset)
        for i in range(3):
            render_scene(10**6 + seed, i, SIZE, preset)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(images):
        render_scene(seed, i, SIZE, preset)
    return images / (time.perf_counter() - t0), images / (time.process_time() - c0)

def loader_rate(preset, workers, images):
    data = SyntheticRoads(images + 4 * workers * BATCH, size=SIZE, preset=preset)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, num_workers=workers)
    it = iter(loader)
    for _ in range(2 * workers):  # start-up and the first prefetched batches
        next(it)
    t0, n = time.perf_counter(), 0
    for images_batch, _ in it:
        n += images_batch.shape[0]
    return n / (time.perf_counter() - t0)

def serve():
    import segscope
    print("generator:", os.path.dirname(os.path.dirname(segscope.__file__)), file=sys.stderr)
    render_scene(0, 0, SIZE, "narrow")  # textures are built once per process
    for line in sys.stdin:
        req = json.loads(line)
        if "loader" in req:
            out = [loader_rate(req["loader"], req["workers"], req["images"])]
        else:
            out = list(generator_rate(req["preset"], req["seed"], req["images"]))
        print(json.dumps(out), flush=True)
'''


class Generator:
    """Measures one segscope checkout: this one (in a child process as well, so both
    sides pay the same) or ``--baseline``'s."""

    def __init__(self, path: str | None) -> None:
        root = os.path.abspath(path or os.path.dirname(os.path.dirname(__file__)))
        env = dict(os.environ, PYTHONPATH=root)
        # run in the checkout: ``python -c`` puts the working directory first on the path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER + "\nserve()\n"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env, cwd=root)

    def ask(self, **req) -> list[float]:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the generator process failed (see above)")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def train_step_time(runs: int) -> float:
    """Median seconds of one SGD step of SegNet(width=0.25) at batch 4."""
    import torch

    from segscope import SegNet

    torch.manual_seed(0)
    model = SegNet(num_classes=3, width=0.25).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(BATCH, 3, *SIZE)
    y = torch.randint(0, 3, (BATCH, *SIZE))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    times = []
    for k in range(runs + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if k:  # the first step warms up allocators
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the train step")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--presets", default="narrow,urban,randomized")
    ap.add_argument("--baseline", metavar="DIR", help="an earlier segscope checkout to compare")
    args = ap.parse_args()
    import torch

    presets = args.presets.split(",")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    torch.set_num_threads(args.threads)
    step = train_step_time(args.runs)
    print(f"SegNet width 0.25, batch {BATCH}, {SIZE[0]}x{SIZE[1]}: "
          f"train step {step * 1e3:.0f} ms (median of {args.runs})")
    sides = {"this": Generator(None)}
    if args.baseline:
        sides["baseline"] = Generator(args.baseline)
    try:
        rates = {(side, preset): [] for side in sides for preset in presets}
        for r in range(args.runs):  # rounds interleave the sides and the presets
            for preset in presets:
                for side, gen in sides.items():
                    rates[side, preset].append(gen.ask(preset=preset, seed=r,
                                                       images=args.images))
        print(f"one process, median of {args.runs} runs of {args.images} images:")
        print(f"{'preset':<11} {'side':<9} {'images/s':>9} {'(cpu)':>7} {'ms/image':>9} "
              f"{'batch/step':>11}")
        for preset in presets:
            for side in sides:
                wall = statistics.median(v[0] for v in rates[side, preset])
                cpu = statistics.median(v[1] for v in rates[side, preset])
                print(f"{preset:<11} {side:<9} {wall:9.1f} {cpu:7.1f} {1e3 / wall:9.1f} "
                      f"{BATCH / wall / step:11.3f}")
            if args.baseline:
                ratio = [a[1] / b[1] for a, b in zip(rates["this", preset],
                                                     rates["baseline", preset], strict=True)]
                print(f"{preset:<11} this / baseline (cpu), median of rounds: "
                      f"{statistics.median(ratio):.2f}x")
        print(f"DataLoader over SyntheticRoads, {args.workers} workers, batch {BATCH}, "
              f"{20 * args.images} images, median of {args.runs} runs (min-max):")
        loader = {(side, preset): [] for side in sides for preset in presets}
        for _ in range(args.runs):  # a run starts its own workers; rounds interleave
            for preset in presets:
                for side, gen in sides.items():
                    loader[side, preset].append(gen.ask(loader=preset, workers=args.workers,
                                                        images=20 * args.images)[0])
        for preset in presets:
            line = f"{preset:<11}"
            for side in sides:
                v = loader[side, preset]
                line += (f" {side} {statistics.median(v):7.1f} images/s "
                         f"({min(v):.0f}-{max(v):.0f})")
            print(line)
    finally:
        for gen in sides.values():
            gen.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
