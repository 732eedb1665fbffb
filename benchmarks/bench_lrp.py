"""Benchmark of segscope's LRP on SegNet (CPU): forward, one explanation, zennit, feature
separation of conv2_1, and the peak memory of keep="all".

Run: ``python benchmarks/bench_lrp.py`` (full width, 360x480, as in the README table);
``--width 0.25`` for a quicker run. All numbers of one table come from one run; times are
medians over ``--repeats`` runs.

Targets: one α1β0 explanation ≤ 3.5× a forward pass; ≥ 5× faster than zennit's same
explanation; all 128 conv2_1 channels to the pixels ≤ 4× one explanation (float32; the
bfloat16 sweep is reported beside it, with its error).

``--threads N`` sets torch's threads (the README quotes 1 and 2). The load of the machine
(``os.getloadavg``) is printed with the table: on a shared machine compare ratios, which
come from one interleaved run, rather than absolute times.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types

import torch

import segscope
from segscope.explain import Concept, lrp, separate_features


def make_model(width: float, seed: int = 0) -> segscope.SegNet:
    torch.manual_seed(seed)
    model = segscope.SegNet(3, width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, torch.nn.Conv2d):
                m.bias.uniform_(-0.05, 0.05)
    return model.eval()


def load_zennit():
    """zennit's modules, or None (without torchvision: loaded past its package __init__,
    which imports zennit.torchvision; nothing is stubbed). Same as the comparison test."""
    try:
        import zennit.attribution
        import zennit.canonizers
        import zennit.composites
        import zennit.rules

        return zennit
    except ImportError as exc:
        if "torchvision" not in str(exc):
            return None
    spec = importlib.util.find_spec("zennit")
    if spec is None or not spec.submodule_search_locations:
        return None
    for k in [k for k in sys.modules if k == "zennit" or k.startswith("zennit.")]:
        del sys.modules[k]
    pkg = types.ModuleType("zennit")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["zennit"] = pkg
    try:
        for sub in ("core", "types", "rules", "layer", "canonizers", "composites",
                    "attribution"):
            setattr(pkg, sub, importlib.import_module(f"zennit.{sub}"))
    except ImportError:
        return None
    return pkg


def zennit_explain(z, model, image, initial):
    composite = z.composites.LayerMapComposite(
        layer_map=[(z.types.Convolution, z.rules.AlphaBeta(alpha=1.0, beta=0.0))],
        canonizers=[z.canonizers.SequentialMergeBatchNorm()],
    )
    x = image[None].clone().requires_grad_(True)
    with z.attribution.Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x, initial[None])
    return relevance[0].detach()


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peak_rss_child(args, variant: str) -> float:
    """Peak resident memory (GiB) of a fresh process running one keep= variant."""
    cmd = [sys.executable, __file__, "--child", variant, "--width", str(args.width),
           "--size", args.size]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_gib"]


def child(args) -> None:
    h, w = _size(args.size)
    model = make_model(args.width)
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    concept = Concept.pixel("road", h // 2, w // 2)
    keep, dtype = {"none": (None, torch.float32), "float32": ("all", torch.float32),
                   "float16": ("all", torch.float16),
                   "totals": ("totals", torch.float32)}[args.child]
    e = lrp(model, image, concept, keep=keep, dtype_keep=dtype)
    kept = sum(t.numel() * t.element_size() for t in e.layers.values()) / 1024**3
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    print(json.dumps({"peak_gib": hwm / 1024**2, "kept_gib": kept}))


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0, help="SegNet width multiplier.")
    p.add_argument("--size", default="360x480", help="Image size HxW.")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all).")
    p.add_argument("--no-zennit", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    h, w = _size(args.size)
    model = make_model(args.width)
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    concept = Concept.pixel("road", h // 2, w // 2)
    print(f"SegNet width {args.width}, {h}x{w}, CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, median of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.2f}")
    # Interleaved: every round times each variant once, back to back, so that a ratio
    # compares runs made under the same load; the table gives median times and the
    # median of the per-round ratios.
    z = None if args.no_zennit else load_zennit()
    with torch.no_grad():
        model(image[None])  # warm-ups
    e = lrp(model, image, concept)
    n = e.state.layer_shape("conv2_1")[0]
    jobs = {
        "fwd": lambda: _no_grad(model, image),
        "lrp": lambda: lrp(model, image, concept),
        "sep": lambda: separate_features(model, image, e, "conv2_1"),
        "bf16": lambda: separate_features(model, image, e, "conv2_1", dtype=torch.bfloat16),
    }
    if z is not None:
        jobs["zennit"] = lambda: zennit_explain(z, model, image, e.initial)
    for fn in jobs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    out: dict[str, object] = {}
    for _ in range(args.repeats):
        for k, fn in jobs.items():
            t, out[k] = timed(fn, 1)
            times[k].append(t)

    def med(k: str) -> float:
        return statistics.median(times[k])

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    rows = [("forward (plain model)", med("fwd"), "1.00x forward"),
            ("LRP alpha1beta0, one concept", med("lrp"),
             f"{ratio('lrp', 'fwd'):.2f}x forward (target <= 3.5x)")]
    if z is not None:
        rz = out["zennit"]
        diff = float((rz - e.input).norm() / rz.norm())
        rows.append(("zennit AlphaBeta(1,0), same concept", med("zennit"),
                     f"segscope {ratio('zennit', 'lrp'):.2f}x faster (target >= 5x); "
                     f"rel. L2 diff {diff:.1e}"))
    else:
        rows.append(("zennit", float("nan"), "not importable"))
    fs, fb = out["sep"], out["bf16"]
    rows.append((f"separate_features conv2_1 ({n} channels)", med("sep"),
                 f"{ratio('sep', 'lrp'):.2f}x one explanation (target <= 4x)"))
    bf_err = float((fb.pixels - fs.pixels).norm() / fs.pixels.norm())
    bf_max = float((fb.pixels - fs.pixels).abs().max() / fs.pixels.abs().max())
    rows.append(("  same, dtype=torch.bfloat16", med("bf16"),
                 f"{ratio('bf16', 'lrp'):.2f}x one explanation; vs float32: rel. L2 "
                 f"{bf_err:.1e}, max {bf_max:.1e} of max|R|"))
    scale = float(e.pixels.abs().max())
    err = float((fs.pixels.sum(0) - _pixels_from(model, image, e)).abs().max()) / scale
    print(f"(check: Σ_k feature maps vs whole-layer map, max error {err:.1e} of max|R|)")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'median s':>9}  ratio")
    for name, t, note in rows:
        print(f"{name:<{width}}  {t:9.3f}  {note}")
    if not args.no_memory:
        base = peak_rss_child(args, "none")
        f32 = peak_rss_child(args, "float32")
        f16 = peak_rss_child(args, "float16")
        tot = peak_rss_child(args, "totals")
        print(f"peak RSS (VmHWM): keep=None {base:.2f} GiB, keep='all' float32 {f32:.2f} GiB, "
              f"keep='all' float16 {f16:.2f} GiB, keep='totals' {tot:.2f} GiB")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def _no_grad(model, image):
    with torch.no_grad():
        return model(image[None])


def _pixels_from(model, image, e):
    from segscope.explain import propagate

    rel = lrp(model, image, e.concept, keep=["conv2_1"], state=e.state).layers["conv2_1"]
    return propagate(model, image, "conv2_1", rel, state=e.state).pixels[0]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
