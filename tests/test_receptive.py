"""Receptive fields (thesis §7.2.1): measured from gradients, and from the geometry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import segscope
from segscope import SegscopeError
from segscope.explain import Concept
from segscope.explain.receptive import extent, receptive_field, theoretical_receptive_field


class ThreeConvs(nn.Module):
    """conv1_1, conv1_2 (3x3 + ReLU) and conv1_3 (3x3, 2 class scores); no pooling.

    All weights, biases and inputs positive: no ReLU ever closes, so every zero gradient
    is a structural one.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1_1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.conv1_2 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.conv1_3 = nn.Conv2d(4, 2, 3, padding=1)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.uniform_(0.1, 1.0)
                    m.bias.uniform_(0.1, 0.5)
        self.layer_names = ["data", "conv1_1", "conv1_2", "conv1_3"]
        self.class_names = ("a", "b")

    def layer(self, name: str) -> nn.Module:
        if name not in self.layer_names[1:]:
            raise SegscopeError(f"unknown layer {name!r}")
        block = getattr(self, name)
        return block[1] if isinstance(block, nn.Sequential) else block

    def forward(self, x):
        return self.conv1_3(self.conv1_2(self.conv1_1(x)))


def _square(size: int, centre: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.bool)
    r = size // 2
    out[centre[0] - r : centre[0] + r + 1, centre[1] - r : centre[1] + r + 1] = True
    return out


def test_one_pixel_field_is_the_theoretical_square_without_pooling():
    net = ThreeConvs().eval()
    image = torch.rand(3, 17, 19, generator=torch.Generator().manual_seed(1)) + 0.1
    centre = (8, 9)
    fields = receptive_field(net, image, Concept.pixel("b", *centre))
    # Three 3x3 convs: 7x7 at the input, 5x5 at conv1_1's output, 3x3 at conv1_2's.
    assert theoretical_receptive_field(net, "conv1_3") == (7, 1)
    assert theoretical_receptive_field(net, "conv1_3", at="conv1_1") == (5, 1)
    assert theoretical_receptive_field(net, "conv1_3", at="conv1_2") == (3, 1)
    for layer, size in (("data", 7), ("conv1_1", 5), ("conv1_2", 3), ("conv1_3", 1)):
        assert torch.equal(fields[layer], _square(size, centre, (17, 19))), layer
        assert extent(fields[layer])[:2] == (size, size)
    # A pixel on the border: the square is clipped by the zero padding.
    fields = receptive_field(net, image, Concept.pixel("a", 0, 0), ["conv1_1"])
    assert extent(fields["conv1_1"]).box == (0, 0, 3, 3)


def test_field_of_a_set_is_the_union_of_the_pixels_fields():
    net = ThreeConvs().eval()
    image = torch.rand(3, 17, 19, generator=torch.Generator().manual_seed(2)) + 0.1
    mask = torch.zeros(17, 19, dtype=torch.bool)
    mask[4, 4] = mask[12, 14] = True
    fields = receptive_field(net, image, Concept.mask("a", mask), ["data"])
    union = _square(7, (4, 4), (17, 19)) | _square(7, (12, 14), (17, 19))
    assert torch.equal(fields["data"], union)
    e = extent(fields["data"])
    assert (e.height, e.width, e.box) == (15, 17, (1, 1, 16, 18))


# Published receptive fields of VGG16's encoder (conv 3x3/1, pool 2x2/2).
VGG16 = {"conv1_1": 3, "conv1_2": 5, "pool1": 6, "conv2_2": 14, "pool2": 16, "conv3_3": 40,
         "pool3": 44, "conv4_3": 92, "pool4": 100, "conv5_3": 196, "pool5": 212}


