"""Region perturbation (MoRF AOPC) against Quantus's RegionPerturbation, in one run.

    python benchmarks/bench_faithfulness.py                      # SegNet width 0.25, 128x192
    python benchmarks/bench_faithfulness.py -c model.safetensors --images 4 --repeats 3

Quantus needs OpenCV, scikit-image and friends; install it beside segscope in a virtual
environment that sees the system's torch:

    python -m venv --system-site-packages /tmp/qenv && /tmp/qenv/bin/pip install quantus
    PYTHONPATH=. /tmp/qenv/bin/python benchmarks/bench_faithfulness.py

Both sides get the same model, images, concepts (a class's labelled pixels), maps
(gradient x input, LRP α1β0, Grad-CAM, a random map), 8x8 patches and baseline (0):
MoRF order, one patch per step for ``--regions`` steps. Quantus runs through the wrapper
a user writes for a segmentation model — a module returning the concept's score Σ y_c
over its pixels as a one-logit output, one per image because every image has its own
concept — called the two ways a user would: once per method (Quantus's usual call, one
``a_batch`` per explanation method; batches of one image), and once per image with all
its maps as one batch (the fastest call the wrapper allows). segscope scores all steps of
all maps of an image in large batches, each step as the previous one plus its new patch
(only the encoder tiles around it are recomputed, the decoder runs on the concept's
rows and columns); the row "segscope, every image whole" runs each perturbed image
through the whole (batch-norm-folded) network instead, to show what the incremental
scoring adds. Prints the median times over ``--repeats`` interleaved rounds, the ratios
(target ≥ 10x) and the largest AOPC difference (target ≤ 1e-4). Quantus's per-step
differences f(x) − f(x⁽ᵏ⁾), k = 1..L, are summed and divided by L+1 to give Samek et
al.'s AOPC, which counts the k = 0 point.

The maps are rounded to multiples of 2⁻¹⁶ of their largest magnitude first: Quantus sums
a patch's relevance in float32, segscope in float64, and two patches whose sums differ by
less than float32's resolution would otherwise come in a different order (one such swap
moves the AOPC by ~1e-3). On the rounded maps both sums are exact.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from torch import nn

import segscope
from segscope.explain import Concept
from segscope.faithfulness import explain_map
from segscope.perturbation import ConceptScorer, concept_weights, perturbation_curves


class ConceptLogit(nn.Module):
    """The wrapper a user writes to give Quantus a segmentation model: one output, the
    sum of class ``cls``'s scores over the concept's pixels."""

    def __init__(self, model: nn.Module, mask: torch.Tensor, cls: int) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mask", mask.float())
        self.cls = cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x)[:, self.cls] * self.mask).sum((1, 2))[:, None]


def quantise(m: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """``m`` rounded to multiples of 2^-bits of its largest magnitude (exact float32 sums)."""
    top = float(m.abs().max())
    if top == 0:
        return m.clone()
    unit = 2.0 ** (np.floor(np.log2(top)) - bits)
    return (torch.round(m.double() / unit) * unit).float()


def quantus_aopc(quantus, model, images, masks, classes, maps, patch: int, regions: int,
                 per_method: bool = False) -> list[list[float]]:
    """AOPC (MoRF, baseline 0) of each map of each image, computed by Quantus: one call per
    image with its maps as a batch, or (``per_method``) one call per image and map."""
    out = []
    for image, mask, cls, image_maps in zip(images, masks, classes, maps, strict=True):
        image_maps = [image_maps] if torch.is_tensor(image_maps) else list(image_maps)
        metric = quantus.RegionPerturbation(
            patch_size=patch, order="morf", regions_evaluation=regions, normalise=False,
            abs=False, perturb_baseline=0.0, disable_warnings=True,
            display_progressbar=False)
        wrapper = ConceptLogit(model, mask, cls).eval()
        groups = [[m] for m in image_maps] if per_method else [image_maps]
        row = []
        for group in groups:
            n = len(group)
            x = image[None].repeat(n, 1, 1, 1).numpy()
            a = torch.stack([m.float() for m in group])[:, None].numpy()
            diffs = metric(model=wrapper, x_batch=x, y_batch=np.zeros(n, dtype=np.int64),
                           a_batch=a, softmax=False, device="cpu", channel_first=True,
                           batch_size=n)
            row += [float(np.sum(d)) / (regions + 1) for d in diffs]
        out.append(row)
    return out


def segscope_aopc(model, images, concepts, maps, patch: int, regions: int,
                  scores: list | None = None, whole: bool = False) -> list[list[float]]:
    """segscope's AOPC of each map; ``whole``: every perturbed image through the whole
    network (no incremental scoring)."""
    out = []
    for image, concept, image_maps in zip(images, concepts, maps, strict=True):
        named = {str(i): m for i, m in enumerate(image_maps)}
        scorer = None
        if whole:
            weights, soft, _ = concept_weights(model, image, concept)
            scorer = ConceptScorer(model, weights, soft, incremental=False)
        curves = perturbation_curves(model, image, concept, named, patch=patch, steps=regions,
                                     regions=regions, baseline="colour:0,0,0",
                                     curves=("morf",), scorer=scorer)
        out.append([curves[k].summary()["aopc_morf_raw"] for k in named])
        if scores is not None:
            scores.append(curves["0"].score)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--checkpoint", default=None, help="model (default: random SegNet)")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--size", default="128x192")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--regions", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import quantus

    from segscope.data.real import open_dataset

    h, w = (int(v) for v in args.size.split("x"))
    if args.checkpoint:
        model, _ = segscope.load_model(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = segscope.SegNet(width=args.width)
    model = model.eval()
    data = open_dataset(f"synthetic:{args.images}:narrow:1", size=(h, w))
    images, masks, concepts, maps = [], [], [], []
    road = 1
    for i in range(len(data)):
        image, label = data[i]
        mask = label == road
        concept = Concept.mask(road, mask)
        images.append(image.float())
        masks.append(mask)
        concepts.append(concept)
        maps.append([quantise(explain_map(model, image, concept, m, r)) for m, r in
                     (("gradxinput", None), ("lrp", "alpha1beta0"), ("gradcam", None),
                      ("random", None))])
    n_maps = sum(len(m) for m in maps)
    print(f"SegNet width {model.width:g}, {len(images)} images {h}x{w}, {n_maps} maps, "
          f"{args.patch}x{args.patch} patches, {args.regions} MoRF steps each "
          f"({n_maps * args.regions} perturbed images), {torch.get_num_threads()} threads")

    roads = [road] * len(images)
    fns = {
        "segscope": lambda: segscope_aopc(model, images, concepts, maps, args.patch,
                                          args.regions),
        "segscope, every image whole": lambda: segscope_aopc(
            model, images, concepts, maps, args.patch, args.regions, whole=True),
        "quantus, one call per method": lambda: quantus_aopc(
            quantus, model, images, masks, roads, maps, args.patch, args.regions, True),
        "quantus, maps of an image batched": lambda: quantus_aopc(
            quantus, model, images, masks, roads, maps, args.patch, args.regions),
    }
    with torch.inference_mode():  # warm-up (allocator, oneDNN kernels) at both batch sizes
        model(images[0][None])
        model(images[0][None].repeat(8, 1, 1, 1))
    results: dict[str, list[list[float]]] = {}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ours = np.array([v for row in results["segscope"] for v in row])
    f0: list[float] = []
    segscope_aopc(model, images, concepts, maps, args.patch, args.regions, f0)
    scale = np.repeat(np.abs(f0), [len(m) for m in maps])
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'':36} {'median s':>9} {'segscope faster':>16} {'AOPC diff':>10} "
          f"{'/ |f(x)|':>10}")
    for k, t in med.items():
        diff = np.abs(ours - np.array([v for row in results[k] for v in row]))
        print(f"{k:36} {t:9.3f} {t / med['segscope']:15.1f}x {diff.max():10.2e} "
              f"{(diff / scale).max():10.2e}")
    print("targets: >= 10x; AOPC equal to 1e-4 (the table's AOPC is relative to |f(x)|;")
    print("Quantus sums the concept's scores in float32, so the raw values differ at the")
    print(f"float32 resolution of f(x) ~ {np.abs(f0).max():.3g})")
    print(f"AOPC (segscope): {np.round(ours, 4).tolist()}")


if __name__ == "__main__":
    main()
