"""Training SegNet: SPEC §2 defaults, exact resume, DDP through ``torchrun``.

:func:`train` is what ``segscope train`` and the demo call. A run writes into one folder:

- ``model.safetensors`` — the final model (:func:`segscope.save_model` format);
  ``best.safetensors`` — the best by validation mIoU, when there is validation;
- ``checkpoint.safetensors`` — the model and, in the same file, the rest of the training
  state (optimizer tensors and RNG states under ``extra.``; step, data position, history
  and config as JSON in the header); no pickle anywhere. One file, replaced by one atomic
  rename, so that a kill at any moment leaves either the previous checkpoint or the new
  one, never a mix;
- ``metrics.csv``, ``metrics.json``, ``curves.png``, ``config.json``.

Exact resume: the order of the training images is a pure function of (seed, epoch), the
learning rate a pure function of the step, and the checkpoint holds the optimizer state
and the position inside the epoch, so a resumed run ends with the same weights, bit for
bit, as one that was never interrupted (on the same device and thread count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ._io import atomic_path, write_json, write_text
from .checkpoint import (
    EXTRA_PREFIX,
    check_finite,
    json_object,
    load_model,
    load_weights,
    read_header,
    read_metadata,
    save_model,
    uninterrupted,
    unwrap,
    write_model_file,
)
from .data.classes import IGNORE, ROAD3
from .device import resolve_device
from .errors import SegscopeError, agree
from .losses import LOSSES, segmentation_loss
from .metrics import class_pixel_counts, median_frequency_weights
from .models import SegNet
from .predict import autocast, evaluate_dataset

CHECKPOINT = "checkpoint.safetensors"
#: The training state of segscope <= 0.1 lived in a second file beside the model; it is
#: still read on --resume.
STATE = "checkpoint.state.safetensors"
STATE_KEY = "segscope_train_state"

#: Settings that may differ when a run is resumed: they do not change the result.
RUNTIME_FIELDS = ("device", "workers", "quiet", "out", "resume", "overwrite", "stop_after")
#: The largest seed (torch's generators take a signed 64-bit integer).
MAX_SEED = 2**63 - 1
#: Settings a resumed run must share with the interrupted one: they change the result.
RESUME_FIXED = ("data", "val_data", "split", "val_split", "size", "limit", "val_limit",
                "width", "iters", "epochs", "batch_size", "optimizer", "lr", "momentum",
                "weight_decay", "schedule", "warmup", "class_weights", "loss",
                "weight_sample", "seed", "channels_last", "bf16", "pretrained")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (saved as ``config.json``).

    ``data`` / ``val_data`` are ``--data`` specs for :func:`segscope.data.open_dataset`
    (e.g. a folder or ``synthetic:2000``) or dataset objects; ``split`` / ``val_split``
    pick their splits (default: the training split, and the evaluation split).
    """

    data: Any = "synthetic:2000"
    val_data: Any = None
    split: str | None = None
    val_split: str | None = None
    out: str = "segscope-train"
    size: tuple[int, int] | None = None
    limit: int | None = None
    val_limit: int | None = None
    width: float = 1.0
    iters: int | None = None
    epochs: int | None = None
    batch_size: int = 4
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    warmup: int = 0
    class_weights: str = "median"
    loss: str = "ce"
    weight_sample: int = 64
    val_every: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    # NHWC wins on CPU (oneDNN) and GPU; see benchmarks/bench_train.py
    channels_last: bool = True
    bf16: bool = False
    pretrained: str | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    stop_after: int | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("data", "val_data"):
            if d[key] is not None and not isinstance(d[key], str | os.PathLike):
                d[key] = f"<{type(d[key]).__name__} of {len(d[key])} images>"
        for key in PATH_FIELDS:
            d[key] = absolute_if_path(d[key])
        if d["size"] is not None:
            d["size"] = list(d["size"])
        return d


#: Settings that may name a file or folder: recorded as absolute paths, so that a run
#: resumes from any working directory and a path given another way compares equal.
PATH_FIELDS = ("data", "val_data", "pretrained")


def absolute_if_path(value: Any) -> Any:
    """``value`` as an absolute path string when it names an existing file or folder
    (``"syn"`` -> ``"/home/me/syn"``); anything else (``synthetic:2000``, None) as it is."""
    if not isinstance(value, str | os.PathLike):
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    out: Path
    model_path: Path | None
    best_path: Path | None
    step: int
    total_steps: int
    history: list[dict]
    val_metrics: dict | None
    class_weights: list[float]
    seconds: float
    interrupted: bool = False


