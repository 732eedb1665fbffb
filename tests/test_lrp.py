"""The LRP engine on SegNet and small generic models: conservation, folding, routing,
batching, feature separation and errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import segscope
from segscope.errors import SegscopeError
from segscope.explain import (
    Concept,
    forward_state,
    lrp,
    propagate,
    separate_features,
    sweep_options,
)
from segscope.explain.graph import build_graph, fold_bn
from segscope.explain.sweep import support_boxes


def _image(h: int = 40, w: int = 56, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def _zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.bias.zero_()
                m.running_mean.zero_()
    return model


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# -- conservation ------------------------------------------------------------------------
def test_conservation_without_biases(tiny_segnet):
    model = _zero_biases(tiny_segnet)
    img = _image()  # 40x56: padded to 64x64 inside SegNet
    mask = torch.zeros(40, 56, dtype=torch.bool)
    mask[5:30, 10:40] = True
    for concept in (Concept.pixel("road", 12, 33), Concept.mask("markings", mask)):
        e = lrp(model, img, concept, keep="all")
        assert abs(e.output_total) > 1e-3
        assert _rel(e.input_total, e.output_total) < 1e-5
        assert all(abs(v) < 1e-5 * abs(e.output_total) for v in e.absorbed.values())
        assert e.dropped == 0.0
        # every conv layer conserves too: totals agree at every kept layer
        for name in ("conv1_1", "pool1", "conv3_2", "pool5", "upsample5", "conv2_1_D"):
            total = float(e.layers[name].double().sum())
            assert _rel(total, e.output_total) < 1e-5, name


def test_conservation_with_biases_is_accounted_for(tiny_segnet):
    img = _image()
    e = lrp(tiny_segnet, img, Concept.pixel("road", 20, 20))
    assert len(e.absorbed) == 26  # one entry per conv layer
    lost = sum(e.absorbed.values())
    assert abs(lost) > 1e-3 * abs(e.output_total)  # biases do absorb something here
    assert _rel(e.input_total + lost + e.dropped, e.output_total) < 1e-5


def test_relevance_on_padding_returns_to_the_pixels_it_copies(tiny_segnet):
    # 40x56 is padded to 64x64 by edge replication. The same explanation of the padded
    # image itself (a multiple of 32: no padding) has relevance on the 24 copied rows and
    # 8 copied columns; folded by hand onto the last row/column, it is ours.
    img = _image(40, 56)
    padded = torch.nn.functional.pad(img[None], (0, 8, 0, 24), mode="replicate")[0]
    for rule in ({"first": "zbox"}, "alpha1beta0", "flat"):
        e = lrp(tiny_segnet, img, Concept.pixel("road", 38, 54), rule=rule)
        ref = lrp(tiny_segnet, padded, Concept.pixel("road", 38, 54), rule=rule).input.double()
        assert float(ref[:, 40:, :].abs().sum() + ref[:, :, 56:].abs().sum()) > 0
        folded = ref[:, :40, :56].clone()
        folded[:, 39, :] += ref[:, 40:, :56].sum(dim=1)
        folded[:, :, 55] += ref[:, :40, 56:].sum(dim=2)
        folded[:, 39, 55] += ref[:, 40:, 56:].sum(dim=(1, 2))
        assert e.input.shape == (3, 40, 56)
        torch.testing.assert_close(e.input.double(), folded, rtol=1e-4, atol=1e-7)
        assert e.dropped == 0.0
    # z^B at the pixels, α1β0 above: conserved, padding included
    e = lrp(tiny_segnet, img, Concept.pixel("road", 38, 54), rule={"first": "zbox"})
    assert _rel(e.input_total + sum(e.absorbed.values()), e.output_total) < 1e-5


def test_absorbed_at_output_layer_is_the_bias_share(tiny_segnet):
    """Σ_j R_j b_j⁺ / z_j⁺ at conv1_1_D, recomputed from a hooked forward pass."""
    img = _image(32, 32)
    seen = {}
    hook = tiny_segnet.conv1_1_D.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    concept = Concept.mask("road", torch.ones(32, 32), assign="score")
    with torch.no_grad():
        scores = tiny_segnet(img[None])[0]
    hook.remove()
    conv = tiny_segnet.conv1_1_D
    with torch.no_grad():
        zp = nn.functional.conv2d(seen["x"], conv.weight.clamp(min=0),
                                  conv.bias.clamp(min=0), padding=1)[0]
        r = torch.zeros_like(scores)
        r[1] = scores[1]
        bp = conv.bias.clamp(min=0).view(-1, 1, 1)
        want = float((r * torch.where(zp != 0, bp / zp, 0)).double().sum())
    e = lrp(tiny_segnet, img, concept)
    assert e.absorbed["conv1_1_D"] == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert e.output_total == pytest.approx(float(scores[1].double().sum()), rel=1e-6)


# -- BatchNorm folding -------------------------------------------------------------------
def test_bn_folding_keeps_the_output(tiny_segnet):
    img = _image(45, 70)
    with torch.no_grad():
        want = tiny_segnet(img[None])[0]
    state = forward_state(tiny_segnet, img)
    assert state.scores.shape == want.shape
    assert (state.scores - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert not any(n.kind == "bn" for n in build_graph(tiny_segnet).nodes)


def test_fold_bn_formula():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    w, b = fold_bn(conv.weight, conv.bias, bn)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)),
                                   rtol=1e-5, atol=1e-5)
    sigma = torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(b, (conv.bias - bn.running_mean) * bn.weight / sigma + bn.bias)


# -- pooling -----------------------------------------------------------------------------
class _Pick(nn.Module):
    """Channel 0 of the image through a 1x1 conv, then max-pool (and optionally unpool)."""

    def __init__(self, unpool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2) if unpool else None

    def forward(self, x):
        y = self.conv(x)
        p, idx = self.pool(y)
        if self.unpool is None:
            return p
        return self.unpool(p, idx)


_X = torch.tensor([[1.0, 5.0, 2.0, 0.5],
                   [3.0, 4.0, 9.0, 1.0],
                   [7.0, 0.2, 0.3, 0.1],
                   [0.4, 0.6, 8.0, 6.0]])


def _pick_image() -> torch.Tensor:
    img = torch.zeros(3, 4, 4)
    img[0] = _X
    img[1:] = 0.5  # other channels carry no weight
    return img


def test_maxpool_routes_to_the_winner():
    r_out = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    e = lrp(_Pick(unpool=False).eval(), _pick_image(), Concept.tensor(r_out), keep=["conv"])
    want = torch.tensor([[0.0, 1.0, 0.0, 0.0],
                         [0.0, 0.0, 2.0, 0.0],
                         [3.0, 0.0, 0.0, 0.0],
                         [0.0, 0.0, 4.0, 0.0]])
    torch.testing.assert_close(e.layers["conv"][0], want)
    torch.testing.assert_close(e.input[0], want)
    assert float(e.input[1:].abs().sum()) == 0.0


def test_maxunpool_gathers_from_the_scattered_position():
    r_out = torch.arange(16, dtype=torch.float32).view(1, 4, 4) + 1
    e = lrp(_Pick(unpool=True).eval(), _pick_image(), Concept.tensor(r_out),
            keep=["pool", "conv"])
    # winners: 5.0 at (0,1), 9.0 at (1,2), 7.0 at (2,0), 8.0 at (3,2)
    torch.testing.assert_close(e.layers["pool"][0], torch.tensor([[2.0, 7.0], [9.0, 15.0]]))
    want = torch.zeros(4, 4)
    want[0, 1], want[1, 2], want[2, 0], want[3, 2] = 2.0, 7.0, 9.0, 15.0
    torch.testing.assert_close(e.input[0], want)
    assert e.output_total == pytest.approx(136.0)
    assert e.input_total == pytest.approx(33.0)  # the rest fell on zeros of the unpool


# -- batching ----------------------------------------------------------------------------
def test_batch_equals_one_by_one(tiny_segnet):
    img = _image(40, 56, seed=1)
    with torch.no_grad():
        pred = tiny_segnet(img[None])[0].argmax(0)
    label = pred.clone()
    label[:, :20] = (label[:, :20] + 1) % 3
    mask = torch.zeros(40, 56)
    mask[10:20, 10:30] = 1
    cls = int(pred[30, 40])
    concepts = [
        Concept.pixel("road", 3, 4),
        Concept.mask("background", mask, assign="prob"),
        Concept.from_prediction(cls, "tp", label),
        Concept.pixel("markings", 39, 55, assign="score"),
    ]
    keep = ["data", "conv1_2", "pool3", "conv1_1_D"]
    together = lrp(tiny_segnet, img, concepts, keep=keep, batch_size=3)
    for c, t in zip(concepts, together, strict=True):
        alone = lrp(tiny_segnet, img, c, keep=keep)
        torch.testing.assert_close(t.pixels, alone.pixels, rtol=1e-5, atol=1e-9)
        for name in keep:
            torch.testing.assert_close(t.layers[name], alone.layers[name], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(t.layers["conv1_1_D"], alone.initial)
        assert t.output_total == pytest.approx(alone.output_total)
        assert t.absorbed == pytest.approx(alone.absorbed, rel=1e-4, abs=1e-9)
    assert together[0].description == "road at pixel (3, 4)"


def test_keep_float16_and_keep_dir(tiny_segnet, tmp_path):
    img = _image(32, 32)
    c = Concept.pixel("road", 16, 16)
    full = lrp(tiny_segnet, img, c, keep="all")
    assert list(full.layers) == tiny_segnet.layer_names
    half = lrp(tiny_segnet, img, c, keep="all", dtype_keep=torch.float16, keep_dir=tmp_path)
    brain = lrp(tiny_segnet, img, c, keep=["conv1_1", "pool2", "conv3_1"],
                dtype_keep=torch.bfloat16)
    assert (tmp_path / "conv3_1.npy").is_file()
    on_disk = np.load(tmp_path / "conv3_1.npy")
    assert on_disk.dtype == np.float16 and on_disk.shape == (1, *full.layers["conv3_1"].shape)
    for name in ("conv1_1", "pool2", "conv3_1"):
        ref = full.layers[name]
        assert half.layers[name].dtype == torch.float16
        # float16: 11-bit mantissa, subnormals below 6.1e-5 (spacing 6e-8)
        err = (half.layers[name].float() - ref).abs()
        assert bool((err <= 1e-3 * ref.abs() + 6e-8).all()), name
        # bfloat16: 8-bit mantissa, float32's range
        err = (brain.layers[name].float() - ref).abs()
        assert bool((err <= 4e-3 * ref.abs() + 1e-30).all()), name
    np.testing.assert_array_equal(on_disk[0], half.layers["conv3_1"].numpy())


# -- feature separation ------------------------------------------------------------------
def test_separate_features_linearity(tiny_segnet):
    img = _image(40, 56, seed=2)
    e = lrp(tiny_segnet, img, Concept.pixel("road", 20, 30), keep=["conv2_1"])
    fs = separate_features(tiny_segnet, img, e, "conv2_1", batch_size=3)
    n = e.layers["conv2_1"].shape[0]
    assert fs.pixels.shape == (n, 40, 56) and fs.channels == list(range(n))
    whole = propagate(tiny_segnet, img, "conv2_1", e.layers["conv2_1"])
    scale = float(e.pixels.abs().max())
    assert (fs.pixels.sum(0) - whole.pixels[0]).abs().max() <= 1e-5 * scale
    assert (fs.pixels.sum(0) - e.pixels).abs().max() <= 1e-5 * scale
    # the one-channel shortcut equals the dense propagation of that channel alone
    only = torch.zeros_like(e.layers["conv2_1"])
    only[3] = e.layers["conv2_1"][3]
    single = propagate(tiny_segnet, img, "conv2_1", only)
    assert float(fs.pixels[3].abs().max()) > 0
    torch.testing.assert_close(fs.pixels[3], single.pixels[0], rtol=1e-5, atol=1e-6 * scale)
    torch.testing.assert_close(fs.totals, e.layers["conv2_1"].double().sum((1, 2)).float())


def test_separate_features_reuses_the_forward_pass(tiny_segnet):
    """Same model and image: the explanation's forward state (and its caches) serves the
    separation; its step counters move. Another image: a fresh state, they do not."""
    img = _image(32, 32)
    e = lrp(tiny_segnet, img, Concept.pixel("road", 3, 3), keep=["conv1_2"])
    before = dict(e.state.stats)
    assert before.get("conv boxed", 0) > 0
    fs = separate_features(tiny_segnet, img.clone(), e, "conv1_2", channels=[1])
    assert fs.pixels.shape == (1, 32, 32)
    reused = dict(e.state.stats)
    assert reused["conv boxed"] > before["conv boxed"]
    other = separate_features(tiny_segnet, img + 0.01, e, "conv1_2", channels=[1])
    assert e.state.stats == reused
    assert not torch.equal(other.pixels, fs.pixels)


def test_separate_features_without_kept_layer_and_at_a_pool(tiny_segnet):
    img = _image(32, 48, seed=3)
    e = lrp(tiny_segnet, img, Concept.pixel("markings", 5, 40), keep=["pool2"])
    bare = lrp(tiny_segnet, img, Concept.pixel("markings", 5, 40))
    a = separate_features(tiny_segnet, img, e, "pool2", channels=[0, 2, 5])
    b = separate_features(tiny_segnet, img, bare, "pool2", channels=[0, 2, 5])
    torch.testing.assert_close(a.pixels, b.pixels)
    full = separate_features(tiny_segnet, img, e, "pool2")
    torch.testing.assert_close(full.pixels[[0, 2, 5]], a.pixels)
    scale = float(e.pixels.abs().max())
    assert (full.pixels.sum(0) - e.pixels).abs().max() <= 1e-5 * scale
    with pytest.raises(SegscopeError, match="out of range"):
        separate_features(tiny_segnet, img, e, "pool2", channels=[99])


# -- generic models ----------------------------------------------------------------------
class TinyUNet(nn.Module):
    """Two levels, a concatenation skip and a residual addition."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.mid = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.up = nn.Conv2d(4, 4, 3, padding=1)
        self.dec = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        e = self.enc(x)
        p, idx = self.pool(e)
        m = self.mid(p)
        u = torch.relu(self.up(self.unpool(m, idx)))
        d = self.dec(torch.cat([u, e], dim=1))
        return self.head(d + e)