def _simulated_field(ops: list[str], offset: int, length: int = 4096) -> int:
    """Input extent of one unit after ``ops``, by propagating an indicator vector back.

    1-D, ops in forward order: 'conv' (3 wide, padding 1), 'pool' (2/2), 'unpool' (2/2);
    the unit sits ``offset`` after the middle of the last layer.
    """
    sizes = [length]
    for op in ops:
        sizes.append(sizes[-1] // 2 if op == "pool" else sizes[-1] * 2 if op == "unpool"
                     else sizes[-1])
    dep = torch.zeros(sizes[-1], dtype=torch.bool)
    dep[sizes[-1] // 2 + offset] = True
    for op, n_in in zip(reversed(ops), reversed(sizes[:-1]), strict=True):
        if op == "conv":
            dep = dep | torch.roll(dep, 1) | torch.roll(dep, -1)
        elif op == "pool":  # coarse i reads fine 2i, 2i+1
            dep = dep.repeat_interleave(2)
        else:  # fine q was scattered from coarse q // 2
            dep = torch.zeros(n_in, dtype=torch.bool).index_put_(
                (torch.arange(len(dep))[dep] // 2,), torch.tensor(True))
    idx = torch.nonzero(dep).flatten()
    return int(idx[-1] - idx[0] + 1)


def _segnet_ops(upto: str) -> list[str]:
    """The SegNet of SPEC §2 as 1-D ops, written out by hand."""
    ops, names = [], []
    for block, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        for i in range(1, n + 1):
            ops.append("conv")
            names.append(f"conv{block}_{i}")
        ops.append("pool")
        names.append(f"pool{block}")
    for block, n in ((5, 3), (4, 3), (3, 3), (2, 2), (1, 2)):
        ops.append("unpool")
        names.append(f"upsample{block}")
        for i in range(n, 0, -1):
            ops.append("conv")
            names.append(f"conv{block}_{i}_D")
    return ops[: names.index(upto) + 1]


def test_segnet_theoretical_fields():
    model = segscope.SegNet(width=0.0625)
    for layer, size in VGG16.items():
        assert theoretical_receptive_field(model, layer)[0] == size, layer
    assert theoretical_receptive_field(model, "pool5") == (212, 32)
    assert theoretical_receptive_field(model, "upsample5") == (212, 16)
    assert theoretical_receptive_field(model, "conv1_1_D") == (404, 1)
    for layer in ("conv5_3_D", "conv4_3_D", "conv4_1_D", "conv3_1_D", "conv2_1_D",
                  "conv1_1_D"):
        ops = _segnet_ops(layer)
        period = 2 ** ops.count("pool")
        simulated = max(_simulated_field(ops, p) for p in range(period))
        assert theoretical_receptive_field(model, layer)[0] == simulated, layer


def test_segnet_measured_field_within_theory(tiny_segnet):
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))
    fields = receptive_field(tiny_segnet, image, Concept.pixel("road", 30, 50))
    assert set(fields) == set(tiny_segnet.layer_names)
    assert fields["conv1_1_D"].sum() == 1
    # Measured in each decoder layer's own units, from that layer to the output.
    for layer in ("conv1_2_D", "upsample1", "conv2_1_D", "conv2_2_D", "upsample2",
                  "conv3_1_D", "conv4_1_D"):
        size, _ = theoretical_receptive_field(tiny_segnet, "conv1_1_D", at=layer)
        e = extent(fields[layer])
        assert 0 < e.height <= size and 0 < e.width <= size, layer
    assert extent(fields["conv1_2_D"])[:2] == (3, 3)
    data = extent(fields["data"], (64, 96))
    assert data.input_height == data.height  # 'data' is full resolution
    pool3 = extent(fields["pool3"], (64, 96))
    assert pool3.input_height == 8 * pool3.height


def test_bad_input(tiny_segnet):
    with pytest.raises(SegscopeError, match="unknown layer"):
        theoretical_receptive_field(tiny_segnet, "conv0")
    with pytest.raises(SegscopeError, match="comes before"):
        theoretical_receptive_field(tiny_segnet, "conv1_1", at="pool2")
    with pytest.raises(SegscopeError, match="unknown layer"):
        receptive_field(tiny_segnet, torch.rand(3, 32, 32), Concept.pixel("road", 1, 1),
                        ["conv1_1", "bogus"])
    assert extent(torch.zeros(4, 4, dtype=torch.bool)) == (0, 0, 0.0, 0.0, (0, 0, 0, 0))
