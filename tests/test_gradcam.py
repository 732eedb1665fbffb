"""Grad-CAM for segmentation (thesis §7.2) against hand-computed references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _reference import numpy_conv
from torch import nn

from segscope import SegscopeError
from segscope.explain import Concept, gradcam, gradcam_layers
from segscope.explain.cam import gradcam_maps


def _numpy_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), by formula."""

    def axis(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, ly = axis(a.shape[0], size[0])
    x0, x1, lx = axis(a.shape[1], size[1])
    top = a[y0][:, x0] * (1 - lx) + a[y0][:, x1] * lx
    bottom = a[y1][:, x0] * (1 - lx) + a[y1][:, x1] * lx
    return top * (1 - ly[:, None]) + bottom * ly[:, None]


class TwoLayer(nn.Module):
    """conv 3x3 -> ReLU (the Grad-CAM layer 'act') -> conv 3x3 -> 2 class scores."""

    def __init__(self, positive: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 2, 3, padding=1)
        with torch.no_grad():
            self.conv1.bias.uniform_(-0.2, 0.2)
            if positive:
                for conv in (self.conv1, self.conv2):
                    conv.weight.uniform_(0.1, 1.0)
                    conv.bias.uniform_(0.1, 0.5)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


@pytest.mark.parametrize("pixel", [(3, 4), (0, 7)])  # interior, and on the border
def test_one_pixel_gradcam_is_classic_gradcam_by_hand(pixel):
    net = TwoLayer().eval()
    image = torch.rand(3, 6, 8, generator=torch.Generator().manual_seed(1))
    y0, x0 = pixel
    c = 1
    a = np.maximum(numpy_conv(image.double().numpy(), net.conv1.weight.detach().double().numpy(),
                               net.conv1.bias.detach().double().numpy()), 0)
    w2 = net.conv2.weight.detach().double().numpy()
    # ∂y_c(y0,x0)/∂A_k(i,j) = W2[c,k,i-y0+1,j-x0+1] inside the 3x3 window and the image.
    grad = np.zeros_like(a)
    for i in range(max(y0 - 1, 0), min(y0 + 2, 6)):
        for j in range(max(x0 - 1, 0), min(x0 + 2, 8)):
            grad[:, i, j] = w2[c, :, i - y0 + 1, j - x0 + 1]
    alpha = grad.sum(axis=(1, 2)) / (6 * 8)  # eq 7.1, Z = h·w
    expected = np.maximum(np.einsum("k,kij->ij", alpha, a), 0)  # eq 7.2

    got, weights = gradcam(net, image, Concept.pixel(c, y0, x0), "act", return_weights=True)
    np.testing.assert_allclose(weights.numpy(), alpha, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert got.shape == (6, 8) and float(got.max()) > 0
    # The same layer given as a module.
    np.testing.assert_allclose(gradcam(net, image, Concept.pixel(c, y0, x0), net.act).numpy(),
                               expected, rtol=1e-5, atol=1e-7)


def test_mask_weights_are_the_sum_of_pixel_weights_eq_7_10(tiny_segnet):
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(2))
    pixels = [(3, 5), (20, 30), (21, 30), (31, 47)]
    mask = torch.zeros(32, 48, dtype=torch.bool)
    for y, x in pixels:
        mask[y, x] = True
    layers = ["conv3_2", "conv5_1_D"]
    total, _ = gradcam_maps(tiny_segnet, image, Concept.mask("road", mask, assign="one"), layers)
    singles = [gradcam_maps(tiny_segnet, image, Concept.pixel("road", y, x), layers)[0]
               for y, x in pixels]
    for layer in layers:
        summed = sum(single[layer].weights for single in singles)
        np.testing.assert_allclose(total[layer].weights.numpy(), summed.numpy(),
                                   rtol=1e-4, atol=1e-7)
        assert float(total[layer].weights.abs().max()) > 0
    # gradcam(..., return_weights=True) exposes the same α.
    _, alpha = gradcam(tiny_segnet, image, Concept.pixel("road", 3, 5), "conv3_2",
                       return_weights=True)
    torch.testing.assert_close(alpha, singles[0]["conv3_2"].weights)


def test_segnet_map_matches_a_reference_with_padding_and_upsampling(tiny_segnet):
    # 50x70 is padded to 64x96 inside SegNet; the layer conv5_1_D is 4x6.
    image = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(50, 70, dtype=torch.bool)
    mask[30:45, 10:60] = True
    concept = Concept.mask("road", mask)

    # Reference: plain hooks, a full backward of the masked score sum, numpy for the rest.
    store = {}
    module = tiny_segnet.layer("conv5_1_D")
    handle = module.register_forward_hook(lambda m, i, o: store.update(a=o))
    x = torch.nn.functional.pad(image[None], (0, 96 - 70, 0, 64 - 50), mode="replicate")
    out = tiny_segnet(x)
    store["a"].retain_grad()
    out[0, 1, :50, :70][mask].sum().backward()
    handle.remove()
    a = store["a"][0].detach().double().numpy()
    g = store["a"].grad[0].double().numpy()
    low = np.maximum(np.einsum("k,kij->ij", g.mean(axis=(1, 2)), a), 0)
    expected = _numpy_bilinear(low, (64, 96))[:50, :70]
    tiny_segnet.zero_grad()

    got = gradcam(tiny_segnet, image, concept, "conv5_1_D")
    assert got.shape == (50, 70)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert float(got.max()) > 0


def test_data_layer_and_pool_layers(tiny_segnet):
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(4))
    concept = Concept.pixel("background", 10, 20)
    # 'data' lives in the padded frame like every other layer: A is the padded input
    # (3,32,64) and Z = 32·64; the map is then cropped to the image.
    x = torch.nn.functional.pad(image[None], (0, 16, 0, 0), mode="replicate")[0]
    x.requires_grad_(True)
    tiny_segnet(x[None])[0, 0, 10, 20].backward()
    alpha = x.grad.mean(dim=(1, 2))
    expected = torch.relu(torch.einsum("k,kij->ij", alpha, x.detach()))[:, :48]
    torch.testing.assert_close(gradcam(tiny_segnet, image, concept, "data"), expected,
                               rtol=1e-4, atol=1e-6)
    for layer in ("pool2", "upsample3"):
        m = gradcam(tiny_segnet, image, concept, layer)
        assert m.shape == (32, 48) and torch.isfinite(m).all() and float(m.min()) >= 0