def _unet() -> TinyUNet:
    torch.manual_seed(0)
    model = TinyUNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_unet_with_skip_conserves_without_biases():
    model = _zero_biases(_unet())
    img = _image(16, 20)
    with torch.no_grad():
        want = model(img[None])[0]
    state = forward_state(model, img)
    torch.testing.assert_close(state.scores, want, rtol=1e-5, atol=1e-6)
    e = lrp(model, img, Concept.mask(1, torch.ones(16, 20), assign="one"), keep="all",
            state=state)
    assert _rel(e.input_total, e.output_total) < 1e-5
    assert {"enc.0", "pool", "cat", "add", "head"} <= set(e.layers)
    # the concatenation splits by channel: the skip gets the relevance of its 4 channels
    cat = e.layers["cat"]
    assert cat.shape[0] == 8 and float(cat[4:].abs().sum()) > 0


def test_unet_with_biases_accounts_for_everything():
    model = _unet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.uniform_(-0.1, 0.1)
    img = _image(16, 20, seed=4)
    e = lrp(model, img, Concept.pixel(0, 8, 9, assign="score"))
    assert _rel(e.input_total + sum(e.absorbed.values()), e.output_total) < 1e-5


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return self.gate(self.conv(x))


def test_unsupported_module_is_named():
    with pytest.raises(SegscopeError, match=r"unsupported module 'gate' \(Sigmoid\)"):
        lrp(_Attn().eval(), _image(8, 8), Concept.pixel(0, 1, 1))
    seg = segscope.SegNet(3, width=1 / 32).eval()
    seg.conv2_1.relu = nn.Tanh()
    with pytest.raises(SegscopeError, match=r"'conv2_1.relu' \(Tanh\)"):
        lrp(seg, _image(32, 32), Concept.pixel(0, 1, 1))


