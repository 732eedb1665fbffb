"""Which randomisation factors make a synthetic-trained model transfer? ``segscope ablate``.

An ablation trains one model per *setting* of the synthetic data, scores each on a real
set and compares them with the setting "all on":

- ``all_on`` — the preset as it is;
- ``no_<factor>`` — the preset with one factor switched off (``--factor-mode fixed``:
  fixed), for every factor named (default: each factor the preset randomises);
- user settings — ``NAME=FACTOR=MODE[,FACTOR=MODE...]`` or ``NAME=FOLDER`` (a folder of
  the user's own synthetic data: a ``segscope synth`` folder or any dataset folder).

Every model is an ordinary :func:`segscope.training.train` run in its own sub-folder
``runs/<setting>/``, checkpointed as it goes, so an interrupted ablation continues where
it stopped (``--resume``): finished settings are kept, the one that was running resumes
from its last checkpoint. Under ``torchrun`` each process takes its share of the
settings (one model per GPU, no gradient exchange) and rank 0 writes the results.

Outputs: ``ablation.json`` and ``ablation.csv`` (real road-surface IoU, mIoU and the
difference to ``all_on`` per setting), ``ablation.png`` (bar chart), ``report.html``
(self-contained) and, per setting, ``runs/<setting>/real_metrics.json``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._io import write_json, write_text
from .errors import SegscopeError
from .recipe import Recipe

#: Name of the reference setting.
ALL_ON = "all_on"


@dataclasses.dataclass
class Setting:
    """One row of an ablation: a name and its training data."""

    name: str
    factors: dict[str, str] = dataclasses.field(default_factory=dict)
    folder: str | None = None

    def describe(self) -> str:
        if self.folder is not None:
            return f"folder {self.folder}"
        if not self.factors:
            return "the preset as it is"
        return ", ".join(f"{k}={v}" for k, v in self.factors.items())


@dataclasses.dataclass(kw_only=True)
class AblationConfig(Recipe):
    """Everything an ablation depends on (saved in ``ablation.json``)."""

    real: str
    out: str = "segscope-ablate"
    factors: Sequence[str] | None = None  # factors to switch off one at a time
    factor_mode: str = "off"
    settings: Sequence[str] = ()  # user settings NAME=FACTOR=MODE,... or NAME=FOLDER
    base_factors: dict[str, str] = dataclasses.field(default_factory=dict)
    include_all: bool = True
    n: int = 4000
    seed: int = 0
    real_split: str | None = "val"
    real_size: tuple[int, int] | None = None
    real_limit: int | None = None
    iters: int = 600  # the rest of the training: Recipe's
    checkpoint_every: int = 100
    workers: int = 0
    device: str = "auto"
    quiet: bool = False
    resume: bool = False
    overwrite: bool = False
    # for tests: stop (as after Ctrl-C) before the N-th setting / after N iterations
    stop_after_settings: int | None = None
    stop_after_iters: int | None = None
    diagnose: bool = True  # segscope diagnose fingerprint of every model
    diagnose_synthetic: int = 24  # synthetic reference scenes for it


# --------------------------------------------------------------------------- settings
def parse_setting(text: str) -> Setting:
    """``"name=shadows=off,noise=off"`` or ``"name=path/to/folder"`` -> :class:`Setting`."""
    from .data.synthetic_factors import FACTORS, check_factors

    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise SegscopeError(f"--setting expects NAME=FACTOR=MODE[,FACTOR=MODE] or NAME=FOLDER, "
                            f"got {text!r}")
    _check_name(name)
    first = rest.split(",")[0].partition("=")[0].strip()
    if first in FACTORS:
        factors = {}
        for part in rest.split(","):
            key, sep2, mode = part.partition("=")
            if not sep2:
                raise SegscopeError(f"--setting {name}: expected FACTOR=MODE, got {part!r}")
            factors[key.strip()] = mode.strip()
        return Setting(name, check_factors(factors))
    folder = Path(rest).expanduser()
    if not folder.is_dir():
        raise SegscopeError(f"--setting {name}: {rest!r} is neither FACTOR=MODE nor a folder "
                            "(unknown factor, or the folder does not exist)")
    return Setting(name, folder=str(folder))


def _check_name(name: str) -> None:
    if not name.replace("_", "").replace("-", "").isalnum():
        raise SegscopeError(f"setting name {name!r} may hold only letters, digits, - and _")


def ablation_settings(config: AblationConfig) -> list[Setting]:
    """The settings of ``config`` in order: all_on, one per factor, then the user's."""
    from .data.synthetic_factors import FACTORS, MODES, PRESETS_TABLE, check_factors

    if config.preset not in PRESETS_TABLE:
        raise SegscopeError(f"unknown preset {config.preset!r} "
                            f"(choose from: {', '.join(PRESETS_TABLE)})")
    if config.factor_mode not in ("off", "fixed"):
        raise SegscopeError(f"--factor-mode must be off or fixed, got {config.factor_mode!r}")
    check_factors(config.base_factors)
    base = {**PRESETS_TABLE[config.preset].modes, **config.base_factors}
    names = list(config.factors) if config.factors is not None else [
        name for name, mode in base.items() if mode == "on" and name != "layout"]
    for name in names:
        check_factors({name: config.factor_mode})
        assert config.factor_mode in MODES
        before = base.get(name)
        if before == config.factor_mode or (
                {before, config.factor_mode} == {"off", "fixed"} and not FACTORS[name].off):
            raise SegscopeError(
                f"factor {name!r} is already {before} in preset {config.preset!r}"
                + (" with --base" if name in config.base_factors else "")
                + f": a model with it {config.factor_mode} would be the all-on model "
                "(choose factors that are on, or another --factor-mode)")
    settings = [Setting(ALL_ON)] if config.include_all else []
    settings += [Setting(f"no_{name}", {name: config.factor_mode}) for name in names
                 if name in FACTORS]
    settings += [parse_setting(s) for s in config.settings]
    seen: set[str] = set()
    for s in settings:
        if s.name in seen:
            raise SegscopeError(f"two settings are called {s.name!r}")
        seen.add(s.name)
    if not settings:
        raise SegscopeError("nothing to ablate: no settings")
    return settings


