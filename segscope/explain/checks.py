"""The input checks every explanation method shares (one copy for all of them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SegscopeError


def check_image(image: Any) -> torch.Tensor:
    """The image as a float tensor (3,H,W) of finite values; a one-line SegscopeError
    otherwise (a numpy array is accepted and converted)."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not torch.is_tensor(image):
        raise SegscopeError(f"the image must be a (3,H,W) float tensor, got {type(image).__name__}")
    shape = tuple(image.shape)
    if image.dim() != 3 or shape[0] != 3:
        raise SegscopeError(f"the image must be (3,H,W), got {shape}")
    if not image.dtype.is_floating_point:
        raise SegscopeError(
            f"the image must be float in [0,1] (3,H,W), got {image.dtype} of shape {shape}"
        )
    if shape[1] < 1 or shape[2] < 1:
        raise SegscopeError(f"the image is empty: shape {shape}")
    bad = ~torch.isfinite(image)
    if bool(bad.any()):
        raise SegscopeError(
            f"the image has {int(bad.sum())} NaN or infinite values; explanations need "
            "finite pixels"
        )
    return image


def check_images(images: Any) -> torch.Tensor:
    """A batch of images as one float tensor (N,3,H,W): from (N,3,H,W) or a non-empty
    sequence of (3,H,W) images of one size, each checked as :func:`check_image` does."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if torch.is_tensor(images):
        if images.dim() != 4:
            raise SegscopeError(f"a batch of images must be (N,3,H,W), got "
                                f"{tuple(images.shape)}")
        images = list(images)
    images = [check_image(im) for im in images]
    if not images:
        raise SegscopeError("the batch holds no images")
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:
        raise SegscopeError(f"the images of a batch must have one size, got "
                            f"{', '.join('x'.join(map(str, s[1:])) for s in sorted(sizes))}")
    return torch.stack(images)


def check_scores(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` if every value is finite; else a one-line SegscopeError (a model with
    NaN or infinite weights would give NaN maps without a word)."""
    if not bool(torch.isfinite(scores).all()):
        raise SegscopeError(
            "the model's output scores are not finite (NaN or infinity): its weights are "
            "probably corrupt (NaN); nothing to explain"
        )
    return scores


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating-point dtype of ``model``'s parameters (CPU/float32 if none)."""
    for p in model.parameters():
        return p.device, (p.dtype if p.dtype.is_floating_point else torch.float32)
    return torch.device("cpu"), torch.float32


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (CPU if it has none)."""
    return model_device_dtype(model)[0]