# -- input errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "match"),
    [
        (torch.rand(1, 3, 32, 32), r"\(3,H,W\), got \(1, 3, 32, 32\)"),
        (torch.rand(4, 32, 32), r"got \(4, 32, 32\)"),
        (torch.zeros(3, 32, 32, dtype=torch.uint8), "float"),
    ],
)
def test_bad_image(tiny_segnet, image, match):
    with pytest.raises(SegscopeError, match=match):
        lrp(tiny_segnet, image, Concept.pixel(0, 1, 1))


def test_bad_requests(tiny_segnet):
    img = _image(32, 32)
    with pytest.raises(SegscopeError, match=r"unknown layer 'conv9_9' \(layers: data, conv1_1"):
        lrp(tiny_segnet, img, Concept.pixel(0, 1, 1), keep=["conv9_9"])
    with pytest.raises(SegscopeError, match="outside"):
        lrp(tiny_segnet, img, Concept.pixel(0, 40, 1))
    with pytest.raises(SegscopeError, match="no concept"):
        lrp(tiny_segnet, img, [])
    with pytest.raises(SegscopeError, match="selects no pixels"):
        lrp(tiny_segnet, img, Concept.mask(0, torch.zeros(32, 32)))


# -- support-restricted sweep -------------------------------------------------------------
def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-300))