def _training_data(config: AblationConfig, setting: Setting):
    from .data.synthetic import SyntheticRoads

    if setting.folder is not None:
        return setting.folder
    return SyntheticRoads(config.n, size=config.size, seed=config.seed, preset=config.preset,
                          factors={**config.base_factors, **setting.factors})


# --------------------------------------------------------------------------- running
def _open_real(config: AblationConfig):
    from .data.real import open_dataset

    real = Path(str(config.real)).expanduser()
    if not real.exists():
        raise SegscopeError(f"real dataset not found: {config.real} (the ablation scores every "
                            "model on it; give --real)")
    data = open_dataset(str(real), split=config.real_split, size=config.real_size,
                        limit=config.real_limit)
    if len(data) == 0:
        raise SegscopeError(f"no images in the real dataset {config.real}")
    return data


@contextlib.contextmanager
def _single_process():
    """Let a training or a diagnosis inside a torchrun rank run on its own (no process
    group): each process has settings of its own."""
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_setting(config: AblationConfig, setting: Setting, real, device: str,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Train (or resume, or keep) the model of one setting and score it on ``real``."""
    import torch

    from .checkpoint import load_model
    from .outdir import read_marker
    from .predict import evaluate_dataset
    from .training import CHECKPOINT, train

    folder = Path(config.out) / "runs" / setting.name
    result_path = folder / "real_metrics.json"
    if result_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            done = json.loads(result_path.read_text(encoding="utf-8"))
            if isinstance(done, dict) and "road_surface_iou" in done:
                log(f"{setting.name}: kept (already scored)")
                return done
    model_path = folder / "model.safetensors"
    t0 = time.perf_counter()
    if not model_path.is_file():
        # a training killed before its first checkpoint has only its folder's mark
        resume = (folder / CHECKPOINT).is_file() or \
            (read_marker(folder) or {}).get("command") == "train"
        log(f"{setting.name}: {'resuming' if resume else 'training'} ({setting.describe()})")
        tc = _train_config(config, setting, device, resume)
        with _single_process():
            done = train(tc)
        if done.interrupted:
            raise KeyboardInterrupt
    model, _ = load_model(model_path, map_location=device)
    cm = evaluate_dataset(model, real, device=torch.device(device),
                          batch_size=config.batch_size, quiet=True)
    m = cm.metrics()
    iou = m["iou"]
    surface_key = "road surface" if "road surface" in iou else "road"
    result = {
        "setting": setting.name,
        "data": setting.describe(),
        "factors": dict(setting.factors),
        "folder": setting.folder,
        "model": str(model_path.relative_to(config.out)),
        "train_seconds": _train_seconds(folder),
        "score_seconds": round(time.perf_counter() - t0, 2),
        "road_surface_iou": iou.get(surface_key),
        "miou": m["miou"],
        "global_accuracy": m["global_accuracy"],
        "iou": iou,
        "fingerprint": _fingerprint(model.eval(), folder, config, setting),
    }
    write_json(result_path, result)
    log(f"{setting.name}: real road-surface IoU {_fmt(result['road_surface_iou'])}")
    return result


def _train_config(config: AblationConfig, setting: Setting, device: str, resume: bool):
    """The ordinary training run of one setting."""
    from .training import TrainConfig

    return TrainConfig(
        data=_training_data(config, setting), out=str(Path(config.out) / "runs" / setting.name),
        size=config.size, width=config.width, iters=config.iters,
        batch_size=config.batch_size, optimizer=config.optimizer, lr=config.lr,
        weight_decay=config.weight_decay, schedule=config.schedule, warmup=config.warmup,
        class_weights=config.class_weights, loss=config.loss,
        checkpoint_every=config.checkpoint_every,
        seed=config.seed, device=device, workers=config.workers, quiet=config.quiet,
        resume=resume, stop_after=config.stop_after_iters)


def _train_seconds(folder: Path) -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError, KeyError, TypeError):
        return float(json.loads((folder / "metrics.json").read_text(encoding="utf-8"))[-1][
            "seconds"])
    return None


def _fingerprint(model, folder: Path, config: AblationConfig, setting: Setting
                 ) -> dict[str, Any]:
    """The ``diagnose`` fingerprint of one model: its failure score on the real images
    against synthetic scenes of its own training data (``runs/<setting>/diagnose/``)."""
    if not config.diagnose:
        return {"available": False, "note": "switched off (--no-diagnose)"}
    from .data.synthetic import SyntheticRoads
    from .diagnose import Source, _Labelled, diagnose, open_synthetic
    from .diagnose_report import write_diagnosis

    size = config.real_size or config.size
    if setting.folder is not None and (Path(setting.folder) / "manifest.json").is_file():
        syn = open_synthetic(setting.folder, size=size, limit=config.diagnose_synthetic)
    else:
        data = SyntheticRoads(config.diagnose_synthetic, size=size, seed=config.seed + 1,
                              preset=config.preset,
                              factors={**config.base_factors, **setting.factors})
        n = len(data)
        syn = Source("synthetic", f"synthetic:{n}:{config.preset}:{config.seed + 1}",
                     _Labelled(data, True), [f"{i:06d}" for i in range(n)],
                     [f"synthetic:{i}" for i in range(n)], True)
    try:
        with _single_process():  # each process diagnoses its own settings' models
            d = diagnose(model, syn, str(config.real), split=config.real_split, size=size,
                         limit=config.real_limit, n_boot=200, top=4, quiet=True,
                         cache_dir=folder / "diagnose" / "fingerprints")
    except SegscopeError as exc:  # e.g. a model that predicts no road at all
        return {"available": False, "note": f"diagnose skipped: {exc}"}
    write_diagnosis(d, folder / "diagnose", model, syn, None)
    fs = next((r for r in d.correlations if r["score"] == "failure_score"), None)
    return {"available": True, "report": str((folder / "diagnose" / "report.html")
                                             .relative_to(config.out)),
            "failure_score_spearman": fs["spearman"] if fs else None,
            "winner": d.winner["score"] if d.winner else None,
            "mean_failure_score": float(np.nanmean([r["failure_score"] for r in d.rows
                                                    if r["dataset"] == "real"]))}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def run_ablation(config: AblationConfig, log: Callable[[str], None] | None = None
                 ) -> dict[str, Any]:
    """Run (or continue) the ablation of ``config``; return its summary.

    Raises
    ------
    SegscopeError
        Bad settings, a missing real set or an output folder that may not be used; all
        checked before any training starts.
    KeyboardInterrupt
        After Ctrl-C, once the running training has saved its checkpoint.
    """
    from .device import resolve_device
    from .outdir import claim_output

    log = log or (lambda s: None)
    settings = ablation_settings(config)
    real = _open_real(config)
    if config.real_split is None:  # the split the reader chose (val, else the only one)
        config = dataclasses.replace(config, real_split=getattr(real, "split", None))
    if config.real_size is None:  # real images at the training width, their own aspect
        from .checkpoint import dataset_at_training_scale

        config = dataclasses.replace(config, real_size=dataset_at_training_scale(
            real, tuple(config.size)))
        real = _open_real(config)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    record = _config_json(config, settings)
    from .training import check_config, check_data

    for setting in settings:  # bad settings and data fail here, before the folder is made
        train_config = _train_config(config, setting, config.device, False)
        check_config(train_config)
        check_data(train_config)
    if rank == 0:
        claim_output(config.out, "ablate", resume=config.resume, overwrite=config.overwrite,
                     settings=record)
        if config.resume:
            _check_same(config, record)
        write_json(Path(config.out) / "ablation_config.json", record)
    group = _start_group(world)
    try:
        _barrier(group)
        device = str(resolve_device(config.device))
        if device.startswith("cuda") and world > 1:
            device = f"cuda:{local_rank}"
        mine = settings[rank::world]
        for k, setting in enumerate(mine):
            if config.stop_after_settings is not None and k >= config.stop_after_settings:
                raise KeyboardInterrupt
            run_setting(config, setting, real, device, log)
        _barrier(group)
    finally:
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank != 0:
        return {}
    return write_results(config, settings)


def _config_json(config: AblationConfig, settings: list[Setting]) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    for k in ("out", "resume", "overwrite", "quiet", "device", "workers",
              "stop_after_settings", "stop_after_iters"):
        d.pop(k, None)
    d["size"] = list(config.size)
    d["real_size"] = list(config.real_size) if config.real_size else None
    d["factors"] = list(config.factors) if config.factors is not None else None
    d["settings"] = [dataclasses.asdict(s) for s in settings]
    return json.loads(json.dumps(d))


def _check_same(config: AblationConfig, record: dict[str, Any]) -> None:
    from .outdir import changed_settings

    path = Path(config.out) / "ablation_config.json"
    with contextlib.suppress(OSError, ValueError):
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != record:
            changed = changed_settings(before, record)
            raise SegscopeError(f"--resume: {config.out} holds an ablation with other "
                                f"settings ({', '.join(changed)}); use the same options, "
                                "or --overwrite to start over")


def _start_group(world: int):
    if world <= 1:
        return None
    import torch.distributed as dist

    if dist.is_initialized():
        return None
    dist.init_process_group(backend="gloo")
    return True


def _barrier(group) -> None:
    if group:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- results
def write_results(config: AblationConfig, settings: list[Setting]) -> dict[str, Any]:
    """Collect every setting's score into the table, the chart and the report."""
    out = Path(config.out)
    rows = []
    for s in settings:
        path = out / "runs" / s.name / "real_metrics.json"
        try:
            rows.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            raise SegscopeError(f"setting {s.name} has no result ({path}); run the ablation "
                                "again with --resume") from None
    ref = next((r["road_surface_iou"] for r in rows if r["setting"] == ALL_ON), None)
    for r in rows:
        v = r["road_surface_iou"]
        r["delta_to_all_on"] = None if ref is None or v is None else v - ref
    summary = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "real": str(config.real),
        "real_split": config.real_split,
        "preset": config.preset,
        "config": _config_json(config, settings),
        "rows": rows,
        "files": {"table": "ablation.csv", "chart": "ablation.png", "report": "report.html"},
    }
    write_json(out / "ablation.json", summary)
    write_table(rows, out / "ablation.csv")
    where = Path(str(config.real)).name + (f" {config.real_split}" if config.real_split else "")
    chart(rows, out / "ablation.png", title=f"{config.preset}: real road-surface IoU ({where})")
    write_text(out / "report.html", report_html(summary, out))
    return summary


