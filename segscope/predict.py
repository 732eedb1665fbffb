"""Inference: predictions, scoring a model on a dataset, colour-coded outputs.

Used by ``segscope evaluate``, ``segscope predict``, validation during training and the
demo.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.classes import ROAD3_COLOURS
from .errors import SegscopeError
from .metrics import ConfusionMatrix


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU or CUDA, or a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def predict_scores(model: nn.Module, images: torch.Tensor, device: torch.device | None = None,
                   channels_last: bool = False, bf16: bool = False) -> torch.Tensor:
    """Class scores (N,K,H,W) float32 of a batch of images (N,3,H,W) in [0, 1]."""
    device = device or next(model.parameters()).device
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(device, bf16):
        scores = model(images)
    if not bool(torch.isfinite(scores).all()):
        # argmax over NaN picks a class all the same: a silently wrong picture or score
        what = "the images hold NaN or infinite values" if not bool(
            torch.isfinite(images).all()) else "the model's weights or inputs are not finite"
        raise SegscopeError(f"the model's class scores are NaN or infinite ({what})")
    return scores.float()


def predict_labels(model: nn.Module, images: torch.Tensor, **kwargs) -> torch.Tensor:
    """Predicted class ids (N,H,W) int64 of a batch of images."""
    return predict_scores(model, images, **kwargs).argmax(1)


def road_surface_view(pred: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-class (background, road surface) view used for data sets without markings."""
    from .data.real import merge_road_surface

    return merge_road_surface(pred, label)


def _collate(batch):
    """Stack equally sized samples; keep a list when sizes differ (scored one by one)."""
    images = [b[0] for b in batch]
    labels = [b[1] for b in batch]
    if all(im.shape == images[0].shape for im in images):
        return torch.stack(images), torch.stack(labels)
    return images, labels


def evaluate_dataset(
    model: nn.Module,
    dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    workers: int = 0,
    road_surface: bool | None = None,
    class_names: Sequence[str] | None = None,
    quiet: bool = True,
    channels_last: bool = False,
    bf16: bool = False,
    distributed: bool = False,
    desc: str = "evaluate",
) -> ConfusionMatrix:
    """Score ``model`` on a map-style dataset of (image, label) pairs.

    Parameters
    ----------
    road_surface
        Score on (background, road surface) — road and markings merged in both the
        prediction and the label. ``None`` decides from ``dataset.has_markings``.
    distributed
        Each DDP rank scores its share of the images and the matrices are summed.

    Returns
    -------
    ConfusionMatrix
        Over all images of the dataset (all ranks).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    if road_surface is None:
        road_surface = not getattr(dataset, "has_markings", True)
    base = getattr(model, "module", model)
    names = tuple(class_names or getattr(base, "class_names", None)
                  or [f"class{i}" for i in range(base.num_classes)])
    if road_surface:
        from .data.real import ROAD_SURFACE
    cm = ConfusionMatrix(2, ROAD_SURFACE) if road_surface else ConfusionMatrix(len(names), names)
    indices: Iterable[int] = range(len(dataset))
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            indices = range(dist.get_rank(), len(dataset), dist.get_world_size())
    subset = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, pin_memory=device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    try:
        for images, labels in tqdm(loader, desc=desc, disable=quiet, leave=False):
            groups = [(images, labels)] if isinstance(images, torch.Tensor) else [
                (im[None], lb[None]) for im, lb in zip(images, labels, strict=True)]
            for ims, lbs in groups:
                pred = predict_labels(model, ims, device=device, channels_last=channels_last,
                                      bf16=bf16).cpu()
                if road_surface:
                    pred, lbs = road_surface_view(pred, lbs)
                cm.update(pred, lbs)
    finally:
        model.train(was_training)
    if distributed:
        cm.all_reduce()
    return cm


# -- images in, pictures out ------------------------------------------------------------
def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An image file as float32 (3,H,W) in [0, 1], optionally resized to ``size`` (H, W)."""
    from .data.io import read_image

    image = torch.from_numpy(read_image(path)).permute(2, 0, 1).contiguous()
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        from .data.real import resize_image

        image = resize_image(image, size)
    return image


