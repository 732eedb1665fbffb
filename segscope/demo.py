"""``segscope demo``: the whole pipeline on built-in synthetic data, on a CPU.

The demo is a list of steps (:data:`STEPS`); each is a function ``step(ctx)`` that reads
and extends a :class:`DemoContext` and records what it produced in ``ctx.summary``. Add a
step by appending to :data:`STEPS` (or passing ``steps=`` to :func:`run_demo`).

Default settings were tuned so that, on two CPU cores, the run takes well under ten
minutes and reaches road IoU >= 0.90 and markings IoU >= 0.60 on synthetic validation
images (see docs/training.md for the measured numbers).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._io import write_json
from .errors import SegscopeError

#: The bar a default demo run has to clear on synthetic validation images.
BAR = {"road": 0.90, "markings": 0.60}


@dataclasses.dataclass
class DemoOptions:
    """Settings of a demo run; :meth:`quick` gives the < 30 s smoke-test version."""

    out: str = "segscope-demo"
    real: str | None = None
    device: str = "auto"
    seed: int = 0
    preset: str = "narrow"
    size: tuple[int, int] = (128, 192)
    width: float = 0.25
    n_train: int = 800
    n_val: int = 100
    n_monitor: int = 24
    iters: int = 400
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 20
    # The square root of the median-frequency weights: markings still count ~5x, with
    # fewer false positives than the full weights (markings IoU is the harder half of
    # the bar).
    class_weights: str = "sqrt"
    val_every: int = 100
    real_limit: int | None = None
    n_predictions: int = 4
    threads: int | None = None
    quick: bool = False
    quiet: bool = False

    @classmethod
    def quick_options(cls, **kw: Any) -> DemoOptions:
        """A tiny model for a few iterations: exercises every step in seconds."""
        base = dict(size=(64, 96), width=0.0625, n_train=16, n_val=6, n_monitor=4, iters=8,
                    batch_size=4, val_every=4, warmup=2, real_limit=4, n_predictions=2,
                    quick=True)
        base.update(kw)
        return cls(**base)


@dataclasses.dataclass
class DemoContext:
    """What the steps share: options, output folder, data, model and the summary."""

    options: DemoOptions
    out: Path
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: Any = None
    model_path: Path | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    def log(self, message: str) -> None:
        if not self.options.quiet:
            print(message, file=sys.stderr, flush=True)


class InMemory(Dataset):
    """A dataset rendered once and kept in memory (images as uint8, labels as uint8).

    Training reads every image several times; rendering a scene costs about as much as a
    training step on a small model, so the demo renders each scene once.
    """

    has_markings = True

    def __init__(self, source: Dataset, quiet: bool = True, desc: str = "render") -> None:
        from tqdm.auto import tqdm

        n = len(source)
        first, _ = source[0]
        h, w = first.shape[-2:]
        self.images = torch.empty((n, 3, h, w), dtype=torch.uint8)
        self.labels = torch.empty((n, h, w), dtype=torch.uint8)
        for i in tqdm(range(n), desc=desc, unit="img", disable=quiet, leave=False):
            image, label = source[i]
            self.images[i] = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
            self.labels[i] = label.to(torch.uint8)
        self.has_markings = getattr(source, "has_markings", True)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].float().div_(255.0), self.labels[i].long()


# -- steps -------------------------------------------------------------------------------
def step_data(ctx: DemoContext) -> None:
    """Render the synthetic training and validation sets; write a sample and contact sheet."""
    from .data.synthetic import SyntheticRoads

    o = ctx.options
    quiet = o.quiet or not sys.stderr.isatty()
    train = SyntheticRoads(o.n_train, size=o.size, seed=o.seed, preset=o.preset)
    # another seed: validation scenes are never training scenes
    val = SyntheticRoads(o.n_val, size=o.size, seed=o.seed + 1, preset=o.preset)
    ctx.data["train"] = InMemory(train, quiet, "render train")
    ctx.data["val"] = InMemory(val, quiet, "render val")
    ctx.data["monitor"] = torch.utils.data.Subset(ctx.data["val"],
                                                  range(min(o.n_monitor, o.n_val)))
    ctx.data["val_source"] = val
    sample = ctx.out / "synthetic-sample"
    try:
        from .cli.synth import write_dataset
    except ImportError:  # the synth command is optional for the demo
        write_dataset = None
    if write_dataset is not None:
        write_dataset(SyntheticRoads(8, size=o.size, seed=o.seed + 1, preset=o.preset), sample)
    ctx.summary["data"] = {
        "preset": o.preset, "size": list(o.size), "train_images": o.n_train,
        "train_seed": o.seed, "val_images": o.n_val, "val_seed": o.seed + 1,
        "sample": str(sample) if write_dataset is not None else None,
    }
    ctx.log(f"data: {o.n_train} training + {o.n_val} validation scenes "
            f"({o.size[0]}x{o.size[1]}, preset {o.preset})")


def step_train(ctx: DemoContext) -> None:
    """Train a small SegNet on the rendered scenes (validating on a few of the val scenes)."""
    from .training import TrainConfig, train

    o = ctx.options
    config = TrainConfig(
        data=ctx.data["train"], val_data=ctx.data["monitor"], out=str(ctx.out / "train"),
        width=o.width, iters=o.iters, batch_size=o.batch_size, optimizer=o.optimizer, lr=o.lr,
        weight_decay=o.weight_decay, schedule=o.schedule, warmup=o.warmup,
        class_weights=o.class_weights, val_every=o.val_every, seed=o.seed, device=o.device,
        quiet=o.quiet, log_every=10,
    )
    ctx.log(f"train: SegNet width {o.width}, {o.iters} iterations of {o.batch_size} images, "
            f"{o.optimizer} lr {o.lr} ({o.schedule})")
    result = train(config)
    ctx.model_path = result.model_path
    from .checkpoint import load_model

    ctx.model, _ = load_model(result.model_path, map_location=ctx.device)
    ctx.summary["train"] = {
        "model": str(result.model_path), "iterations": result.step,
        "seconds": round(result.seconds, 1), "final_loss": next(
            (r["loss"] for r in reversed(result.history) if r.get("loss") is not None), None),
        "class_weights": result.class_weights,
        "config": {k: v for k, v in config.to_json().items() if k not in ("data", "val_data")},
    }


def step_evaluate(ctx: DemoContext) -> None:
    """Score the model on all synthetic validation scenes."""
    from .predict import evaluate_dataset

    cm = evaluate_dataset(ctx.model, ctx.data["val"], device=ctx.device, batch_size=8,
                          quiet=ctx.options.quiet or not sys.stderr.isatty(),
                          desc="evaluate synthetic")
    m = cm.metrics()
    write_json(ctx.out / "synthetic_val_metrics.json", m)
    ctx.summary["synthetic_val"] = _brief(m)
    ctx.summary["bar"] = {f"{k}_iou>={v}": bool((m["iou"].get(k) or 0.0) >= v)
                          for k, v in BAR.items()}


def step_real(ctx: DemoContext) -> None:
    """With ``--real``: score the model on real images (road surface for CamVid)."""
    o = ctx.options
    if not o.real:
        ctx.summary["real"] = None
        return
    from .data.real import open_dataset
    from .predict import evaluate_dataset

    # Same image width as the training scenes, the real set's own aspect ratio.
    probe = open_dataset(o.real, limit=1)
    h, w = probe[0][0].shape[-2:]
    size = (max(32, round(h * o.size[1] / w)), o.size[1])
    data = open_dataset(o.real, size=size, limit=o.real_limit)
    ctx.data["real"] = data
    cm = evaluate_dataset(ctx.model, data, device=ctx.device, batch_size=8,
                          quiet=o.quiet or not sys.stderr.isatty(), desc="evaluate real")
    m = cm.metrics()
    write_json(ctx.out / "real_metrics.json", m)
    ctx.summary["real"] = {"data": str(o.real), "images": len(data), "size": list(size),
                           "scored_on": "road surface" if not getattr(
                               data, "has_markings", True) else "classes", **_brief(m)}


def step_predictions(ctx: DemoContext) -> None:
    """Colour-coded predictions and overlays of a few validation (and real) images."""
    from .predict import colourize, overlay, predict_labels, save_png

    folder = ctx.out / "predictions"
    n = ctx.options.n_predictions
    written = []
    for name in ("val", "real"):
        data = ctx.data.get(name)
        if data is None:
            continue
        for i in range(min(n, len(data))):
            image, label = data[i]
            pred = predict_labels(ctx.model, image[None], device=ctx.device)[0].cpu().numpy()
            stem = f"{'synthetic' if name == 'val' else 'real'}_{i:02d}"
            row = np.concatenate([overlay(image, pred), colourize(pred),
                                  colourize(np.asarray(label))], axis=1)
            written.append(str(save_png(row, folder / f"{stem}.png")))
    ctx.summary["predictions"] = {"folder": str(folder), "files": len(written),
                                  "layout": "overlay | prediction | ground truth"}


def step_study(ctx: DemoContext) -> None:
    """A quick chapter-9 study of the trained model with its HTML report (segscope.study)."""
    from .study import demo_step

    demo_step(ctx)


Step = Callable[[DemoContext], None]
#: The demo, in order. Later steps may rely on what earlier ones put in the context.
STEPS: list[tuple[str, Step]] = [
    ("data", step_data),
    ("train", step_train),
    ("evaluate", step_evaluate),
    ("real", step_real),
    ("predictions", step_predictions),
    ("study", step_study),
]


def _brief(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("global_accuracy", "mean_class_accuracy", "miou", "iou")}


def format_summary(summary: dict[str, Any]) -> str:
    """The printed table of a demo summary."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = []
    rows = [("synthetic val", summary.get("synthetic_val"))]
    if summary.get("real"):
        rows.append((f"real ({summary['real']['scored_on']})", summary["real"]))
    names: list[str] = []
    for _, m in rows:
        if m:
            names += [n for n in m["iou"] if n not in names]
    head = f"{'':<28}{'global acc':>11}{'mIoU':>7}" + "".join(f"{n + ' IoU':>17}"
                                                               for n in names)
    lines.append(head)
    for title, m in rows:
        if not m:
            continue
        cells = "".join(f"{pct(m['iou'].get(n)):>17}" for n in names)
        lines.append(f"{title:<28}{pct(m['global_accuracy']):>11}{pct(m['miou']):>7}{cells}")
    bar = summary.get("bar")
    if bar:
        lines.append("bar: " + ", ".join(f"{k} {'PASS' if v else 'MISS'}" for k, v in bar.items()))
    lines.append(f"total {summary.get('total_seconds', 0):.0f} s; "
                 + ", ".join(f"{k} {v:.0f} s" for k, v in summary.get("timings", {}).items()))
    return "\n".join(lines)


