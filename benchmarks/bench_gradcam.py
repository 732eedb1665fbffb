"""Cost of Grad-CAM on SegNet against a plain forward pass and captum's LayerGradCam.

    python benchmarks/bench_gradcam.py                  # full SegNet, 360x480, CPU
    python benchmarks/bench_gradcam.py --width 0.25 --repeats 5

Prints the median time of: a forward pass without autograd (the baseline), segscope's
Grad-CAM at one layer, its receptive-field variant, Grad-CAM at all 37 layers from one
pass, and captum's ``LayerGradCam`` on the same target (skipped when captum cannot be
imported; ``pip install --no-deps captum`` works without torchvision). Target: Grad-CAM
≤ 3x the forward pass. The captum map is also compared with segscope's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import segscope
from segscope.explain import Concept, gradcam, gradcam_layers
from segscope.explain.cam import cam_weights, gradcam_maps, upsample


def median_times(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per function, timed in interleaved rounds.

    Interleaving (one call of each per round) spreads the load of a shared machine over
    all rows alike, so that the ratios stay meaningful when the absolute times are noisy.
    """
    for fn in fns.values():
        fn()  # warm-up (allocator, oneDNN kernels)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0, help="SegNet channel multiplier")
    parser.add_argument("--size", default="360x480", help="image HxW")
    parser.add_argument("--layer", default="conv5_1_D")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))

    torch.manual_seed(0)
    model = segscope.SegNet(num_classes=3, width=args.width).eval()
    with torch.no_grad():  # non-trivial BN statistics and biases, as a trained model has
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, torch.nn.Conv2d):
                m.bias.uniform_(-0.05, 0.05)
    image = torch.rand(3, h, w)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 2 :, w // 4 : 3 * w // 4] = True  # a "road" region
    # An untrained network's map is often all zero after the ReLU; explain the class with
    # the strongest map, so that the comparison with captum compares something.
    peaks = [float(gradcam(model, image, Concept.mask(c, mask), args.layer).max())
             for c in range(model.num_classes)]
    cls = max(range(model.num_classes), key=peaks.__getitem__)
    concept = Concept.mask(cls, mask)
    print(f"SegNet width {args.width}, {h}x{w}, layer {args.layer}, class {cls}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")

    def forward():
        with torch.no_grad():
            model(image[None])

    fns = {
        "forward (no grad)": forward,
        "segscope gradcam": lambda: gradcam(model, image, concept, args.layer),
        "segscope gradcam receptive_field":
            lambda: gradcam(model, image, concept, args.layer, receptive_field=True),
        "segscope gradcam_layers (37 layers)": lambda: gradcam_layers(model, image, concept),
    }
    ours = gradcam(model, image, concept, args.layer)
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except Exception as exc:  # noqa: BLE001 - any import failure means: no captum here
        print(f"captum not available ({type(exc).__name__}: {exc}); skipping its row")
        captum_run = None
    else:
        weights = torch.zeros(1, 3, h, w)
        weights[0, cls] = mask.float()

        class MaskedScore(torch.nn.Module):
            """The segmentation target as captum needs it: one scalar per batch item."""

            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x):
                return (self.model(x) * weights).sum(dim=(1, 2, 3))

        lgc = LayerGradCam(MaskedScore().eval(), model.layer(args.layer))

        def captum_run():
            low = lgc.attribute(image[None], relu_attributions=True)
            pad_h, pad_w = model.padded_size(h, w)
            return LayerAttribution.interpolate(low, (pad_h, pad_w), "bilinear")[0, 0, :h, :w]

        fns["captum LayerGradCam"] = captum_run
    medians = median_times(fns, args.repeats)
    rows = list(medians.items())

    base = rows[0][1]
    print(f"\n| {'method':<38} | {'median s':>9} | {'x forward':>9} |")
    print(f"|{'-' * 40}|{'-' * 11}:|{'-' * 11}:|")
    for name, t in rows:
        print(f"| {name:<38} | {t:>9.3f} | {t / base:>9.2f} |")
    if captum_run is not None:
        diff = float((captum_run().detach() - ours).abs().max())
        print(f"\nmax |captum - segscope| = {diff:.3g} (map max {float(ours.max()):.3g})")
        # Before the ReLU too, which an untrained network's map may zero entirely.
        maps, g = gradcam_maps(model, image, concept, [args.layer])
        a, grad = g.activations[args.layer], g.gradients[args.layer]
        ours_pre = upsample(torch.einsum("k,khw->hw", cam_weights(grad), a), g.padded, g.size)
        low = lgc.attribute(image[None], relu_attributions=False)
        theirs_pre = LayerAttribution.interpolate(low, g.padded, "bilinear")[0, 0, :h, :w]
        diff = float((theirs_pre.detach() - ours_pre).abs().max())
        print(f"before the ReLU: max |captum - segscope| = {diff:.3g} "
              f"(max |map| {float(ours_pre.abs().max()):.3g})")


if __name__ == "__main__":
    main()