def find_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files among ``inputs`` (files, or folders searched one level deep)."""
    from .data.io import IMAGE_SUFFIXES, require_file

    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                # images one level down (a dataset's images/ without its labels/): say where
                below = sorted(d.name for d in p.iterdir() if d.is_dir() and any(
                    f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir() if f.is_file()))
                hint = f"; its subfolder(s) {', '.join(below)} hold images: give one of " \
                    "those" if below else ""
                raise SegscopeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}"
                                    f"{hint}")
            found += files
        else:
            found.append(require_file(p, "input"))
    if not found:
        raise SegscopeError("no input images given")
    # A file given both alone and inside its folder is predicted once.
    seen: set[Path] = set()
    unique = []
    for f in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def colourize(labels: torch.Tensor | np.ndarray,
              colours: Sequence[Sequence[int]] = ROAD3_COLOURS) -> np.ndarray:
    """(H,W) class ids -> (H,W,3) uint8 colours; ids without a colour (e.g. 255) are black."""
    labels = np.asarray(labels)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colours)] = np.asarray(colours, dtype=np.uint8)
    return palette[labels.astype(np.uint8)]


def overlay(image: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
            alpha: float = 0.5, colours: Sequence[Sequence[int]] = ROAD3_COLOURS) -> np.ndarray:
    """Blend the colour-coded ``labels`` over ``image`` (3,H,W in [0,1]) -> (H,W,3) uint8."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 3:
        img = img.transpose(1, 2, 0)
    col = colourize(labels, colours).astype(np.float32) / 255.0
    out = (1 - alpha) * img + alpha * col
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def _predict_at_scale(model: nn.Module, image: torch.Tensor, device: torch.device,
                      trained_size: tuple[int, int] | None) -> np.ndarray:
    """(H, W) class ids of ``image``, predicted at the training scale when given."""
    from .checkpoint import at_training_scale
    from .data.real import resize_image

    work = at_training_scale(tuple(image.shape[-2:]), trained_size)
    if work is None or work == tuple(image.shape[-2:]):
        return predict_labels(model, image[None], device=device)[0].cpu().numpy()
    scores = predict_scores(model, resize_image(image, work)[None], device=device)
    scores = torch.nn.functional.interpolate(scores, size=tuple(image.shape[-2:]),
                                             mode="bilinear", align_corners=False)
    return scores.argmax(1)[0].cpu().numpy()


def output_names(files: Sequence[Path]) -> list[str]:
    """The name each image's outputs take: its stem (``a`` for ``a.png``); where two images
    share a stem, stem and extension (``a_png``, ``a_jpg``); where those are shared too
    (the same file name in two folders), a number after them (``a_png_2``) — never a name
    another image has by the rules before (``a_2.png`` keeps ``a_2``)."""
    from collections import Counter

    stems = Counter(p.stem for p in files)
    natural = [p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
               for p in files]
    taken, seen, out = set(natural), set(), []
    for name in natural:
        if name in seen:
            n = 2
            while f"{name}_{n}" in taken:
                n += 1
            name = f"{name}_{n}"
            taken.add(name)
        seen.add(name)
        out.append(name)
    return out


def predict_files(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    device: torch.device | str = "cpu",
    size: tuple[int, int] | None = None,
    alpha: float = 0.5,
    quiet: bool = False,
    trained_size: tuple[int, int] | None = None,
) -> list[dict]:
    """Predict every input image and write ``<stem>_pred.png`` (colours),
    ``<stem>_overlay.png`` and ``<stem>_labels.png`` (raw class ids) into ``out``.

    ``size`` resizes the images first. Without it and with ``trained_size`` (the (H, W)
    the model was trained on), each image is shown to the model at the training width
    (:func:`~segscope.checkpoint.at_training_scale`) and the class scores are resized
    back (bilinear) to the image's own size before the argmax.

    Returns one record per image: input, outputs and the predicted pixel share per class.
    """
    from tqdm.auto import tqdm

    from .data.io import write_png

    files = find_images(inputs)
    device = torch.device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = getattr(model, "class_names", None) or [f"class{i}" for i in range(256)]
    model.eval()
    records = []
    for path, stem in tqdm(list(zip(files, output_names(files), strict=True)), desc="predict",
                           disable=quiet, unit="img"):
        image = load_image(path, size)
        labels = _predict_at_scale(model, image, device,
                                   None if size is not None else trained_size)
        outputs = {
            "prediction": write_png(out / f"{stem}_pred.png", colourize(labels)),
            "overlay": write_png(out / f"{stem}_overlay.png", overlay(image, labels, alpha)),
            "labels": write_png(out / f"{stem}_labels.png", labels.astype(np.uint8)),
        }
        counts = np.bincount(labels.reshape(-1), minlength=len(model.class_names))
        records.append({
            "input": str(path),
            **{k: str(v) for k, v in outputs.items()},
            "share": {names[c]: float(counts[c] / labels.size) for c in range(len(counts))},
        })
    return records