def choose_threads(options: DemoOptions, candidates: Sequence[int] | None = None) -> int:
    """The faster of 1 and all CPU threads for this demo's training step, by a short probe.

    On a busy machine several threads of one process wait for each other at every
    parallel region and a step can take ten times longer than on one thread; on an idle
    machine all threads win. Timing two steps of each settles it (about a second).
    """
    from .models import SegNet

    most = torch.get_num_threads()
    candidates = list(candidates or sorted({1, most}))
    if len(candidates) == 1:
        return candidates[0]
    model = SegNet(width=options.width)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.rand(options.batch_size, 3, *options.size)
    y = torch.randint(0, 3, (options.batch_size, *options.size))
    best, best_t = most, float("inf")
    try:
        for n in candidates:
            torch.set_num_threads(n)
            times = []
            for _ in range(3):  # the first one warms up
                t = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t)
            if min(times[1:]) < best_t:
                best, best_t = n, min(times[1:])
    finally:
        torch.set_num_threads(most)
    return best


def run_demo(options: DemoOptions, steps: Sequence[tuple[str, Step]] | None = None,
             ) -> dict[str, Any]:
    """Run the demo steps into ``options.out``; writes and returns ``summary.json``."""
    from .cli._options import resolve_device

    t0 = time.perf_counter()
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise SegscopeError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(options=options, out=out, device=resolve_device(options.device))
    threads_before = torch.get_num_threads()
    if ctx.device.type == "cpu":
        threads = options.threads or choose_threads(options)
        torch.set_num_threads(threads)
    try:
        return _run_steps(ctx, STEPS if steps is None else steps, t0)
    finally:
        torch.set_num_threads(threads_before)


def _run_steps(ctx: DemoContext, steps: Sequence[tuple[str, Step]], t0: float) -> dict:
    options, out = ctx.options, ctx.out
    torch.manual_seed(options.seed)
    ctx.summary.update({
        "segscope_demo": 1,
        "quick": options.quick,
        "options": {k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in dataclasses.asdict(options).items()},
        "device": str(ctx.device),
        "threads": torch.get_num_threads(),
        "timings": {},
    })
    for name, step in steps:
        t = time.perf_counter()
        step(ctx)
        ctx.summary["timings"][name] = round(time.perf_counter() - t, 2)
        ctx.summary["total_seconds"] = round(time.perf_counter() - t0, 2)
        write_json(out / "summary.json", ctx.summary)  # a partial summary survives a crash
    return ctx.summary
