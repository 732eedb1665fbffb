"""SegNet (Badrinarayanan et al.), as in the reference Caffe model and SPEC §2.

The network is built from plain ``torch.nn`` modules registered in forward order, so
that other PyTorch tools (zennit canonizers, captum layer hooks) can walk it. Each
convolutional layer is a :class:`ConvBNReLU` block whose modules are ``conv``, ``bn`` and
``relu``; the last decoder convolution ``conv1_1_D`` is a bare ``Conv2d`` (class scores,
no BN, no ReLU).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SegscopeError

#: Encoder blocks: (block index, number of convs, full-width output channels).
_ENCODER = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
#: Decoder output channels per conv, block by block, in forward order (SPEC §2);
#: ``None`` marks the class-score layer ``conv1_1_D``.
_DECODER = (
    (5, (512, 512, 512)),
    (4, (512, 512, 256)),
    (3, (256, 256, 128)),
    (2, (128, 64)),
    (1, (64, None)),
)

#: ImageNet normalisation torchvision's VGG16-BN expects; folded into conv1_1 on import.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Spatial factor the input must be divisible by (five 2x2 poolings).
STRIDE = 32


def layer_names() -> list[str]:
    """The 37 layer names of SPEC §2 in forward order, ``data`` first."""
    names = ["data"]
    for block, n_convs, _ in _ENCODER:
        names += [f"conv{block}_{i}" for i in range(1, n_convs + 1)]
        names.append(f"pool{block}")
    for block, widths in _DECODER:
        names.append(f"upsample{block}")
        names += [f"conv{block}_{i}_D" for i in range(len(widths), 0, -1)]
    return names


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class ConvBNReLU(nn.Sequential):
    """3x3 convolution, batch normalisation and ReLU: one named SegNet layer."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=False)


