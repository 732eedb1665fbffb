"""What keeping freed memory (``segscope.allocator.keep_freed_memory``, which every
``segscope`` command turns on) is worth on the CPU, against glibc's defaults.

Each workload runs in child processes, one with the setting and one with
``SEGSCOPE_ALLOCATOR=system`` (glibc's defaults: a fresh ``mmap`` for every block above
32 MB), alternating round by round so that both see the same machine load. Printed: the
median time per pass, the minor page faults per pass, the peak resident memory, and the
ratio default / kept.

    python benchmarks/bench_allocator.py                 # all workloads, 3 rounds
    python benchmarks/bench_allocator.py --rounds 5 --threads 2 --only forward,train

Workloads: ``forward`` (full-width SegNet, 360x480, one image, no autograd), ``diagnose``
(its fingerprint: forward + LRP sweep keeping per-channel totals, same model and image),
``train`` (one Adam step of the demo's model: width 0.25, 8 images of 128x192).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOADS = ("forward", "diagnose", "train")

_CHILD = r'''
import json, resource, sys, time
import torch
from segscope.allocator import keep_freed_memory
applied = keep_freed_memory()
name, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
from segscope import SegNet
if name == "train":
    import torch.nn.functional as F
    model = SegNet(width=0.25)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = torch.rand(8, 3, 128, 192), torch.randint(0, 3, (8, 128, 192))
    def run():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
else:
    from segscope.data import SyntheticRoads
    model = SegNet(width=1.0).eval()
    x = SyntheticRoads(1, size=(360, 480), seed=5, preset="randomized")[0][0][None]
    if name == "forward":
        def run():
            with torch.no_grad():
                model(x)
    else:
        from segscope.explain.graph import build_graph
        from segscope.fingerprint import image_fingerprints, layout_of
        graph = build_graph(model)
        layout = layout_of(model, (360, 480), graph=graph)
        def run():
            image_fingerprints(model, x, 0, graph=graph, layout=layout)
run()  # warm-up: the first passes fill the heap (and the optimiser state) either way
run()
times, faults = [], []
for _ in range(reps):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"applied": applied, "times": times, "faults": faults,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def child(name: str, threads: int, reps: int, system: bool) -> dict:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_MAX_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    env["SEGSCOPE_ALLOCATOR"] = "system" if system else "keep"
    out = subprocess.run([sys.executable, "-c", _CHILD, name, str(threads), str(reps)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="child processes per setting")
    p.add_argument("--reps", type=int, default=3, help="timed passes per child")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=",".join(WORKLOADS))
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)} (choose from {', '.join(WORKLOADS)})")
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{args.threads} thread(s), {args.rounds} rounds x {args.reps} passes per setting, "
          f"wall-clock medians; load average {load}")
    print(f"{'workload':<10}{'setting':<22}{'ms/pass':>9}{'faults/pass':>13}{'peak MB':>9}")
    for name in names:
        res: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.rounds):
            for system in (True, False):
                res[system].append(child(name, args.threads, args.reps, system))
        med = {}
        for system, label in ((True, "glibc defaults"), (False, "keep_freed_memory")):
            runs = res[system]
            if not system and not all(r["applied"] for r in runs):
                print(f"{name:<10}keep_freed_memory not applied here (not glibc?)")
            t = statistics.median(v for r in runs for v in r["times"])
            f = statistics.median(v for r in runs for v in r["faults"])
            m = max(r["maxrss_mb"] for r in runs)
            med[system] = t
            print(f"{name:<10}{label:<22}{1000 * t:>9.0f}{f:>13.0f}{m:>9.0f}")
        print(f"{name:<10}{'ratio default / kept':<22}{med[True] / med[False]:>9.2f}x")


if __name__ == "__main__":
    main()
