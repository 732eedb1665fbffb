"""LRP for a batch of images (forward_batch, lrp_batch) against lrp one image at a time,
and what the engine keeps per model (weight variants) or overwrites (in-place ReLU,
released states, float32 partial sums)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segscope.errors import SegscopeError
from segscope.explain import (
    Concept,
    forward_batch,
    forward_state,
    lrp,
    lrp_batch,
    propagate,
)
from segscope.explain.graph import build_graph
from segscope.explain.sparse import map_totals


def _images(n: int, h: int = 40, w: int = 56, seed: int = 0) -> torch.Tensor:
    # random pixels: no max-pool window is flat, so the batched forward pass picks the
    # winners the single one does (a flat window's winner is down to rounding)
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    # a batched convolution may round differently from a single one
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-30)


@pytest.mark.parametrize("rule", ["alpha1beta0", "conv1_1=zbox,conv=alpha2beta1,"
                                                 "conv1_1_D=epsilon:0.01"])
def test_lrp_batch_equals_lrp_one_by_one(tiny_segnet, rule):
    images = _images(3)
    label = torch.randint(0, 3, (40, 56), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(40, 56)
    mask[10:30, 5:50] = 1
    concepts = [Concept.pixel("road", 20, 30, assign="score"),
                Concept.mask("markings", mask),
                Concept.from_prediction("background", "fp", label)]
    batch = lrp_batch(tiny_segnet, images, concepts, rule=rule, keep=["conv2_1", "pool1"])
    totals = lrp_batch(tiny_segnet, list(images), concepts, rule=rule, keep="totals")
    for b, c in enumerate(concepts):
        one = lrp(tiny_segnet, images[b], c, rule=rule, keep=["conv2_1", "pool1"])
        e = batch[b]
        assert e.description == one.description and e.rule == one.rule
        assert e.output_total == pytest.approx(one.output_total, rel=1e-5)
        _close(e.pixels, one.pixels)
        for name in ("conv2_1", "pool1"):
            _close(e.layers[name], one.layers[name])
            _close(totals[b].totals[name], one.layers[name].double().sum((1, 2)))
        assert e.absorbed.keys() == one.absorbed.keys()
        for name, v in one.absorbed.items():
            assert e.absorbed[name] == pytest.approx(v, rel=1e-4, abs=1e-5 * abs(v) + 1e-6)
        assert e.state is None  # the batch's state serves no single image


def test_batch_state_scores_and_bad_input(tiny_segnet):
    images = _images(2, 32, 48)
    state = forward_batch(tiny_segnet, images)
    assert state.batched and state.images == 2 and state.scores.shape == (2, 3, 32, 48)
    with torch.no_grad():
        _close(state.scores, tiny_segnet(images))
    with pytest.raises(SegscopeError, match="one size"):
        forward_batch(tiny_segnet, [images[0], torch.rand(3, 32, 40)])
    with pytest.raises(SegscopeError, match=r"\(N,3,H,W\)"):
        forward_batch(tiny_segnet, images[0])
    with pytest.raises(SegscopeError, match="no images"):
        forward_batch(tiny_segnet, [])
    with pytest.raises(SegscopeError, match="NaN"):
        forward_batch(tiny_segnet, [images[0], torch.full((3, 32, 48), float("nan"))])
    c = Concept.pixel("road", 5, 5)
    with pytest.raises(SegscopeError, match="one concept per image"):
        lrp_batch(tiny_segnet, None, [c], state=state)
    with pytest.raises(SegscopeError, match="lrp_batch"):
        lrp(tiny_segnet, images[0], c, state=state)
    with pytest.raises(SegscopeError, match="lrp_batch"):
        propagate(tiny_segnet, images[0], "conv1_1", torch.ones(8, 32, 48), state=state)
    with pytest.raises(SegscopeError, match="forward_batch"):
        lrp_batch(tiny_segnet, None, [c], state=forward_state(tiny_segnet, images[0]))
    # a state explained with release=True has dropped its layers' inputs on the way down
    lrp_batch(tiny_segnet, None, [c, c], state=state, release=True)
    assert state.released and all(getattr(k, "x", None) is None for k in state.kinds)
    with pytest.raises(SegscopeError, match="release"):
        lrp_batch(tiny_segnet, None, [c, c], state=state)


def test_weight_variants_are_kept_per_model_and_renewed_when_changed(tiny_segnet):
    img = _images(1)[0]
    c = Concept.mask("road", torch.ones(40, 56))
    graph = build_graph(tiny_segnet)
    first = lrp(tiny_segnet, img, c, state=forward_state(tiny_segnet, img, graph=graph))
    node = next(n for n in graph.nodes if n.kind == "conv" and n.name == "conv2_1")
    cached = {k: v[2] for k, v in node.cache.items()}
    assert cached and any(torch.equal(v, node.params["weight"].clamp(min=0))
                          for v in cached.values())
    again = lrp(tiny_segnet, img, c, state=forward_state(tiny_segnet, img, graph=graph))
    assert all(node.cache[k][2] is v for k, v in cached.items())  # reused, not redone
    torch.testing.assert_close(again.pixels, first.pixels, rtol=0, atol=0)
    # the graph's weights changed in place: the cached variants are computed anew, and
    # the result is that of a fresh graph with the same change
    fresh = build_graph(tiny_segnet)
    for g in (graph, fresh):
        with torch.no_grad():
            next(n for n in g.nodes if n.name == "conv2_1").params["weight"].mul_(-0.5)
    changed = lrp(tiny_segnet, img, c, state=forward_state(tiny_segnet, img, graph=graph))
    want = lrp(tiny_segnet, img, c, state=forward_state(tiny_segnet, img, graph=fresh))
    torch.testing.assert_close(changed.pixels, want.pixels, rtol=0, atol=0)
    assert not torch.allclose(changed.pixels, first.pixels)


class _Shared(nn.Module):
    """A convolution's output read by a ReLU and by an addition."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        z = self.conv(x)
        return self.head(torch.relu(z) + z)