def fold_padding(r: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The adjoint of :meth:`SegNet.pad`: a (..., H', W') gradient or relevance of the
    padded map, folded back onto the (..., h, w) map, every padded row/column added to
    the last row/column it copies."""
    out = r[..., :h, :w].clone()
    if r.shape[-2] > h:
        out[..., h - 1, :] += r[..., h:, :w].sum(dim=-2)
    if r.shape[-1] > w:
        out[..., :, w - 1] += r[..., :h, w:].sum(dim=-1)
    if r.shape[-2] > h and r.shape[-1] > w:
        out[..., h - 1, w - 1] += r[..., h:, w:].sum(dim=(-2, -1))
    return out


class SegNet(nn.Module):
    """SegNet with a VGG16-BN encoder and a mirrored decoder (SPEC §2).

    Parameters
    ----------
    num_classes
        Number of output classes K (3 for ROAD3).
    width
        Channel multiplier; 1.0 is the published network (64-128-256-512-512),
        smaller values make models for CPU work.
    class_names
        Optional names of the K classes; defaults to ROAD3 for K=3.

    Notes
    -----
    ``forward`` takes images in [0, 1] straight into ``conv1_1``. Any height and width
    work: sizes that are not multiples of 32 are padded at the bottom and right by
    repeating the last row and column (edge replication), and the scores are cropped back.
    Zero padding would put black rows under the road, where a model trained at a multiple
    of 32 never saw any: on CamVid at 144x192 it took a model's road IoU from 0.82 to 0.20.
    """

    def __init__(
        self,
        num_classes: int = 3,
        width: float = 1.0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise SegscopeError(f"num_classes must be at least 1, got {num_classes}")
        if not width > 0:
            raise SegscopeError(f"width must be positive, got {width}")
        self.num_classes = int(num_classes)
        self.width = float(width)
        if class_names is None:
            from .data.classes import ROAD3

            class_names = ROAD3 if num_classes == 3 else [f"class{i}" for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise SegscopeError(
                f"{len(class_names)} class names given for a model with {num_classes} classes"
            )
        self.class_names = tuple(str(c) for c in class_names)

        in_ch = 3
        for block, n_convs, out_full in _ENCODER:
            out_ch = _scaled(out_full, width)
            for i in range(1, n_convs + 1):
                self.add_module(f"conv{block}_{i}", ConvBNReLU(in_ch, out_ch))
                in_ch = out_ch
            self.add_module(f"pool{block}", nn.MaxPool2d(2, 2, return_indices=True))
        for block, widths in _DECODER:
            self.add_module(f"upsample{block}", nn.MaxUnpool2d(2, 2))
            for i, out_full in zip(range(len(widths), 0, -1), widths, strict=True):
                name = f"conv{block}_{i}_D"
                if out_full is None:
                    self.add_module(name, nn.Conv2d(in_ch, num_classes, 3, padding=1))
                else:
                    out_ch = _scaled(out_full, width)
                    self.add_module(name, ConvBNReLU(in_ch, out_ch))
                    in_ch = out_ch
        self.layer_names = layer_names()
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- structure -----------------------------------------------------------------------
    def config(self) -> dict:
        """What it takes to rebuild this model: stored in every checkpoint."""
        return {
            "name": "SegNet",
            "num_classes": self.num_classes,
            "width": self.width,
            "class_names": list(self.class_names),
        }

    def layer(self, name: str) -> nn.Module:
        """The module whose output is the activation of layer ``name``.

        A conv layer's ReLU (the conv itself for ``conv1_1_D``), the pooling module for
        ``poolN`` / ``upsampleN``. ``data`` has no module and is an error.
        """
        if name not in self.layer_names or name == "data":
            known = ", ".join(self.layer_names[1:4]) + ", …, " + self.layer_names[-1]
            raise SegscopeError(f"unknown layer {name!r} (SegNet layers: {known})")
        module = getattr(self, name)
        return module.relu if isinstance(module, ConvBNReLU) else module

    def encoder_blocks(self) -> list[list[str]]:
        """Names of the encoder layers, grouped by block (convs then pool)."""
        groups: list[list[str]] = []
        for block, n_convs, _ in _ENCODER:
            groups.append([f"conv{block}_{i}" for i in range(1, n_convs + 1)] + [f"pool{block}"])
        return groups

    # -- forward -------------------------------------------------------------------------
    @staticmethod
    def padded_size(height: int, width: int) -> tuple[int, int]:
        """The input size after padding up to multiples of 32."""
        return (math.ceil(height / STRIDE) * STRIDE, math.ceil(width / STRIDE) * STRIDE)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (N,3,H,W) at the bottom and right to multiples of 32 by edge replication."""
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h, w)
        if (ph, pw) == (h, w):
            return x
        return F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise SegscopeError(
                f"SegNet expects images of shape (N,3,H,W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        out = self.pad(x)
        indices: dict[int, tuple[torch.Tensor, torch.Size]] = {}
        for block, n_convs, _ in _ENCODER:
            for i in range(1, n_convs + 1):
                out = getattr(self, f"conv{block}_{i}")(out)
            size = out.shape[-2:]
            out, idx = getattr(self, f"pool{block}")(out)
            indices[block] = (idx, size)
        for block, widths in _DECODER:
            idx, size = indices[block]
            out = getattr(self, f"upsample{block}")(out, idx, output_size=size)
            for i in range(len(widths), 0, -1):
                out = getattr(self, f"conv{block}_{i}_D")(out)
        return out[..., :h, :w]

    # -- pretrained encoder --------------------------------------------------------------
    def load_vgg16_bn(self, path: str | os.PathLike, imagenet_normalisation: bool = True) -> None:
        """Initialise the encoder from a local VGG16-BN file in torchvision's layout.

        ``path`` is a ``.safetensors`` file (preferred: no unpickling at all) with keys
        ``features.{i}.weight`` etc., or a ``.pth`` state dict, read with
        ``torch.load(weights_only=True)``: torch's restricted unpickler, which admits
        tensors and plain containers only. The
        classifier is ignored. With ``imagenet_normalisation`` the ImageNet mean/std that
        torchvision's weights expect are folded into ``conv1_1`` so that the model still
        takes images in [0, 1]. Requires ``width=1.0``.
        """
        state = _read_state_dict(path)
        copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, index in _vgg_feature_indices():
            block: ConvBNReLU = getattr(self, name)
            conv_key, bn_key = f"features.{index}", f"features.{index + 1}"
            pairs = {
                f"{conv_key}.weight": block.conv.weight,
                f"{conv_key}.bias": block.conv.bias,
                f"{bn_key}.weight": block.bn.weight,
                f"{bn_key}.bias": block.bn.bias,
                f"{bn_key}.running_mean": block.bn.running_mean,
                f"{bn_key}.running_var": block.bn.running_var,
            }
            for key, tensor in pairs.items():
                if key not in state:
                    raise SegscopeError(
                        f"{path}: not a torchvision VGG16-BN state dict (missing {key!r})"
                    )
                if tuple(state[key].shape) != tuple(tensor.shape):
                    raise SegscopeError(
                        f"{path}: {key} has shape {tuple(state[key].shape)}, this SegNet "
                        f"(width {self.width}) needs {tuple(tensor.shape)}"
                    )
                copies.append((tensor, state[key]))
        with torch.no_grad():
            for tensor, value in copies:
                tensor.copy_(value)
            if imagenet_normalisation:
                fold_normalisation(self.conv1_1.conv, IMAGENET_MEAN, IMAGENET_STD)


def _vgg_feature_indices() -> list[tuple[str, int]]:
    """(encoder conv name, index of its conv in torchvision's ``vgg16_bn().features``)."""
    pairs, index = [], 0
    for block, n_convs, _ in _ENCODER:
        for i in range(1, n_convs + 1):
            pairs.append((f"conv{block}_{i}", index))
            index += 3  # Conv2d, BatchNorm2d, ReLU
        index += 1  # MaxPool2d
    return pairs


def fold_normalisation(conv: nn.Conv2d, mean: Sequence[float], std: Sequence[float]) -> None:
    """Make ``conv(x)`` equal the old ``conv((x - mean) / std)`` (exact away from borders)."""
    m = torch.tensor(mean, dtype=conv.weight.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=conv.weight.dtype).view(1, -1, 1, 1)
    with torch.no_grad():
        w = conv.weight / s
        conv.bias.sub_((w * m).sum(dim=(1, 2, 3)))
        conv.weight.copy_(w)


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from .data.io import require_file

    path = os.fspath(require_file(path, "weights"))
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (or, long ago, a raw pickle); anything else is read
    # as safetensors, the preferred format, whatever its name.
    pickled = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
    try:
        if not pickled:
            from safetensors.torch import load_file

            return load_file(path)
        # Never a full unpickle: weights_only admits tensors and plain containers only.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except SegscopeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise SegscopeError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SegscopeError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state
