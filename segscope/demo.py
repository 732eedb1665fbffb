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
from .recipe import Recipe

#: The bar a default demo run has to clear on synthetic validation images.
BAR = {"road": 0.90, "markings": 0.60}


@dataclasses.dataclass(kw_only=True)
class DemoOptions(Recipe):
    """Settings of a demo run; :meth:`quick` gives the < 30 s smoke-test version."""

    out: str = "segscope-demo"
    real: str | None = None
    split: str | None = None  # of --real; None: val, else the only split there is
    device: str = "auto"
    seed: int = 0
    # the training: Recipe's (urban transfers best to CamVid val as the demo scores it:
    # road surface 0.84 after 1200 iterations, randomized 0.78, narrow 0.47)
    n_train: int = 800
    n_val: int = 100
    n_monitor: int = 24
    val_every: int = 100
    real_limit: int | None = None
    n_predictions: int = 4
    threads: int | None = None
    quick: bool = False
    quiet: bool = False
    overwrite: bool = False  # replace an earlier demo run in ``out``
    resume: bool = False  # continue an earlier demo run in ``out`` (same settings)

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
    from .data.synth_folder import write_dataset
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
    write_dataset(SyntheticRoads(8, size=o.size, seed=o.seed + 1, preset=o.preset), sample)
    ctx.summary["data"] = {
        "preset": o.preset, "size": list(o.size), "train_images": o.n_train,
        "train_seed": o.seed, "val_images": o.n_val, "val_seed": o.seed + 1,
        "sample": str(sample),
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
        class_weights=o.class_weights, loss=o.loss, val_every=o.val_every, seed=o.seed,
        device=o.device,
        quiet=o.quiet, log_every=10, resume=o.resume and _has_checkpoint(ctx.out / "train"),
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
    from .analyses.context import open_real
    from .predict import evaluate_dataset

    size = ctx.data["real_size"]
    data, split, _ = open_real(o.real, ctx.data["real_split"], size, o.real_limit)
    ctx.data["real"] = data
    cm = evaluate_dataset(ctx.model, data, device=ctx.device, batch_size=8,
                          quiet=o.quiet or not sys.stderr.isatty(), desc="evaluate real")
    m = cm.metrics()
    write_json(ctx.out / "real_metrics.json", m)
    ctx.summary["real"] = {"data": str(o.real), "split": split, "images": len(data),
                           "size": list(size),
                           "scored_on": "road surface" if not getattr(
                               data, "has_markings", True) else "classes", **_brief(m)}


def step_predictions(ctx: DemoContext) -> None:
    """Colour-coded predictions and overlays of a few validation (and real) images."""
    from .data.io import write_png
    from .predict import colourize, overlay, predict_labels

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
            written.append(str(write_png(folder / f"{stem}.png", row)))
    ctx.summary["predictions"] = {"folder": str(folder), "files": len(written),
                                  "layout": "overlay | prediction | ground truth"}


def step_study(ctx: DemoContext) -> None:
    """A quick chapter-9 study of the trained model with its HTML report (segscope.study).

    Runs on a few of the demo's synthetic validation scenes (and on ``--real`` when
    given, at the demo's real-image size) into ``<out>/study`` and records the report's
    path in ``ctx.summary["study"]``. A model that predicts no road yet (a very short
    training) is studied on the first class it does predict correctly; one that predicts
    nothing correctly is recorded as skipped, not an error: the demo's other results stand.
    """
    from .analyses import REGISTRY
    from .study import NoTruePositives, StudySettings, run_study

    o = ctx.options
    spec = f"synthetic:{min(o.n_val, 4)}:{o.preset}:{o.seed + 1}"
    real_size = (ctx.summary.get("real") or {}).get("size") if o.real else None
    names = list(ctx.model.class_names)
    order = [n for n in ("road", "markings") if n in names] + \
        [n for n in names if n not in ("road", "markings")]
    last: SegscopeError | None = None
    for cls in order:
        settings = StudySettings(
            cls=cls, quick=True, size=tuple(o.size), channels=8 if o.quick else 16,
            real_size=tuple(real_size) if real_size else None, scan=4 if o.quick else 8,
            candidates=4, pixels=4 if o.quick else 8, split=ctx.data.get("real_split"),
            notes=[] if cls == order[0] else
            [f"The model predicts no true positives of {order[0]!r} yet; the study explains "
             f"{cls!r} instead."])
        try:
            # The demo's report shows every analysis of a study.
            summary = run_study(ctx.model_path, ctx.out / "study", synthetic=spec, real=o.real,
                                settings=settings, device=ctx.device, quiet=o.quiet,
                                model=ctx.model, analyses=REGISTRY)
        except NoTruePositives as exc:
            last = exc
            continue
        ctx.summary["study"] = {
            "folder": str(ctx.out / "study"), "report": summary["report"], "class": cls,
            "pixels_holding_99": summary["switch_off"]["pixel_shares"]["0.99"],
            "share_reaching_pixels": summary["layerwise"]["share_reaching_pixels"],
        }
        ctx.log(f"study: {summary['report']}")
        return
    ctx.summary["study"] = {"skipped": str(last)}
    ctx.log(f"study skipped: {last}")


def step_diagnose(ctx: DemoContext) -> None:
    """With ``--real``: a quick ``segscope diagnose`` of the model into ``<out>/diagnose``
    (see :func:`segscope.diagnose_report.demo_step`)."""
    from .diagnose_report import demo_step

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
    ("diagnose", step_diagnose),
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


#: Options that do not change a demo's results: a resumed run may differ in them.
RUNTIME_OPTIONS = ("out", "device", "threads", "quiet", "overwrite", "resume")


def run_demo(options: DemoOptions, steps: Sequence[tuple[str, Step]] | None = None,
             ) -> dict[str, Any]:
    """Run the demo steps into ``options.out``; writes and returns ``summary.json``.

    Every input is checked before the long work (device, ``--real`` and its split); the
    output folder follows :func:`segscope.outdir.claim_output`: a new or empty folder, or
    an earlier demo run with ``options.overwrite`` (replaced) or ``options.resume``
    (continued with the same settings; an interrupted training resumes from its
    checkpoint).
    """
    from .device import resolve_device
    from .outdir import changed_settings, claim_output, read_marker

    t0 = time.perf_counter()
    out = Path(options.out)
    device = resolve_device(options.device)
    settings = {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(options).items() if k not in RUNTIME_OPTIONS}
    real = _check_real(options)
    if options.resume:
        mark = read_marker(out) or {}
        earlier = mark.get("settings")  # another command's folder: claim_output says so
        if mark.get("command") == "demo" and isinstance(earlier, dict) and earlier != settings:
            changed = changed_settings(earlier, settings)
            raise SegscopeError(f"--resume: {out} holds a demo run with other settings "
                                f"({', '.join(changed)}); use --overwrite to replace it")
    claim_output(out, "demo", resume=options.resume, overwrite=options.overwrite,
                 settings=settings)
    ctx = DemoContext(options=options, out=out, device=device)
    ctx.data.update(real)
    threads_before = torch.get_num_threads()
    if ctx.device.type == "cpu":
        threads = options.threads or choose_threads(options)
        torch.set_num_threads(threads)
    try:
        return _run_steps(ctx, STEPS if steps is None else steps, t0)
    finally:
        torch.set_num_threads(threads_before)


def _check_real(options: DemoOptions) -> dict[str, Any]:
    """Open ``--real`` (and its split) before training: the split and the image size the
    demo scores it at (the training scenes' width, the real set's own aspect ratio)."""
    if not options.real:
        return {}
    from .analyses.context import open_real

    probe, split, note = open_real(options.real, options.split, None, 1)
    if note and not options.quiet:
        print(f"note: {note}", file=sys.stderr, flush=True)
    h, w = probe[0][0].shape[-2:]
    size = (max(32, round(h * options.size[1] / w)), options.size[1])
    return {"real_split": split, "real_size": size}


def _has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a training run to continue (a checkpoint, or the mark of
    a run stopped before its first one)."""
    from .outdir import read_marker
    from .training import CHECKPOINT

    return (folder / CHECKPOINT).is_file() or (read_marker(folder) or {}).get("command") \
        == "train"


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