def test_relu_in_place_only_where_nothing_else_reads_its_input():
    torch.manual_seed(0)
    model = _Shared().eval()
    images = _images(2, 9, 11) - 0.5  # negative pixels: the ReLU has work to do
    with torch.no_grad():
        want = model(images)
    state = forward_state(model, images[0])
    torch.testing.assert_close(state.scores, want[0], rtol=1e-6, atol=1e-6)
    relu = next(k for k in state.kinds if k.kind == "relu")
    assert not relu.overwrite  # the addition reads the convolution's output too
    torch.testing.assert_close(forward_batch(model, images).scores, want, rtol=1e-6,
                               atol=1e-6)
    c = [Concept.pixel(1, 4, 5, assign="score")] * 2
    for b, e in enumerate(lrp_batch(model, images, c, keep="all")):
        one = lrp(model, images[b], c[b], keep="all")
        _close(e.input, one.input)
        _close(e.layers["add"], one.layers["add"])


def test_map_totals_equal_float64_sums():
    g = torch.Generator().manual_seed(3)
    for shape in [(2, 5, 7, 13), (1, 16, 9, 8), (3, 1, 4, 3), (1, 3, 2, 1)]:
        x = torch.randn(shape, generator=g) + 0.1
        for t in (x, x.contiguous(memory_format=torch.channels_last),
                  x.contiguous(memory_format=torch.channels_last)[..., 1:, 1:], x.double()):
            want = t.double().sum((2, 3))
            got = map_totals(t)
            assert got.dtype == torch.float64 and got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    half = torch.randn(1, 4, 6, 10, generator=g).bfloat16()
    torch.testing.assert_close(map_totals(half), half.double().sum((2, 3)), rtol=1e-6,
                               atol=1e-6)
    torch.testing.assert_close(map_totals(torch.ones(2, 5)), torch.ones(2, 5).double())