def _concepts_for(model, img):
    with torch.no_grad():
        pred = model(img[None])[0].argmax(0)
    label = pred.clone()
    label[:, :30] = (label[:, :30] + 1) % 3
    mask = torch.zeros(img.shape[-2:])
    mask[50:58, 70:90] = 1  # a small region near the bottom-right corner
    return [
        Concept.pixel("road", 3, 4),
        Concept.pixel("markings", 40, 60, assign="score"),
        Concept.mask("background", mask, assign="prob"),
        Concept.from_prediction(int(pred[30, 40]), "tp", label),
    ]


@pytest.mark.parametrize("rule", ["alpha1beta0", "alpha2beta1", "epsilon:0.01",
                                  {"first": "zbox", "conv1_2": "flat", "conv2_2": "wsquare",
                                   "conv3_1_D": "gamma:0.25", "default": "alpha1beta0"}])
@pytest.mark.parametrize("full_share", [0.5, 2.0])
def test_restricted_sweep_equals_dense(tiny_segnet, rule, full_share):
    """Boxed denominators and transposed convs give the dense sweep's numbers.

    The dense reference switches the support boxes off (``sweep_options(boxed=False)``:
    every layer on its whole map); ``full_share=2`` forces boxed denominators even where a
    box covers most of a map.
    """
    img = _image(60, 100, seed=4)
    concepts = _concepts_for(tiny_segnet, img)
    with sweep_options(full_share=full_share):
        fast = [lrp(tiny_segnet, img, c, rule=rule, keep="all") for c in concepts]
        together = lrp(tiny_segnet, img, concepts[:2], rule=rule)  # union box of two pixels
    # the pixel concepts really take the restricted path
    assert fast[0].state.stats.get("conv boxed", 0) > 0
    boxed = [b for b in fast[0].state.denominator_boxes().values() if b is not None]
    if full_share > 1:
        assert boxed
    model64 = copy.deepcopy(tiny_segnet).double()
    with sweep_options(boxed=False):
        for c, f, t in zip(concepts, fast, together + [None, None], strict=True):
            d = lrp(tiny_segnet, img, c, rule=rule, keep="all")
            assert not d.state.stats  # nothing ran on a box
            # "the same up to float rounding": 1e-6, or within the dense float32 sweep's
            # own rounding error (vs float64) where a rule amplifies it (ε: 1/(z + ε))
            d64 = lrp(model64, img.double(), c, rule=rule, keep="all")
            scale = float(d.pixels.abs().max())
            assert scale > 0
            tol_input = max(1e-6, 2 * _rel_l2(d.input, d64.input))
            assert _rel_l2(f.input, d.input) < tol_input
            torch.testing.assert_close(f.input, d.input, rtol=1e-5, atol=1e-6 * scale)
            for name in tiny_segnet.layer_names:
                ref = d.layers[name]
                tol = max(1e-6, 2 * _rel_l2(ref, d64.layers[name].float()))
                assert _rel_l2(f.layers[name], ref) < tol, name
                torch.testing.assert_close(f.layers[name], ref, rtol=1e-5,
                                           atol=1e-5 * float(ref.abs().max()) + 1e-30)
            assert f.absorbed == pytest.approx(d.absorbed, rel=1e-5,
                                               abs=1e-6 * abs(d.output_total))
            assert f.dropped == pytest.approx(d.dropped, rel=1e-5,
                                              abs=1e-7 * abs(d.output_total))
            if t is not None:
                assert _rel_l2(t.input, d.input) < tol_input


