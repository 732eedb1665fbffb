"""The LRP API around the engine: per-channel totals of every layer, the rule
specification parsed in one place, one way in through attribute(), and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segscope.errors import SegscopeError
from segscope.explain import (
    METHODS,
    Attribution,
    Concept,
    RuleSpec,
    attribute,
    forward_state,
    lrp,
    parse_rules,
    separate_features,
)
from segscope.explain.rules import AlphaBeta, Epsilon, Proportional, ZBox


def _image(h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


# -- keep="totals" -------------------------------------------------------------------------
def test_totals_of_every_layer_equal_the_kept_maps_reduced(tiny_segnet):
    img = _image(40, 56, seed=1)
    mask = torch.zeros(40, 56)
    mask[5:15, 20:40] = 1
    concepts = [Concept.pixel("road", 20, 30), Concept.mask("markings", mask),
                Concept.pixel("background", 39, 0, assign="score")]
    full = lrp(tiny_segnet, img, concepts, keep="all")
    sums = lrp(tiny_segnet, img, concepts, keep="totals", batch_size=2)
    for f, t in zip(full, sums, strict=True):
        assert t.layers == {}  # no maps kept
        assert list(t.totals) == tiny_segnet.layer_names  # all 37 layers
        for name in tiny_segnet.layer_names:
            want = f.layers[name].double().flatten(1).sum(1)
            assert t.totals[name].shape == want.shape
            torch.testing.assert_close(t.totals[name], want, rtol=1e-5,
                                       atol=1e-7 * float(want.abs().max()) + 1e-30)
            torch.testing.assert_close(t.layer_totals(name), f.layer_totals(name),
                                       rtol=1e-5, atol=1e-6 * abs(f.output_total))
            torch.testing.assert_close(t.feature_values(name), f.feature_values(name),
                                       rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(t.input, f.input)
        # the output layer's totals are the initial relevance per class
        torch.testing.assert_close(t.totals["conv1_1_D"],
                                   f.initial.double().flatten(1).sum(1), rtol=1e-6, atol=0)
        with pytest.raises(SegscopeError, match="not kept"):
            t.layer_sum("conv2_1")
    # a batch of concepts equals one by one
    for c, t in zip(concepts, sums, strict=True):
        alone = lrp(tiny_segnet, img, c, keep="totals")
        for name in tiny_segnet.layer_names:
            torch.testing.assert_close(t.totals[name], alone.totals[name], rtol=1e-5,
                                       atol=1e-7 * abs(alone.output_total))


# -- the rule specification ------------------------------------------------------------------
def test_rule_specs_in_every_form_parse_to_the_same():
    text = "conv1_1=zbox, conv=alpha1beta0,default=epsilon:0.01"
    want = RuleSpec((("conv1_1", ZBox()), ("conv", AlphaBeta()), ("default", Epsilon(0.01))))
    assert parse_rules(text) == want
    assert parse_rules({"conv1_1": "zbox", "conv": "alpha1beta0",
                        "default": "epsilon:0.01"}) == want
    assert parse_rules([("conv1_1", ZBox()), ("conv", "alpha1beta0"),
                        ("default", Epsilon(0.01))]) == want
    assert parse_rules(want) is want
    assert parse_rules(want.text) == want  # the text form goes back
    assert parse_rules("epsilon:0.01").single == Epsilon(0.01)
    assert parse_rules(Epsilon(0.01)).text == "epsilon:0.01"


@pytest.mark.parametrize(("spec", "part"), [
    ("conv1_1=zbx,default=alpha1beta0", "conv1_1=zbx"),
    ("conv1_1=zbox,alpha2beta1", "'alpha2beta1'"),
    ("conv1_1=zbox,conv1_1=flat", "twice for 'conv1_1'"),
    ("=zbox", "empty layer name"),
    ({"default": "gamma:x"}, "bad number 'x'"),
    (3, "got int"),
])
def test_bad_rule_specs_name_the_bad_part(spec, part):
    with pytest.raises(SegscopeError) as info:
        parse_rules(spec)
    assert part in str(info.value) and "\n" not in str(info.value)


def test_every_entry_point_takes_the_per_layer_text(tiny_segnet):
    img = _image(seed=2)
    c = Concept.pixel("road", 10, 20)
    text = "conv1_1=zbox,conv2_1=epsilon:0.01,default=alpha2beta1"
    as_dict = {"conv1_1": "zbox", "conv2_1": "epsilon:0.01", "default": "alpha2beta1"}
    ref = lrp(tiny_segnet, img, c, rule=as_dict, keep=["conv2_2"])
    e = lrp(tiny_segnet, img, c, rule=text, keep=["conv2_2"])
    torch.testing.assert_close(e.input, ref.input, rtol=0, atol=0)
    assert e.rule == "conv1_1=zbox, conv2_1=epsilon:0.01, default=alpha2beta1"
    plain = lrp(tiny_segnet, img, c, rule="alpha2beta1")
    assert not torch.allclose(plain.input, e.input)
    st = forward_state(tiny_segnet, img, text)
    torch.testing.assert_close(lrp(tiny_segnet, img, c, state=st).input, ref.input)
    att = attribute("lrp", tiny_segnet, img, c, rule=text)
    torch.testing.assert_close(att.input, ref.input, rtol=0, atol=0)
    # separate_features follows the explanation's rule, also without its state
    fs = separate_features(tiny_segnet, img, e, "conv2_2", channels=[0, 1])
    e.state = None
    again = separate_features(tiny_segnet, img, e, "conv2_2", channels=[0, 1])
    torch.testing.assert_close(again.pixels, fs.pixels)
    # kind keys reach the additions too; a conv rule on an addition is refused
    assert parse_rules("add=proportional").entries == (("add", Proportional()),)
    with pytest.raises(SegscopeError, match="does not apply to 'pool1'|not a conv"):
        lrp(tiny_segnet, img, c, rule="pool1=zbox")


# -- one way in ---------------------------------------------------------------------------
def test_attribute_reaches_lrp_with_the_common_result(tiny_segnet):
    img = _image(seed=3)
    c = Concept.pixel("markings", 12, 30)
    e = lrp(tiny_segnet, img, c, rule="epsilon:0.01")
    att = attribute("lrp", tiny_segnet, img, c, rule="epsilon:0.01")
    assert isinstance(att, Attribution) and att.method == "lrp" and "lrp" in METHODS
    torch.testing.assert_close(att.pixels, e.pixels, rtol=0, atol=0)
    assert att.pixels.shape == (32, 48) and att.input.shape == (3, 32, 48)
    assert att.concept == e.description == "markings at pixel (12, 30)"
    assert att.extras["output_total"] == e.output_total
    assert att.extras["absorbed"] == pytest.approx(e.absorbed)
    assert att.extras["explanation"].rule == "epsilon:0.01"
    for method in METHODS:  # one result type for every method
        a = attribute(method, tiny_segnet, img, c, steps=1)
        assert isinstance(a, Attribution) and a.method == method
        assert a.pixels.shape == (32, 48)
        assert a.input is None or a.input.shape == (3, 32, 48)


# -- bad input: one line, never NaN maps ---------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_image_is_refused(tiny_segnet, bad):
    img = _image()
    img[1, 3, 4] = bad
    c = Concept.pixel("road", 1, 1)
    for call in (lambda: lrp(tiny_segnet, img, c),
                 lambda: attribute("gradcam", tiny_segnet, img, c),
                 lambda: attribute("sensitivity", tiny_segnet, img, c)):
        with pytest.raises(SegscopeError, match="NaN or infinite") as info:
            call()
        assert "\n" not in str(info.value)


def test_model_with_nan_weights_is_refused(tiny_segnet):
    with torch.no_grad():
        tiny_segnet.conv3_1.conv.weight[0, 0, 0, 0] = float("nan")
    c = Concept.pixel("road", 1, 1)
    for method in ("lrp", "gradcam", "guided"):
        with pytest.raises(SegscopeError, match="scores are not finite"):
            attribute(method, tiny_segnet, _image(), c)


def test_bad_channels_masks_and_pixels(tiny_segnet):
    img = _image()
    e = lrp(tiny_segnet, img, Concept.pixel("road", 3, 3), keep=["conv1_2"])
    for channels, match in (([0.5], "whole numbers, got 0.5"), (["1"], "whole numbers"),
                            ([True], "whole numbers"), ([-1], "out of range")):
        with pytest.raises(SegscopeError, match=match):
            separate_features(tiny_segnet, img, e, "conv1_2", channels=channels)
    ok = separate_features(tiny_segnet, img, e, "conv1_2", channels=np.array([1, 2]))
    assert ok.channels == [1, 2]
    nan_mask = np.full((32, 48), np.nan)
    with pytest.raises(SegscopeError, match="NaN"):
        Concept.mask("road", nan_mask)
    part = np.ones((32, 48))
    part[0, 0] = np.nan
    with pytest.raises(SegscopeError, match="NaN"):
        Concept.mask("road", part)
    with pytest.raises(SegscopeError) as info:
        Concept.pixel("road", "10", 10)
    assert "must be integers" in str(info.value) and "'10'" in str(info.value)
    with pytest.raises(SegscopeError, match="must be integers"):
        Concept.pixel("road", 2.5, 1)
    assert Concept.pixel("road", 2.0, np.int64(3)).x == 3
    label = np.zeros((32, 48))
    label[3, 3] = np.nan
    with pytest.raises(SegscopeError, match="NaN"):
        Concept.from_prediction("road", "tp", label)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return torch.relu(self.a(x)) + self.b(x)


def test_the_rule_of_an_addition_is_a_rule_object():
    torch.manual_seed(0)
    model = _Residual().eval()
    img = _image(6, 7)
    c = Concept.pixel(1, 3, 3, assign="score")
    plain = lrp(model, img, c, keep=["add", "relu", "b"])
    named = lrp(model, img, c, rule="add=proportional,default=alpha1beta0",
                keep=["add", "relu", "b"])
    torch.testing.assert_close(named.input, plain.input, rtol=0, atol=0)
    # the proportional split by hand: z_a / (z_a + z_b) of the relevance at the sum
    with torch.no_grad():
        za, zb = torch.relu(model.a(img[None]))[0], model.b(img[None])[0]
    r = plain.layers["add"]
    share = torch.where(za + zb != 0, r / (za + zb), torch.zeros_like(r))
    torch.testing.assert_close(plain.layers["relu"], share * za, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(plain.layers["b"], share * zb, rtol=1e-5, atol=1e-7)
    with pytest.raises(SegscopeError, match="does not apply to 'add'"):
        lrp(model, img, c, rule="add=zbox")
    with pytest.raises(SegscopeError, match="does not apply to 'a'"):
        lrp(model, img, c, rule="a=proportional")


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(2 * 6 * 8, 4, bias=False)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_classifier_with_a_pixel_concept_says_why():
    torch.manual_seed(0)
    model = _Classifier().eval()
    img = _image(6, 8)
    with pytest.raises(SegscopeError, match="classifier") as info:
        lrp(model, img, Concept.pixel(0, 1, 1))
    assert "Concept.tensor" in str(info.value)
    # the way it points to works, and conserves relevance without biases
    with torch.no_grad():
        scores = model(img[None])[0]
    start = torch.zeros(4)
    start[int(scores.argmax())] = float(scores.max())
    e = lrp(model, img, Concept.tensor(start), rule="epsilon:0", keep="totals")
    assert e.input_total == pytest.approx(e.output_total, rel=1e-5)
    assert e.totals["fc"].shape == (4,)


def test_keep_dir_files_appear_complete_under_their_names(tiny_segnet, tmp_path):
    img = _image()
    e = lrp(tiny_segnet, img, [Concept.pixel("road", 3, 3), Concept.pixel("road", 9, 9)],
            keep=["conv1_2", "pool3"], keep_dir=tmp_path / "kept")
    names = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert names == ["conv1_2.npy", "pool3.npy"]  # no temporary files left
    disk = np.load(tmp_path / "kept" / "pool3.npy")
    np.testing.assert_array_equal(disk[1], e[1].layers["pool3"].numpy())


def test_a_state_explains_with_its_own_rule(tiny_segnet):
    """A state holds one rule's denominators: lrp takes that rule, accepts the same rule
    written another way, and refuses another one rather than silently using the state's."""
    from segscope.explain import forward_state

    img = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(2))
    concept = Concept.pixel("road", 10, 20)
    st = forward_state(tiny_segnet, img, "epsilon:0.01")
    fresh = lrp(tiny_segnet, img, concept, rule="epsilon:0.01")
    for rule in (None, "EPSILON:1e-2"):
        e = lrp(tiny_segnet, img, concept, rule=rule, state=st)
        assert e.rule == "epsilon:0.01"
        torch.testing.assert_close(e.input, fresh.input, rtol=0, atol=0)
    with pytest.raises(SegscopeError, match="differs from the rule the given state"):
        lrp(tiny_segnet, img, concept, rule="alpha1beta0", state=st)
    # without a state the default is the study's rule
    assert lrp(tiny_segnet, img, concept).rule == "alpha1beta0"
