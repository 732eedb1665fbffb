"""Click-to-heatmap latency of ``segscope explore``, over HTTP, against a forward pass.

    python benchmarks/bench_explore.py --threads 2                 # width 0.25 and 1.0
    python benchmarks/bench_explore.py --width 0.25 --repeats 9 --threads 2
    python benchmarks/bench_explore.py -c model.safetensors --threads 2

Starts the explore server in this process (uvicorn, in a thread) on a synthetic 360x480
scene and times, as the page does it, a click: ``POST /api/explain`` for one pixel
(LRP α1β0 with every layer's per-channel totals for the fv profiles, the bias shares and
the switch-off curve) followed by ``GET heatmap.png``. Each click is a new pixel on the
same image, so the cached forward state is reused. Baseline, in the same run and
interleaved round by round: a plain forward pass of the model on the same image
(``torch.no_grad``). Also timed: the layer-by-layer grid the page asks for after the
heatmap (``GET layers.json``: a second sweep keeping every layer), opening an image (its
prediction) and the first click on it (forward state included).
Targets (issue 13): click ≤ 0.5 s at width 0.25, ≤ 3 s at full width, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request

import torch

import segscope
from segscope.explore import Catalog, Explorer, running


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as resp:
        return resp.read()


def model_of(width: float, checkpoint: str | None) -> torch.nn.Module:
    if checkpoint:
        from segscope.checkpoint import load_model

        return load_model(checkpoint)[0]
    torch.manual_seed(0)
    model = segscope.SegNet(num_classes=3, width=width).eval()
    with torch.no_grad():  # non-trivial BN statistics and biases, as a trained model has
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, torch.nn.Conv2d):
                m.bias.data.uniform_(-0.05, 0.05)
    return model


def bench(width: float, checkpoint: str | None, size: tuple[int, int], repeats: int) -> dict:
    model = model_of(width, checkpoint)
    h, w = size
    # Two images: the first click of each round goes to a fresh image (forward included).
    catalog = Catalog([f"synthetic:{repeats + 2}:narrow:3"], size=size)
    explorer = Explorer(model, catalog, states=2)
    ids = list(catalog.items)
    image, _ = catalog.load(ids[0])
    x = image[None]
    times: dict[str, list[float]] = {"forward": [], "click": [], "layer grid": [],
                                     "open image": [], "first click": []}
    with running(explorer) as url:
        def click(item: str, k: int) -> str:
            r = post(f"{url}/api/explain", {"image": item, "concept": {
                "kind": "pixel", "y": (h // 3 + 17 * k) % h, "x": (w // 4 + 29 * k) % w}})
            get(f"{url}/api/results/{r['id']}/heatmap.png")
            return r["id"]

        get(f"{url}/api/images/{ids[0]}")
        click(ids[0], 0)  # warm-up: graph, kernels, allocator
        with torch.no_grad():
            model(x)
        for k in range(1, repeats + 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                model(x)
            times["forward"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rid = click(ids[0], k)
            times["click"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            get(f"{url}/api/results/{rid}/layers.json")
            times["layer grid"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            get(f"{url}/api/images/{ids[k]}")
            times["open image"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            click(ids[k], k)
            times["first click"].append(time.perf_counter() - t0)
    catalog.close()
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, action="append", default=None,
                        help="SegNet channel multiplier (repeatable; default 0.25 and 1.0)")
    parser.add_argument("-c", "--checkpoint", default=None, help="a trained model instead")
    parser.add_argument("--size", default="360x480", help="image HxW")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    widths = [None] if args.checkpoint else (args.width or [0.25, 1.0])
    print(f"segscope explore, {size[0]}x{size[1]}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} (seconds; ratio to a forward pass)")
    columns = ("click", "layer grid", "open image", "first click")
    print(f"{'model':>14} {'forward':>8} " + " ".join(f"{c:>14}" for c in columns))
    for width in widths:
        t = bench(width or 0.0, args.checkpoint, size, args.repeats)
        name = "checkpoint" if width is None else f"width {width:g}"
        f = t["forward"]
        cells = [f"{t[k]:6.3f} ({t[k] / f:4.1f}x)" for k in columns]
        print(f"{name:>14} {f:8.3f} " + " ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