def test_restricted_separate_features_equals_dense(tiny_segnet):
    """Feature separation on boxes (a wide image, so that the boxes at conv1_x are smaller
    than the maps: the boxed pool and conv steps with their shared buffers run)."""
    img = _image(40, 448, seed=5)
    e = lrp(tiny_segnet, img, Concept.pixel("road", 5, 10), keep=["conv2_1"])
    before = e.state.stats.get("maxpool boxed", 0)
    fast = separate_features(tiny_segnet, img, e, "conv2_1", batch_size=5)
    assert e.state.stats["maxpool boxed"] > before  # pool1 ran on its box
    with sweep_options(boxed=False):
        dense = separate_features(tiny_segnet, img, e, "conv2_1", batch_size=5)
    assert _rel_l2(fast.pixels, dense.pixels) < 1e-6
    scale = float(dense.pixels.abs().max())
    torch.testing.assert_close(fast.pixels, dense.pixels, rtol=1e-5, atol=1e-6 * scale)
    assert (fast.pixels[:, :, 300:] == 0).all()  # beyond the pixel's reach


def test_support_boxes_follow_the_geometry(tiny_segnet):
    """A pixel's box grows by one per 3x3 conv and maps through pool/unpool by 2."""
    img = _image(64, 96)
    state = forward_state(tiny_segnet, img)
    g = state.graph
    start = torch.zeros(1, *state.shapes[g.output][1:])
    start[0, 1, 40, 50] = 1.0
    boxes = support_boxes(state, {g.output: start})
    assert boxes[g.layers["conv1_1_D"]] == (40, 41, 50, 51)
    assert boxes[g.layers["conv1_2_D"]] == (39, 42, 49, 52)  # input of conv1_1_D
    assert boxes[g.layers["upsample1"]] == (38, 43, 48, 53)  # input of conv1_2_D
    assert boxes[g.layers["conv2_1_D"]] == (19, 22, 24, 27)  # pooled cells of 38:43
    # the encoder's pool1 input: the cells of pool1's box, 2x2 each
    b = boxes[g.layers["pool1"]]
    assert boxes[g.layers["conv1_2"]] == (2 * b[0], 2 * b[1], 2 * b[2], 2 * b[3])