# -- distributed -----------------------------------------------------------------------
@dataclasses.dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_name: str) -> _Dist:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK and start a process group when > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return _Dist(device=device)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        here = True
    return _Dist(rank, world, local_rank, device, here)


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _any_rank(flag: bool, d: _Dist) -> bool:
    """True on every rank when ``flag`` is true on one (so that all ranks stop together)."""
    if d.world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0],
                     device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# -- data order --------------------------------------------------------------------------
class ResumableSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` that can start inside an epoch.

    The permutation of epoch ``e`` depends only on ``(seed, e)``; ``start`` skips the first
    samples of this rank's share, which is how a resumed run continues with exactly the
    images that the interrupted run would have seen next.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process handles it (saves a
    # checkpoint), workers must not die under it meanwhile.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- learning rate -----------------------------------------------------------------------
def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """The learning rate of step ``step`` (0-based): a pure function, so resume is exact."""
    base = config.lr
    if config.warmup and step < config.warmup:
        return base * (step + 1) / config.warmup
    if config.schedule == "constant":
        return base
    t = (step - config.warmup) / max(1, total - config.warmup)
    if config.schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if config.schedule == "poly":
        return base * (1 - min(1.0, t)) ** 0.9
    raise SegscopeError(f"unknown schedule {config.schedule!r} (constant, cosine, poly)")


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (SPEC §2 default) or Adam, with weight decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise SegscopeError(f"unknown optimizer {config.optimizer!r} (sgd or adam)")


# -- one step ----------------------------------------------------------------------------
class TrainStep:
    """One optimisation step: forward, loss (weighted cross-entropy, optionally with soft
    Dice: :func:`~segscope.losses.segmentation_loss`), backward, update.

    Parameters
    ----------
    model
        The (possibly DDP-wrapped) model, already on ``device``.
    optimizer
        Its optimizer.
    class_weights
        (K,) cross-entropy weights or ``None``.
    loss
        One of :data:`~segscope.losses.LOSSES`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 class_weights: torch.Tensor | None, device: torch.device,
                 channels_last: bool = False, bf16: bool = False,
                 ignore_index: int = IGNORE, loss: str = "ce") -> None:
        self.model = model
        self.optimizer = optimizer
        self.weight = None if class_weights is None else class_weights.to(device)
        self.device = device
        self.channels_last = channels_last
        self.bf16 = bf16
        self.ignore_index = ignore_index
        self.loss = loss
        self.non_blocking = device.type == "cuda"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run the step; returns the loss as a 0-dim tensor (no device sync)."""
        images = images.to(self.device, non_blocking=self.non_blocking)
        labels = labels.to(self.device, non_blocking=self.non_blocking)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.bf16):
            scores = self.model(images)
        loss = segmentation_loss(scores.float(), labels, self.weight, self.ignore_index,
                                 self.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


# -- class weights -----------------------------------------------------------------------
def estimate_class_weights(dataset, num_classes: int, sample: int = 64) -> torch.Tensor:
    """Median-frequency weights from ``sample`` images spread evenly over ``dataset``."""
    n = len(dataset)
    if n == 0:
        raise SegscopeError("the training set is empty")
    idx = np.unique(np.linspace(0, n - 1, num=min(n, max(1, sample))).round().astype(int))
    counts = torch.stack([class_pixel_counts(dataset[int(i)][1], num_classes) for i in idx])
    return median_frequency_weights(counts)


# -- checkpoint state (safetensors tensors + JSON, no pickle) -----------------------------
def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    info = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": _py_state_to_json(random.getstate())}
    return tensors, info


def _set_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos,
                         has_gauss, cached))
    version, state, gauss = info["python"]
    random.setstate((version, tuple(state), gauss))


def _py_state_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         info: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, scalars in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def data_fingerprint(dataset: Any) -> str | None:
    """What tells a resumed run that its training images are the interrupted run's: a hash
    of every image and label file's path (below their common folder) and size, for data
    read from files; None for data made on the fly (``synthetic:...``, recorded by its
    spec) or a dataset object that does not list its files."""
    import hashlib

    files = getattr(dataset, "files", None)
    if not isinstance(files, list) or not files:
        return None
    paths = [Path(p) for pair in files for p in (pair if isinstance(pair, tuple | list)
                                                 else (pair,))]
    root = Path(os.path.commonpath([str(p) for p in paths])) if len(paths) > 1 else \
        paths[0].parent
    h = hashlib.sha256()
    for p in paths:
        try:
            size = p.stat().st_size
        except OSError:
            size = -1
        h.update(f"{p.relative_to(root).as_posix()}\t{size}\n".encode())
    return h.hexdigest()[:32]


def save_training_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        progress: dict[str, Any], image_size: list[int] | None = None) -> None:
    """Write ``out/checkpoint.safetensors``: the model and the whole training state in
    one file, replaced in one atomic rename (a kill leaves the old or the new one).

    ``image_size`` (H, W of the training images, when known) is recorded as in the
    model files, so that a checkpoint given to a later command is also shown images at
    the scale it was trained on."""
    opt_tensors, opt_info = _optimizer_to_flat(optimizer)
    rng_tensors, rng_info = _rng_state()
    header = {**progress, "optimizer": opt_info, "rng": rng_info}
    meta = {"kind": "checkpoint", "step": progress["step"]}
    if image_size:
        meta["image_size"] = list(image_size)
    write_model_file(unwrap(model), out / CHECKPOINT, meta,
                     extra_tensors={**opt_tensors, **rng_tensors},
                     extra_metadata={STATE_KEY: json.dumps(header)})


#: Entries of the training-state header and the JSON types they must have.
_STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int, "epoch": int, "batch_in_epoch": int, "history": list, "config": dict,
    "class_weights": list, "optimizer": dict, "rng": dict, "loss_count": int,
    "loss_sum": (int, float), "seconds": (int, float),
}


def load_training_state(out: Path, tensors: bool = True
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The training state of the run in ``out``: ``(header, tensors)``, checked.

    With ``tensors=False`` only the header is read (the tensors come back empty).

    Raises
    ------
    SegscopeError
        No checkpoint, a checkpoint of the wrong shape, of another model, or with
        non-finite values.
    """
    from safetensors import safe_open

    out = Path(out)
    path = out / CHECKPOINT
    if not path.exists() and not path.is_symlink():
        raise SegscopeError(f"nothing to resume in {out}: no {CHECKPOINT} there")
    raw = read_header(path).get(STATE_KEY)
    if raw is None:
        if (out / STATE).is_file():
            return _load_state_pair(out)
        raise SegscopeError(f"{path} holds a model but no training state; it cannot be "
                            "resumed (train into a new --out, or --overwrite)")
    header = _parse_state(raw, path)
    _check_same_model(read_metadata(path), header, path)
    if not tensors:
        return header, {}
    try:
        with uninterrupted(), safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k[len(EXTRA_PREFIX):]: f.get_tensor(k)
                     for k in f.keys() if k.startswith(EXTRA_PREFIX)}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise SegscopeError(f"cannot read the training state in {path} ({exc})") from None
    check_finite(state, f"the training state in {path}")
    return header, state


def _load_state_pair(out: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The two-file checkpoint of earlier versions (model file + state file)."""
    from safetensors import safe_open

    state_path, model_path = out / STATE, out / CHECKPOINT
    try:
        with uninterrupted(), safe_open(str(state_path), framework="pt") as f:
            raw = (f.metadata() or {})[STATE_KEY]
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise SegscopeError(f"{state_path} is not a segscope training state ({exc})") from None
    header = _parse_state(raw, state_path)
    meta = read_metadata(model_path)
    _check_same_model(meta, header, model_path)
    if meta.get("step") != header.get("step"):
        raise SegscopeError(
            f"{model_path} and {state_path} are from different steps; the run was stopped "
            "while writing them — start again with --overwrite")
    check_finite(tensors, str(state_path))
    return header, tensors


def _parse_state(raw: str, path: Path) -> dict[str, Any]:
    header = json_object(raw, path, "training state", "the training state")
    for key, kind in _STATE_FIELDS.items():
        value = header.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SegscopeError(f"{path}: the training state has {key} = {value!r:.60}, "
                                "which is not what segscope writes")
    if not all(isinstance(r, dict) and isinstance(r.get("step"), int)
               for r in header["history"]):
        raise SegscopeError(f"{path}: the training state has a history that is not what "
                            "segscope writes")
    if any(isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w)
           for w in header["class_weights"]):
        raise SegscopeError(f"{path}: the training state has class weights that are not "
                            "finite numbers")
    return header


def _check_same_model(meta: dict[str, Any], header: dict[str, Any], path: Path) -> None:
    """The model in a checkpoint must be the network its run trains."""
    model = meta["model"]
    config = header["config"]
    width = config.get("width")
    if isinstance(width, bool) or not isinstance(width, int | float):
        raise SegscopeError(f"{path}: the training state has width = {width!r:.40}, which "
                            "is not what segscope writes")
    if float(model["width"]) != float(width):
        raise SegscopeError(
            f"{path} holds a SegNet of width {model['width']}, but its run trains width "
            f"{config['width']}: the widths differ, it is not this run's checkpoint")
    if int(model["num_classes"]) != len(ROAD3):
        raise SegscopeError(f"{path} holds a SegNet of {model['num_classes']} classes; "
                            f"segscope trains {len(ROAD3)} ({', '.join(ROAD3)})")


def adopt_unmarked_run(out: Path) -> bool:
    """Mark ``out`` as a train run when it holds a training checkpoint but no mark (runs
    of versions before the output-folder rule), so that ``--resume`` continues it."""
    from .outdir import mark_output, read_marker

    out = Path(out)
    if read_marker(out) is not None or not (out / CHECKPOINT).is_file():
        return False
    try:
        has_state = STATE_KEY in read_header(out / CHECKPOINT) or (out / STATE).is_file()
    except SegscopeError:
        return False
    if has_state:
        mark_output(out, "train")
    return has_state


def resume_point(out: Path, tensors: bool = True
                 ) -> tuple[dict | None, dict[str, torch.Tensor], dict[str, Any]]:
    """What ``--resume`` continues from: ``(header or None, tensors, saved config)``.

    A run stopped before its first checkpoint has only the settings in its folder mark
    (:mod:`segscope.outdir`); it resumes by starting at step 0 with them. With
    ``tensors=False`` only the headers are read.
    """
    from .outdir import read_marker

    out = Path(out)
    if (out / CHECKPOINT).exists() or (out / CHECKPOINT).is_symlink():
        header, state = load_training_state(out, tensors)
        return header, state, header["config"]
    mark = read_marker(out) or {}
    settings = mark.get("settings")
    if mark.get("command") == "train" and isinstance(settings, dict) and settings:
        return None, {}, settings
    raise SegscopeError(f"nothing to resume in {out}: no {CHECKPOINT} there")


# -- logging -----------------------------------------------------------------------------
def _flat_row(record: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: nested records become ``<key>_<name>`` columns (``val_iou_road_surface``:
    no spaces in a column name)."""
    row = {k: v for k, v in record.items() if not isinstance(v, dict)}
    for k, v in record.items():
        if isinstance(v, dict):
            for name, value in v.items():
                row[f"{k}_{name}".replace(" ", "_")] = value
    return row


def write_metrics(out: Path, history: list[dict], plot: bool = True) -> None:
    """``metrics.json`` (the records), ``metrics.csv`` (one flat row each), ``curves.png``
    (when ``plot``; drawing takes a noticeable fraction of a second)."""
    write_json(out / "metrics.json", history)
    rows = [_flat_row(r) for r in history]
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    lines = [",".join(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)))
        lines.append(",".join(cells))
    write_text(out / "metrics.csv", "\n".join(lines) + "\n")
    if plot:
        plot_curves(history, out / "curves.png")


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and validation IoU against the step (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in history if r.get("loss") is not None]
    val = [r for r in history if r.get("val_iou")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="C0")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax = axes[1]
    if val:
        steps = [r["step"] for r in val]
        for i, name in enumerate(val[-1]["val_iou"]):
            ys = [r["val_iou"].get(name) for r in val]
            ax.plot(steps, [np.nan if y is None else y for y in ys], marker="o", ms=3,
                    label=name, color=f"C{i + 1}")
        ax.plot(steps, [np.nan if r.get("val_miou") is None else r["val_miou"] for r in val],
                "k--", label="mIoU")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("IoU")
    ax.set_title("validation IoU")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# -- datasets ----------------------------------------------------------------------------
def _open(spec: Any, split: str | None, purpose: str, size, limit) -> Any:
    if spec is None:
        return None
    if not isinstance(spec, str | os.PathLike):
        return spec
    from .data.real import open_dataset

    return open_dataset(str(spec), split=split, size=size, limit=limit, purpose=purpose)


def check_data(c: TrainConfig) -> None:
    """Open the dataset folders of ``c`` (their file lists), so that a bad one fails before
    anything is written; ``synthetic:`` specs are checked when the run opens them."""
    for spec, split, purpose, limit in ((c.data, c.split, "train", c.limit),
                                        (c.val_data, c.val_split, "eval", c.val_limit)):
        if isinstance(spec, str | os.PathLike) and not str(spec).startswith("synthetic"):
            _open(spec, split, purpose, c.size, limit)


# -- the run folder ----------------------------------------------------------------------
def _claim_run_folder(out: Path, config: TrainConfig) -> None:
    """Take ``out`` for this run (:func:`segscope.outdir.claim_output`), and remove the
    temporary files a killed earlier run may have left."""
    from .outdir import claim_output

    if not config.resume:
        claim_output(out, "train", overwrite=config.overwrite, settings=config.to_json(),
                     inputs=[config.data, config.val_data, config.pretrained])
    for tmp in out.glob(".*.tmp"):  # atomic_path's temporary names, in our own folder
        with contextlib.suppress(OSError):
            tmp.unlink()


def _write_failure(out: Path, exc: OSError) -> str:
    """One line for a failed write during training, naming the checkpoint that is kept."""
    what = f"cannot write {exc.filename}" if exc.filename else f"cannot write in {out}"
    try:
        step = read_metadata(out / CHECKPOINT).get("step")
    except SegscopeError:
        step = None
    kept = (f"; the checkpoint of step {step} is intact: free space and continue with "
            f"'segscope train --resume --out {out}'" if step is not None
            else "; no checkpoint was written yet")
    return f"{what}: {exc.strerror or exc}{kept}"


#: Types of the settings (a resumed run reads them from a file that may have been edited).
_INTS = ("iters", "epochs", "batch_size", "warmup", "val_every", "log_every",
         "checkpoint_every", "seed", "workers", "weight_sample", "limit", "val_limit",
         "stop_after")
_FLOATS = ("width", "lr", "momentum", "weight_decay")
_STRS = ("optimizer", "schedule", "class_weights", "loss", "device")


def _check_types(c: TrainConfig) -> None:
    def bad(name: str, value: Any, what: str) -> SegscopeError:
        return SegscopeError(f"training setting {name.replace('_', '-')} = {value!r:.40} is "
                             f"not {what}")

    for name in _INTS:
        v = getattr(c, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise bad(name, v, "a whole number")
    for name in _FLOATS:
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise bad(name, v, "a finite number")
    for name in _STRS:
        if not isinstance(getattr(c, name), str):
            raise bad(name, getattr(c, name), "a word")
    for name in ("channels_last", "bf16"):
        if not isinstance(getattr(c, name), bool):
            raise bad(name, getattr(c, name), "true or false")
    for name in ("split", "val_split", "pretrained"):
        if getattr(c, name) is not None and not isinstance(getattr(c, name), str | os.PathLike):
            raise bad(name, getattr(c, name), "a name")
    if c.size is not None:
        _check_size(c.size)
    if not 0 < c.width <= 4:
        raise SegscopeError(f"width must be in (0, 4], got {c.width}")


def _check_size(size: Any) -> None:
    if not (isinstance(size, tuple | list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise SegscopeError(f"training setting size = {size!r:.40} is not (height, width)")


def check_config(c: TrainConfig) -> None:
    """Raise a one-line :class:`SegscopeError` for any setting of ``c`` a run cannot use."""
    _check_types(c)
    if c.iters is None and c.epochs is None:
        raise SegscopeError("give the length of training: --iters N or --epochs N")
    if c.iters is not None and c.epochs is not None:
        raise SegscopeError("give either --iters or --epochs, not both")
    for name in ("iters", "epochs", "batch_size", "log_every", "weight_sample", "limit",
                 "val_limit"):
        v = getattr(c, name)
        if v is not None and v < 1:
            raise SegscopeError(f"{name.replace('_', '-')} must be at least 1, got {v}")
    for name in ("warmup", "val_every", "checkpoint_every", "workers", "momentum",
                 "weight_decay", "seed"):
        v = getattr(c, name)
        if not v >= 0:  # also catches NaN
            raise SegscopeError(f"{name.replace('_', '-')} must be non-negative, got {v}")
    if c.seed > MAX_SEED:
        raise SegscopeError(f"seed must be at most {MAX_SEED} (2**63 - 1), got {c.seed}")
    if c.val_every and c.val_data is None:
        raise SegscopeError("--val-every needs --val-data (the data to validate on)")
    if not c.lr > 0:
        raise SegscopeError(f"lr must be positive, got {c.lr}")
    if c.class_weights not in ("median", "sqrt", "none"):
        raise SegscopeError(f"unknown class weighting {c.class_weights!r} (median, sqrt, none)")
    if c.loss not in LOSSES:
        raise SegscopeError(f"unknown loss {c.loss!r} ({', '.join(LOSSES)})")
    if c.optimizer not in ("sgd", "adam"):
        raise SegscopeError(f"unknown optimizer {c.optimizer!r} (sgd or adam)")
    if c.schedule not in ("constant", "cosine", "poly"):
        raise SegscopeError(f"unknown schedule {c.schedule!r} (constant, cosine, poly)")


def check_resumed(config: TrainConfig, saved: dict[str, Any],
                  given: Iterable[str] | None = None, cli: bool = False) -> None:
    """Raise when a setting given for a resumed run differs from the interrupted run's.

    ``given``: the settings set explicitly (the command line's options); by default those
    of :data:`RESUME_FIXED` that differ from :class:`TrainConfig`'s defaults. A setting a
    run of an earlier version did not record had its default then.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    chosen = set(given) if given is not None else None
    names = [n for n in RESUME_FIXED if n in chosen] if chosen is not None else [
        n for n in RESUME_FIXED if _comparable(n, getattr(config, n))
        != _comparable(n, defaults[n])]
    for name in names:
        value = getattr(config, name)
        if name in ("data", "val_data") and not isinstance(value, str | os.PathLike | None):
            continue  # a dataset object: its images were not recorded
        before = saved.get(name, defaults[name])
        if _comparable(name, value) != _comparable(name, before):
            shown = "none" if value is None else (
                "x".join(map(str, value)) if name == "size" else value)
            setting = (f"--{name.replace('_', '-')} {shown}" if cli else f"{name}={value!r}")
            raise SegscopeError(
                f"{setting} differs from the interrupted run ({before}); "
                + ("drop it to resume, or train into a new --out" if cli else
                   "leave it at its default to resume, or train into a new out"))


def _comparable(name: str, value: Any) -> Any:
    """A setting as it is compared on resume (the same folder however it is written)."""
    if name in PATH_FIELDS:
        return absolute_if_path(value)
    if name == "size" and value is not None:
        return tuple(value)
    return value


def _merge_resumed(new: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """The saved run's config, with only the runtime settings taken from ``new``."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in fields}
    for key in RUNTIME_FIELDS:
        merged[key] = getattr(new, key)
    for key in ("data", "val_data"):  # dataset objects cannot round-trip through JSON
        if not isinstance(getattr(new, key), str | os.PathLike | None):
            merged[key] = getattr(new, key)
    if isinstance(merged.get("size"), list):
        merged["size"] = tuple(merged["size"])
    return TrainConfig(**merged)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


# -- the run -----------------------------------------------------------------------------
class _Interrupt:
    """SIGINT/SIGTERM -> a flag checked between steps; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(config: TrainConfig) -> TrainResult:
    """Train SegNet as ``config`` says; see the module docstring for the outputs.

    Under ``torchrun`` (WORLD_SIZE > 1) every rank runs this function: the images are
    sharded with a distributed sampler, gradients averaged by DDP, and only rank 0 writes
    files and shows progress. ``batch_size`` is per rank.

    Raises
    ------
    KeyboardInterrupt
        After Ctrl-C, once the checkpoint is written (the CLI exits with 130).
    """
    from .outdir import check_out_path, claim_output

    t0 = time.perf_counter()
    out = check_out_path(config.out)
    header: dict[str, Any] | None = None
    state_tensors: dict[str, torch.Tensor] = {}
    if config.resume:
        if config.overwrite:
            raise SegscopeError("--resume and --overwrite exclude each other")
        if int(os.environ.get("RANK", "0")) == 0:
            adopt_unmarked_run(out)
            claim_output(out, "train", resume=True)  # only checks: a train run is there
        header, state_tensors, saved = resume_point(out)
        check_resumed(config, saved)
        config = _merge_resumed(config, saved)
    try:
        check_config(config)
    except SegscopeError as exc:  # every torchrun rank checks the same settings alike
        exc.all_ranks = True
        raise
    d = _setup_distributed(config.device)
    try:
        return _run(config, d, out, header, state_tensors, t0)
    except OSError as exc:
        # A full disk, a folder gone read-only: every write is atomic, so the last
        # checkpoint is whole; say so in one line.
        raise SegscopeError(_write_failure(out, exc)) from None
    finally:
        if d.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(config: TrainConfig, d: _Dist, out: Path, header: dict | None,
         state_tensors: dict[str, torch.Tensor], t0: float) -> TrainResult:
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)

    train_set = _open(config.data, config.split, "train", config.size, config.limit)
    val_set = _open(config.val_data, config.val_split, "eval", config.size, config.val_limit)
    for dataset in (train_set, val_set):
        note = getattr(dataset, "split_note", None)
        if note and d.main and not config.quiet:
            print(f"segscope: {note}", file=sys.stderr)
    data_id = data_fingerprint(train_set)
    if header is not None and header.get("data_fingerprint") not in (None, data_id):
        raise SegscopeError(
            f"the training images in {config.data} are not those the interrupted run "
            f"started on ({len(train_set)} images now; files added, removed or rewritten); "
            "resuming would train on other data: train into a new --out")
    if len(train_set) < config.batch_size * d.world:
        raise SegscopeError(
            f"the training set has {len(train_set)} images, fewer than one batch "
            f"({config.batch_size} x {d.world} ranks)"
        )

    model = SegNet(num_classes=len(ROAD3), width=config.width, class_names=ROAD3)
    if config.pretrained and header is None:
        model.load_vgg16_bn(config.pretrained)
    error = None
    if d.main:  # every input checked: now the folder is taken
        try:
            _claim_run_folder(out, config)
        except SegscopeError as exc:  # the other ranks stop with it, not at a dead barrier
            error = str(exc)
    agree(d.world, error)

    if header is not None:
        weights = torch.tensor(header["class_weights"], dtype=torch.float32)
    elif config.class_weights in ("median", "sqrt"):
        weights = estimate_class_weights(train_set, model.num_classes, config.weight_sample)
        if config.class_weights == "sqrt":  # milder balancing: fewer false positives
            weights = weights.sqrt()
    else:
        weights = torch.ones(model.num_classes)

    if header is not None:
        resumed, _ = load_model(out / CHECKPOINT)
        load_weights(model, resumed.state_dict(), source=str(out / CHECKPOINT))
    model.to(d.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(model.parameters(), config)
    if header is not None:
        try:
            _optimizer_from_flat(optimizer, state_tensors, header["optimizer"])
            _set_rng_state(state_tensors, header["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise SegscopeError(f"the training state in {out / CHECKPOINT} does not fit "
                                f"this run ({str(exc).splitlines()[0][:120]})") from None
    net: nn.Module = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    sampler = ResumableSampler(train_set, num_replicas=d.world, rank=d.rank, seed=config.seed)
    steps_per_epoch = sampler.num_samples // config.batch_size
    total = config.iters if config.iters is not None else config.epochs * steps_per_epoch
    loader = DataLoader(
        train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
        num_workers=config.workers, persistent_workers=config.workers > 0,
        pin_memory=d.device.type == "cuda",
        prefetch_factor=4 if config.workers > 0 else None,
        worker_init_fn=_ignore_sigint if config.workers > 0 else None,
    )
    step_fn = TrainStep(net, optimizer, weights if config.class_weights != "none" else None,
                        d.device, config.channels_last, config.bf16, loss=config.loss)

    p = header or {}
    step, epoch, in_epoch = p.get("step", 0), p.get("epoch", 0), p.get("batch_in_epoch", 0)
    history: list[dict] = p.get("history", [])
    best = p.get("best_miou")
    # The loss of the current logging window is summed on the device and read back only
    # when it is logged, so that a CUDA step never waits for the host.
    loss_sum = torch.tensor(p.get("loss_sum", 0.0), dtype=torch.float64, device=d.device)
    loss_count = p.get("loss_count", 0)
    elapsed_before = p.get("seconds", 0.0)
    val_metrics = p.get("val_metrics")
    model_path = out / "model.safetensors"
    best_path = out / "best.safetensors" if val_set is not None else None
    if header is not None and step >= total and model_path.is_file():
        # a finished run given --resume: nothing to do, and its files stay as they are
        if d.main and not config.quiet:
            print(f"segscope: {out} holds a finished run ({step}/{total} iterations); "
                  "nothing to resume", file=sys.stderr)
        return TrainResult(out, model_path,
                           best_path if best_path is not None and best_path.is_file() else None,
                           step, total, history, val_metrics, weights.tolist(), elapsed_before)

    if d.main:
        write_json(out / "config.json", {**config.to_json(), "world_size": d.world,
                                         "class_weights": weights.tolist()})

    def progress() -> dict[str, Any]:
        return {"step": step, "epoch": epoch, "batch_in_epoch": in_epoch, "history": history,
                "best_miou": best, "loss_sum": float(loss_sum), "loss_count": loss_count,
                "seconds": elapsed_before + time.perf_counter() - t0,
                "val_metrics": val_metrics, "class_weights": weights.tolist(),
                "config": config.to_json(), "total_steps": total, "data_fingerprint": data_id}

    # recorded in the model files and checkpoints: later commands show images at this scale
    image_size = list(config.size) if config.size else None
    if image_size is None and header is not None:  # until the first batch of this session
        image_size = read_metadata(out / CHECKPOINT).get("image_size")

    def diverged(loss_text: str) -> SegscopeError:
        kept = (f"the last good checkpoint in {out} is kept" if (out / CHECKPOINT).is_file()
                else "no checkpoint was written yet")
        return SegscopeError(f"training diverged: the loss is {loss_text} at step {step}; "
                             f"lower --lr ({kept})")

    def checkpoint() -> None:
        if not bool(torch.isfinite(loss_sum)):
            raise diverged("not finite")
        if d.main:
            save_training_state(out, model, optimizer, progress(), image_size)
        _barrier(d)

    def validate() -> dict:
        if d.world > 1:
            # DDP hands rank 0's batch-norm statistics to the others at each forward pass,
            # but the last step moved each rank's own: score the model that is saved
            import torch.distributed as dist

            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        cm = evaluate_dataset(model, val_set, device=d.device, batch_size=config.batch_size,
                              distributed=d.world > 1, channels_last=config.channels_last,
                              bf16=config.bf16)
        model.train()
        return cm.metrics()

    bar = tqdm(total=total, initial=step, desc="train", unit="it", dynamic_ncols=True,
               disable=config.quiet or not d.main or not sys.stderr.isatty())
    interrupted = False
    try:
        with _Interrupt() as stop:
            while step < total:
                sampler.set_epoch(epoch)
                sampler.start = in_epoch * config.batch_size
                for images, labels in loader:
                    image_size = [int(v) for v in images.shape[-2:]]
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate(config, step, total)
                    loss = step_fn(images, labels)
                    loss_sum += loss
                    loss_count += 1
                    step += 1
                    in_epoch += 1
                    if in_epoch >= steps_per_epoch:
                        epoch, in_epoch = epoch + 1, 0
                    bar.update(1)
                    do_log = step % max(1, config.log_every) == 0 or step == total
                    do_val = val_set is not None and (
                        (config.val_every and step % config.val_every == 0) or step == total)
                    if do_log or do_val:
                        record = {"step": step, "epoch": epoch + in_epoch / steps_per_epoch,
                                  "lr": optimizer.param_groups[0]["lr"],
                                  "loss": float(loss_sum) / loss_count if loss_count else None,
                                  "seconds": round(elapsed_before + time.perf_counter() - t0, 3)}
                        if record["loss"] is not None and not math.isfinite(record["loss"]):
                            raise diverged(str(record["loss"]))
                        bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
                        loss_sum.zero_()
                        loss_count = 0
                        if do_val:
                            val_metrics = validate()
                            record.update({
                                "val_global_accuracy": val_metrics["global_accuracy"],
                                "val_mean_class_accuracy": val_metrics["mean_class_accuracy"],
                                "val_miou": val_metrics["miou"],
                                "val_iou": val_metrics["iou"]})
                            miou = val_metrics["miou"] or 0.0
                            if best is None or miou > best:
                                best = miou
                                if d.main:
                                    save_model(model, best_path, kind="best", step=step,
                                               val_metrics=val_metrics, image_size=image_size)
                            if d.main and not config.quiet:
                                bar.write(f"step {step}: val mIoU {miou:.4f} "
                                          + " ".join(f"{k} {_fmt(v)}"
                                                     for k, v in val_metrics["iou"].items()))
                        history.append(record)
                        if d.main:
                            write_metrics(out, history, plot=do_val and step < total)
                    if config.checkpoint_every and step % config.checkpoint_every == 0:
                        checkpoint()
                    if _any_rank(stop.flag, d):
                        interrupted = True
                        break
                    if config.stop_after is not None and step >= config.stop_after:
                        interrupted = True
                        break
                    if step >= total:
                        break
                if interrupted:
                    break
    finally:
        bar.close()
    # Always leave a resumable checkpoint, also at the end (lets a run be extended).
    checkpoint()
    if interrupted:
        if d.main and not config.quiet:
            print(f"stopped at step {step}/{total}; continue with --resume --out {out}")
        if config.stop_after is None:
            raise KeyboardInterrupt
        return TrainResult(out, None, None, step, total, history, val_metrics,
                           weights.tolist(), elapsed_before + time.perf_counter() - t0, True)
    if d.main:
        from .data.synthetic import describe_dataset  # what made the data: preset, factors

        save_model(model, model_path, kind="final", step=step, val_metrics=val_metrics,
                   train_config=config.to_json(), data=describe_dataset(train_set),
                   image_size=image_size)
        write_metrics(out, history)
    _barrier(d)
    return TrainResult(out, model_path, best_path if best is not None else None, step, total,
                       history, val_metrics, weights.tolist(),
                       elapsed_before + time.perf_counter() - t0)
