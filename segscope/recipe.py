"""The synthetic-only training recipe that ``segscope demo`` and ``segscope ablate`` share.

One place for the settings that made the best transfer to real road scenes measured so
far (README, "Synthetic data that transfers"): the ``urban`` preset at 128x192, SegNet
width 0.25, Adam with a cosine schedule, square-root class weights.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(kw_only=True)
class Recipe:
    """How a synthetic-only model is trained (keyword-only fields)."""

    preset: str = "urban"
    size: tuple[int, int] = (128, 192)
    width: float = 0.25
    iters: int = 1200
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 20
    # The square root of the median-frequency weights: markings still count ~5x, with
    # fewer false positives than the full weights (markings IoU is the harder half of
    # the demo's bar).
    class_weights: str = "sqrt"
    loss: str = "ce"


__all__ = ["Recipe"]