def test_separate_features_in_bfloat16(tiny_segnet):
    """The bfloat16 sweep: float32 maps back, within bfloat16's rounding of float32's."""
    img = _image(40, 56, seed=6)
    e = lrp(tiny_segnet, img, Concept.pixel("road", 20, 30), keep=["conv2_1"])
    ref = separate_features(tiny_segnet, img, e, "conv2_1", batch_size=4)
    bf = separate_features(tiny_segnet, img, e, "conv2_1", batch_size=4, dtype=torch.bfloat16)
    assert bf.pixels.dtype == torch.float32
    err = _rel_l2(bf.pixels, ref.pixels)
    assert 0 < err < 3e-2  # 8-bit mantissa (2^-9 = 2e-3 per rounding), a few layers
    # the maps still sum to the explanation's pixels, to bfloat16 precision
    assert _rel_l2(bf.pixels.sum(0), e.pixels) < 3e-2
    with pytest.raises(SegscopeError, match="dtype must be a floating-point"):
        separate_features(tiny_segnet, img, e, "conv2_1", dtype=torch.int64)


def test_cached_denominators_grow_with_later_concepts(tiny_segnet):
    """One forward state, concepts in different places: the boxed denominators are reused
    where they cover, recomputed on the union where not, and stay exact."""
    img = _image(40, 448, seed=7)
    state = forward_state(tiny_segnet, img)
    with sweep_options(full_share=2.0):  # boxes, never the whole map
        a = lrp(tiny_segnet, img, Concept.pixel("road", 5, 10), state=state)
        first = state.denominator_boxes()
        again = lrp(tiny_segnet, img, Concept.pixel("markings", 5, 10), state=state)
        assert state.denominator_boxes() == first  # same box: reused
        b = lrp(tiny_segnet, img, Concept.pixel("markings", 30, 400), state=state)
    now = state.denominator_boxes()
    grown = [k for k, box in now.items() if box != first.get(k)]
    assert grown and all(_inside_box(first[k], now[k]) for k in grown
                         if first.get(k) is not None)
    with sweep_options(boxed=False):
        for got, c in ((a, Concept.pixel("road", 5, 10)),
                       (again, Concept.pixel("markings", 5, 10)),
                       (b, Concept.pixel("markings", 30, 400))):
            ref = lrp(tiny_segnet, img, c)
            assert _rel_l2(got.input, ref.input) < 1e-6


def _inside_box(a, b) -> bool:
    return b[0] <= a[0] and a[1] <= b[1] and b[2] <= a[2] and a[3] <= b[3]