def write_table(rows: list[dict], path: Path) -> None:
    """The ablation table as CSV."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["setting", "data", "road_surface_iou", "delta_to_all_on", "miou",
                "global_accuracy"])
    for r in rows:
        w.writerow([r["setting"], r["data"], _csv(r["road_surface_iou"]),
                    _csv(r["delta_to_all_on"]), _csv(r["miou"]), _csv(r["global_accuracy"])])
    write_text(path, buf.getvalue())


def _csv(v) -> str:
    return "" if v is None else f"{v:.4f}"


def chart(rows: list[dict], path: Path, title: str = "") -> Path:
    """Bar chart of real road-surface IoU per setting, labelled with the difference to
    ``all_on``."""
    from .viz.figures import new_figure, save_png

    names = [r["setting"] for r in rows]
    values = [r["road_surface_iou"] or 0.0 for r in rows]
    fig = new_figure(max(5.0, 0.7 * len(rows) + 2.0), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    colours = ["#2ca02c" if n == ALL_ON else "#1f77b4" for n in names]
    bars = ax.bar(range(len(rows)), values, color=colours)
    for bar, r in zip(bars, rows, strict=True):
        d = r.get("delta_to_all_on")
        text = f"{r['road_surface_iou']:.3f}" if r["setting"] == ALL_ON or d is None \
            else f"{d:+.3f}"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, text,
                ha="center", va="bottom", fontsize=8)
    ref = next((r["road_surface_iou"] for r in rows if r["setting"] == ALL_ON), None)
    if ref is not None:
        ax.axhline(ref, color="#2ca02c", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("road-surface IoU (real)")
    ax.set_ylim(0, min(1.0, max(values + [0.1]) * 1.15 + 0.05))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def report_html(summary: dict[str, Any], folder: Path) -> str:
    """The self-contained report page (chart inlined), from ``templates/ablation.html.j2``."""
    from markupsafe import Markup

    from .html import RenderedTable, embed_figure, render_page

    rows = summary["rows"]
    table = RenderedTable(
        ["setting", "training data", "real road-surface IoU", "Δ to all on", "mIoU",
         "diagnose: mean failure score", "failure score ~ IoU (Spearman)"],
        [[r["setting"], r["data"], _fmt(r["road_surface_iou"]),
          "" if r["delta_to_all_on"] is None else f"{r['delta_to_all_on']:+.3f}",
          _fmt(r["miou"]), _fmt(r.get("fingerprint", {}).get("mean_failure_score")),
          _fmt(r.get("fingerprint", {}).get("failure_score_spearman"))] for r in rows])
    ranked = sorted((r for r in rows if r["delta_to_all_on"] is not None
                     and r["setting"] != ALL_ON), key=lambda r: r["delta_to_all_on"])
    chart_figure = embed_figure(
        folder, "ablation.png", Markup(
            "Real road-surface IoU of one model per setting; the labels give the difference "
            "to <i>all on</i> (negative: switching the factor off hurt)."),
        folder_word="ablation")
    return render_page(
        "ablation.html.j2", preset=str(summary["preset"]), c=summary["config"],
        real=str(summary["real"]), real_split=summary["real_split"],
        created=summary["created"], chart=chart_figure, table=table,
        ranked=[(r["setting"], f"{r['delta_to_all_on']:+.3f}") for r in ranked],
        fingerprints=[r["fingerprint"]["report"] for r in rows
                      if r.get("fingerprint", {}).get("available")])


__all__ = ["ALL_ON", "AblationConfig", "Setting", "ablation_settings", "chart",
           "parse_setting", "run_ablation", "run_setting", "write_results"]