def test_gradcam_layers_is_one_forward_and_matches_single_calls(tiny_segnet):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    concept = Concept.pixel("road", 16, 16)
    calls = []
    handle = tiny_segnet.conv1_1.register_forward_hook(lambda *a: calls.append(1))
    maps = gradcam_layers(tiny_segnet, image, concept)
    handle.remove()
    assert len(calls) == 1
    assert list(maps) == tiny_segnet.layer_names
    for layer in ("conv2_2", "pool4", "conv3_1_D"):
        torch.testing.assert_close(maps[layer], gradcam(tiny_segnet, image, concept, layer))


def test_receptive_field_variant_equals_plain_when_no_gradient_is_zero():
    net = TwoLayer(positive=True).eval()
    image = torch.rand(3, 6, 8, generator=torch.Generator().manual_seed(6)) + 0.1
    concept = Concept.mask(0, torch.ones(6, 8))  # every output: every A_ij reaches one
    maps, g = gradcam_maps(net, image, concept, ["act"])
    assert bool((g.gradients["act"] != 0).all())
    plain = maps["act"].map
    rf = gradcam(net, image, concept, "act", receptive_field=True)
    assert float(plain.min()) > 0
    assert torch.equal(plain, rf)


def test_receptive_field_variant_zeroes_outside_the_field_on_segnet(tiny_segnet):
    image = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(7))
    concept = Concept.pixel("road", 20, 25)
    maps, g = gradcam_maps(tiny_segnet, image, concept, ["conv1_2_D"], receptive_field=True)
    inside = maps["conv1_2_D"].receptive[:40, :50]
    rf = maps["conv1_2_D"].map
    plain = gradcam(tiny_segnet, image, concept, "conv1_2_D")
    assert 0 < int(inside.sum()) <= 9  # conv1_1_D is 3x3: at most a 3x3 field
    assert float(rf[~inside].abs().max()) == 0
    assert float(plain[~inside].max()) > 0
    assert not torch.equal(plain, rf)
    # Inside the field, both variants weigh the same activations with the same α.
    torch.testing.assert_close(rf[inside], plain[inside])


def test_bad_input(tiny_segnet):
    image = torch.rand(3, 32, 32)
    cases = [
        (lambda: gradcam(tiny_segnet, image, Concept.pixel("road", 1, 1), "conv9_9"),
         "unknown layer"),
        (lambda: gradcam(tiny_segnet, image, Concept.tensor(torch.zeros(3, 32, 32)), "conv1_1"),
         "selects no"),
        (lambda: gradcam(tiny_segnet, image,
                         Concept.from_prediction("markings", "tp", torch.zeros(32, 32)),
                         "conv1_1"), "no true positives"),
        (lambda: gradcam(tiny_segnet, image[None], Concept.pixel("road", 1, 1), "conv1_1"),
         "must be \\(3,H,W\\)"),
        (lambda: gradcam(tiny_segnet, image, Concept.pixel("sky", 1, 1), "conv1_1"),
         "unknown class"),
        (lambda: gradcam(TwoLayer(), image, Concept.pixel(0, 1, 1), "nope"), "unknown layer"),
        (lambda: gradcam_layers(TwoLayer(), image, Concept.pixel(0, 1, 1)), "layer_names"),
    ]
    for call, message in cases:
        with pytest.raises(SegscopeError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(SegscopeError, match="selects no pixels"):
        Concept.mask("road", torch.zeros(32, 32))


def test_model_mode_is_restored(tiny_segnet):
    tiny_segnet.train()
    image = torch.rand(3, 32, 32)
    m1 = gradcam(tiny_segnet, image, Concept.pixel("road", 3, 3), "conv2_1")
    assert tiny_segnet.training
    tiny_segnet.eval()
    m2 = gradcam(tiny_segnet, image, Concept.pixel("road", 3, 3), "conv2_1")
    torch.testing.assert_close(m1, m2)  # explained in eval mode both times
