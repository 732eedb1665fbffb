"""Synthetic generator throughput vs one SegNet training step.

Measures images/s of :func:`segscope.data.render_scene` at 360x480 for every preset
(median over several runs) and the time of one training step (forward, backward, SGD) of a
width-0.25 SegNet at batch 4 on the same size, then prints the ratio
"generator time per batch of 4 / step time": below 1 the generator keeps up with training
in a single worker.

    python benchmarks/bench_generator.py [--runs 5] [--images 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segscope import SegNet
from segscope.data.synthetic import PRESETS, SyntheticRoads, render_scene
from segscope.data.synthetic_render import textures

SIZE = (360, 480)
BATCH = 4


def generator_rate(preset: str, runs: int, images: int) -> tuple[float, float]:
    """Median images per second over ``runs`` runs of ``images`` scenes each: by the wall
    clock and by this process's CPU time (the generator is single-threaded, so the latter
    is what an idle core would give on a shared machine)."""
    wall, cpu = [], []
    for r in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(images):
            render_scene(r, i, SIZE, preset)
        wall.append(images / (time.perf_counter() - t0))
        cpu.append(images / (time.process_time() - c0))
    return statistics.median(wall), statistics.median(cpu)


def loader_rate(preset: str, workers: int, images: int) -> float:
    """Images per second delivered by a DataLoader over ``SyntheticRoads`` with
    ``workers`` processes (what training sees), after the workers have started."""
    data = SyntheticRoads(images + 4 * workers * BATCH, size=SIZE, preset=preset)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, num_workers=workers)
    it = iter(loader)
    for _ in range(2 * workers):  # start-up and the first prefetched batches
        next(it)
    t0, n = time.perf_counter(), 0
    for images_batch, _ in it:
        n += images_batch.shape[0]
    return n / (time.perf_counter() - t0)


def train_step_time(runs: int) -> float:
    """Median seconds of one SGD step of SegNet(width=0.25) at batch 4."""
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
    args = ap.parse_args()
    import os

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    torch.set_num_threads(args.threads)
    textures()  # built once per process; not part of the per-image cost
    step = train_step_time(args.runs)
    print(f"SegNet width 0.25, batch {BATCH}, {SIZE[0]}x{SIZE[1]}: "
          f"train step {step * 1e3:.0f} ms (median of {args.runs})")
    print(f"{'preset':<11} {'images/s':>9} {'(cpu)':>7} {'ms/image':>9} {'ms/batch':>9} "
          f"{'batch/step':>11}")
    for preset in PRESETS:
        rate, cpu_rate = generator_rate(preset, args.runs, args.images)
        per_batch = BATCH / rate
        print(f"{preset:<11} {rate:9.1f} {cpu_rate:7.1f} {1e3 / rate:9.1f} "
              f"{per_batch * 1e3:9.1f} {per_batch / step:11.3f}")
    print(f"DataLoader over SyntheticRoads, {args.workers} workers, batch {BATCH}:")
    for preset in PRESETS:
        rate = loader_rate(preset, args.workers, 20 * args.images)
        print(f"{preset:<11} {rate:9.1f} images/s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
