"""Segmentation metrics from a confusion matrix (SPEC §2) and class weights for training.

The confusion matrix has the true class on the rows and the predicted class on the
columns: ``cm[t, p]`` counts pixels of class ``t`` predicted as ``p``. Pixels labelled with
the ignore index are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import SegscopeError

IGNORE_INDEX = 255


def confusion_matrix(
    pred: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Count (true, predicted) pixel pairs into a (K,K) int64 matrix.

    Parameters
    ----------
    pred
        Predicted class ids, any shape (e.g. (N,H,W)).
    label
        True class ids of the same shape; ``ignore_index`` pixels are skipped.
    num_classes
        K.
    ignore_index
        Label value that is not scored.
    out
        An existing (K,K) int64 matrix to add the counts to (accumulation).

    Returns
    -------
    torch.Tensor
        ``out`` (or a new matrix) with ``cm[t, p]`` += pixels of class t predicted as p.
    """
    if pred.shape != label.shape:
        raise SegscopeError(
            f"prediction and label shapes differ: {tuple(pred.shape)} vs {tuple(label.shape)}"
        )
    pred = pred.reshape(-1).long()
    label = label.reshape(-1).long().to(pred.device)
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    if label.numel():
        lo, hi = int(torch.minimum(label.min(), pred.min())), int(torch.maximum(label.max(),
                                                                                pred.max()))
        if lo < 0 or hi >= num_classes:
            raise SegscopeError(
                f"class id {lo if lo < 0 else hi} outside 0..{num_classes - 1} "
                f"(labels must be class ids or {ignore_index})"
            )
    counts = torch.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes)
    if out is None:
        return counts
    out += counts.to(out.device)
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _nanmean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches (and DDP ranks) and derives metrics.

    Parameters
    ----------
    num_classes
        K.
    class_names
        Names of the K classes, used as keys of the per-class metrics.
    ignore_index
        Label value that is not scored.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.num_classes = int(num_classes)
        if class_names is None:
            class_names = [f"class{i}" for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise SegscopeError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = tuple(class_names)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> ConfusionMatrix:
        """Add the pixels of a batch: ``pred`` are class ids (or scores (N,K,H,W))."""
        if pred.dim() == label.dim() + 1 and pred.is_floating_point():
            pred = pred.argmax(1)
        counts = confusion_matrix(pred, label, self.num_classes, self.ignore_index)
        self.matrix += counts.cpu()
        return self

    def reset(self) -> None:
        self.matrix.zero_()

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrices of all DDP ranks (no-op without a process group)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend = dist.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" \
                else torch.device("cpu")
            buf = self.matrix.to(device)
            dist.all_reduce(buf)
            self.matrix = buf.cpu()
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self.matrix += other.matrix
        return self

    def metrics(self) -> dict[str, Any]:
        """Global accuracy, mean class accuracy, per-class IoU and accuracy, mIoU, counts.

        Classes with no true pixels have no accuracy (``None``) and are left out of the
        mean class accuracy; classes with neither true nor predicted pixels have no IoU and
        are left out of the mIoU.
        """
        cm = self.matrix.double()
        tp = cm.diag()
        truth = cm.sum(1)
        predicted = cm.sum(0)
        total = float(cm.sum())
        acc = [_ratio(tp[c], truth[c]) for c in range(self.num_classes)]
        iou = [_ratio(tp[c], truth[c] + predicted[c] - tp[c]) for c in range(self.num_classes)]
        names = self.class_names
        return {
            "global_accuracy": _ratio(float(tp.sum()), total),
            "mean_class_accuracy": _nanmean(acc),
            "miou": _nanmean(iou),
            "iou": dict(zip(names, iou, strict=True)),
            "class_accuracy": dict(zip(names, acc, strict=True)),
            "pixels": {n: int(truth[c]) for c, n in enumerate(names)},
            "predicted_pixels": {n: int(predicted[c]) for c, n in enumerate(names)},
            "total_pixels": int(total),
            "classes": list(names),
            "confusion_matrix": self.matrix.tolist(),
        }

    def table(self) -> str:
        """The confusion matrix (row-normalised %) and the metrics as plain text."""
        return format_metrics(self.metrics())


def format_metrics(m: dict[str, Any]) -> str:
    """Plain-text table of a :meth:`ConfusionMatrix.metrics` dict."""

    def pct(v: float | None) -> str:
        return "   -  " if v is None else f"{100 * v:6.2f}"

    names = m["classes"]
    cm = np.asarray(m["confusion_matrix"], dtype=np.float64)
    col = max(10, *(len(n) for n in names)) + 1
    lines = ["confusion matrix (rows: truth, columns: prediction, % of the row)",
             " " * col + "".join(f"{n:>{col}}" for n in names)]
    for i, n in enumerate(names):
        row = cm[i] / cm[i].sum() if cm[i].sum() else cm[i] * math.nan
        cells = "".join(f"{'-' if math.isnan(v) else f'{100 * v:.2f}':>{col}}" for v in row)
        lines.append(f"{n:<{col}}{cells}")
    lines.append("")
    lines.append(f"{'class':<{col}}{'IoU %':>9}{'acc %':>9}{'pixels':>12}")
    for n in names:
        lines.append(f"{n:<{col}}{pct(m['iou'][n]):>9}{pct(m['class_accuracy'][n]):>9}"
                     f"{m['pixels'][n]:>12}")
    lines.append("")
    lines.append(f"global accuracy      {pct(m['global_accuracy'])} %")
    lines.append(f"mean class accuracy  {pct(m['mean_class_accuracy'])} %")
    lines.append(f"mIoU                 {pct(m['miou'])} %")
    return "\n".join(lines)


def class_pixel_counts(label: torch.Tensor, num_classes: int,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixels of each class in one label map: (K,) int64 (ignore pixels not counted)."""
    flat = label.reshape(-1).long()
    flat = flat[flat != ignore_index]
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
        raise SegscopeError(f"label ids outside 0..{num_classes - 1} and {ignore_index}")
    return torch.bincount(flat, minlength=num_classes)


def median_frequency_weights(counts: torch.Tensor | np.ndarray) -> torch.Tensor:
    """SegNet's median-frequency class balancing (Eigen & Fergus).

    Parameters
    ----------
    counts
        (N,K) pixel counts per image and class (e.g. stacked :func:`class_pixel_counts`).

    Returns
    -------
    torch.Tensor
        (K,) float32 weights ``w_c = median(freq) / freq_c`` with
        ``freq_c = pixels of c / total pixels of the images where c is present``. The
        median is over the classes that occur; a class that never occurs gets weight 1.
    """
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
    if counts.dim() != 2:
        raise SegscopeError(f"counts must be (images, classes), got shape {tuple(counts.shape)}")
    per_image = counts.sum(1, keepdim=True)  # (N,1) labelled pixels of each image
    present = counts > 0
    class_pixels = counts.sum(0)
    image_pixels = (per_image * present).sum(0)
    seen = class_pixels > 0
    weights = torch.ones(counts.shape[1], dtype=torch.float64)
    if seen.any():
        freq = class_pixels[seen] / image_pixels[seen]
        # numpy's median: the mean of the two middle values for an even count of classes.
        median = float(np.median(freq.numpy()))
        weights[seen] = median / freq
    return weights.float()
