"""The gradient family of thesis §5 against hand computations and identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _reference import numpy_conv
from torch import nn

import segscope
from segscope import SegscopeError
from segscope.explain import Concept
from segscope.explain.gradients import (
    activation_maximization,
    deconvnet,
    gradient_x_input,
    guided_backprop,
    relu_backward,
    relu_rule,
    sensitivity,
)
from segscope.explain.methods import METHODS, attribute

# Fig 5.4 (after Springenberg et al. 2015, fig 1). The thesis's extracted text prints the
# backward signal as [[6,3,-1],[2,-3,1],[2,-1,3]], which is inconsistent with its own three
# results; the signal below (the paper's) reproduces all three of them.
FORWARD_IN = [[1, -1, 5], [2, -5, -7], [-3, 2, 4]]
FORWARD_OUT = [[1, 0, 5], [2, 0, 0], [0, 2, 4]]
SIGNAL = [[-2, 3, -1], [6, -3, 1], [2, -1, 3]]
FIG_5_4 = {
    "backprop": [[-2, 0, -1], [6, 0, 0], [0, -1, 3]],
    "deconvnet": [[0, 3, 0], [6, 0, 1], [2, 0, 3]],
    "guided": [[0, 0, 0], [6, 0, 0], [0, 0, 3]],
}


@pytest.mark.parametrize("rule", sorted(FIG_5_4))
def test_relu_backward_reproduces_fig_5_4(rule):
    out = relu_backward(torch.tensor(FORWARD_IN).float(), torch.tensor(SIGNAL).float(), rule)
    assert out.tolist() == FIG_5_4[rule]


@pytest.mark.parametrize("rule", sorted(FIG_5_4))
def test_relu_rule_swap_reproduces_fig_5_4_and_restores(rule):
    net = nn.Sequential(nn.ReLU())
    x = torch.tensor(FORWARD_IN).float().requires_grad_(True)
    with relu_rule(net, rule):
        y = net(x)
        y.backward(torch.tensor(SIGNAL).float())
    assert y.tolist() == FORWARD_OUT
    assert x.grad.tolist() == FIG_5_4[rule]
    assert "forward" not in net[0].__dict__  # the class's forward is back


def test_relu_rule_restores_after_an_exception():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.ReLU())
    with pytest.raises(RuntimeError), relu_rule(net, "guided"):
        raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in net)
    with pytest.raises(SegscopeError, match="unknown ReLU rule"), relu_rule(net, "nope"):
        pass


# -- small networks with closed-form gradients ------------------------------------------
def _linear_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1))
    with torch.no_grad():
        net[0].bias.uniform_(-1, 1)
    return net.eval()


def test_sensitivity_is_the_squared_kernel_for_a_linear_net():
    net = _linear_net()
    image = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(1))
    y0, x0, c = 3, 4, 1
    att = sensitivity(net, image, Concept.pixel(c, y0, x0))
    # ∂y_c(y0,x0)/∂x[ch,i,j] = W[c,ch,i-y0+1,j-x0+1] inside the 3x3 window, 0 elsewhere.
    expected = np.zeros((3, 7, 9))
    expected[:, y0 - 1 : y0 + 2, x0 - 1 : x0 + 2] = net[0].weight[c].detach().numpy() ** 2
    np.testing.assert_allclose(att.input.numpy(), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(att.pixels.numpy(), expected.sum(0), rtol=1e-6, atol=1e-9)
    assert att.method == "sensitivity" and att.pixels.shape == (7, 9)


def test_gradient_x_input_sums_to_f_minus_bias_for_a_linear_net():
    net = _linear_net()
    image = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(2))
    scores = numpy_conv(image.double().numpy(), net[0].weight.detach().double().numpy(),
                         net[0].bias.detach().double().numpy())
    bias = float(net[0].bias[0].detach())
    att = gradient_x_input(net, image, Concept.pixel(0, 2, 5))
    assert float(att.pixels.sum()) == pytest.approx(scores[0, 2, 5] - bias, abs=1e-5)
    mask = np.zeros((7, 9), bool)
    mask[1:4, 2:8] = True
    att = gradient_x_input(net, image, Concept.mask(0, mask))
    f = scores[0][mask].sum()
    assert float(att.pixels.sum()) == pytest.approx(f - mask.sum() * bias, abs=1e-4)
    # With a root point x̃: Σ R = f(x) − f(x̃).
    root = torch.full_like(image, 0.5)
    f_root = numpy_conv(root.double().numpy(), net[0].weight.detach().double().numpy(),
                         net[0].bias.detach().double().numpy())[0][mask].sum()
    att = gradient_x_input(net, image, Concept.mask(0, mask), root=root)
    assert float(att.pixels.sum()) == pytest.approx(f - f_root, abs=1e-4)
    att = gradient_x_input(net, image, Concept.mask(0, mask), root=0.5)
    assert float(att.pixels.sum()) == pytest.approx(f - f_root, abs=1e-4)


def test_gradient_x_input_is_exact_for_a_bias_free_segnet():
    # Without biases SegNet is positively homogeneous (conv, ReLU, max-pool, unpool,
    # zero padding): Euler's identity gives Σ x·∂f/∂x = f(x).
    torch.manual_seed(3)
    model = segscope.SegNet(width=0.0625).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
                m.running_var.uniform_(0.5, 1.5)
    image = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[10:30, 5:40] = True
    att = gradient_x_input(model, image, Concept.mask("road", mask))
    with torch.no_grad():
        f = float(model(image[None])[0, 1][mask].sum())
    assert att.extras["target"] == pytest.approx(f, rel=1e-5)
    assert float(att.pixels.sum()) == pytest.approx(f, rel=1e-4)


def _two_layer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 2, 1))
    with torch.no_grad():
        net[0].bias.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("rule", ["backprop", "deconvnet", "guided"])
def test_rule_attributions_match_the_closed_form(rule):
    net = _two_layer()
    image = torch.rand(3, 6, 8, generator=torch.Generator().manual_seed(5))
    y0, x0, c = 2, 5, 1
    w1 = net[0].weight.detach().double().numpy()
    z = numpy_conv(image.double().numpy(), w1, net[0].bias.detach().double().numpy())
    signal = net[2].weight.detach().double().numpy()[c, :, 0, 0]  # ∂y/∂(ReLU output)
    passed = relu_backward(torch.tensor(z[:, y0, x0]), torch.tensor(signal), rule).numpy()
    expected = np.zeros((3, 6, 8))
    # The transposed 3x3 convolution of a single-pixel signal: the kernels, weighted.
    expected[:, y0 - 1 : y0 + 2, x0 - 1 : x0 + 2] = np.einsum("k,kcij->cij", passed, w1)
    concept = Concept.pixel(c, y0, x0)
    att = {"backprop": sensitivity, "deconvnet": deconvnet, "guided": guided_backprop}[rule](
        net, image, concept
    )
    got = att.extras["gradient"] if rule == "backprop" else att.input
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert all("forward" not in m.__dict__ for m in net)


def test_guided_differs_from_the_gradient_on_segnet(tiny_segnet):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(6))
    concept = Concept.pixel("road", 16, 16)
    plain = sensitivity(tiny_segnet, image, concept).extras["gradient"]
    guided = guided_backprop(tiny_segnet, image, concept).input
    deconv = deconvnet(tiny_segnet, image, concept).input
    assert not torch.allclose(plain, guided)
    assert not torch.allclose(guided, deconv)
    # The forward values are unchanged by the swap.
    assert all("forward" not in m.__dict__ for m in tiny_segnet.modules())


# -- activation maximization -------------------------------------------------------------
@pytest.mark.parametrize("target", ["concept", "channel"])
def test_activation_maximization_increases_monotonically(tiny_segnet, target):
    goal = Concept.pixel("markings", 8, 8) if target == "concept" else ("conv2_1", 1)
    att = activation_maximization(tiny_segnet, goal, size=(16, 16), steps=6, seed=0)
    history = np.array(att.extras["history"])
    assert len(history) >= 4
    assert np.all(np.diff(history) > 0)
    assert att.input.shape == (3, 16, 16)
    assert float(att.input.min()) >= 0 and float(att.input.max()) <= 1
    again = activation_maximization(tiny_segnet, goal, size=(16, 16), steps=2, seed=0)
    np.testing.assert_allclose(again.extras["history"], history[: len(again.extras["history"])],
                               rtol=1e-5)


def test_activation_maximization_objective_is_what_it_says(tiny_segnet):
    att = activation_maximization(tiny_segnet, ("conv1_2", 0), size=(16, 16), steps=3,
                                  l2=1e-3)
    x = att.input
    acts = {}
    handle = tiny_segnet.layer("conv1_2").register_forward_hook(
        lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        tiny_segnet(tiny_segnet.pad(x[None]))
    handle.remove()
    expected = float(acts["a"][0, 0].mean()) - 1e-3 * float((x * x).sum())
    assert att.extras["history"][-1] == pytest.approx(expected, rel=1e-5)


def test_activation_maximization_rejects_bad_targets(tiny_segnet):
    with pytest.raises(SegscopeError, match="channel 99 out of range"):
        activation_maximization(tiny_segnet, ("conv1_1", 99), size=(16, 16), steps=1)
    with pytest.raises(SegscopeError, match="unknown layer"):
        activation_maximization(tiny_segnet, ("conv9_9", 0), size=(16, 16), steps=1)
    with pytest.raises(SegscopeError):
        activation_maximization(tiny_segnet, "road", size=(16, 16), steps=1)


# -- dispatch ----------------------------------------------------------------------------
def test_attribute_runs_every_method(tiny_segnet):
    image = torch.rand(3, 24, 40, generator=torch.Generator().manual_seed(7))
    concept = Concept.pixel("road", 12, 20)
    for method in METHODS:
        att = attribute(method, tiny_segnet, image, concept, steps=2, layer="conv4_1")
        assert att.method == method
        assert att.pixels.shape == (24, 40)
        assert torch.isfinite(att.pixels).all()
    att = attribute("actmax", tiny_segnet, image, None, layer="conv3_1", channel=2, steps=1)
    assert att.concept == "channel 2 of conv3_1"
    assert attribute("gradcam", tiny_segnet, image, concept).extras["layer"] == "conv5_1_D"


def test_bad_input_is_one_line(tiny_segnet):
    image = torch.rand(3, 16, 16)
    concept = Concept.pixel("road", 4, 4)
    cases = [
        (lambda: attribute("smoothgrad", tiny_segnet, image, concept), "unknown method"),
        (lambda: attribute("sensitivity", tiny_segnet, image[0], concept), "must be \\(3,H,W\\)"),
        (lambda: sensitivity(tiny_segnet, image, Concept.pixel("road", 40, 4)), "outside"),
        (lambda: sensitivity(tiny_segnet, image, Concept.tensor(torch.zeros(3, 16, 16))),
         "selects no"),
        (lambda: gradient_x_input(tiny_segnet, image, concept, root=torch.zeros(3, 2, 2)),
         "root point"),
        (lambda: attribute("actmax", tiny_segnet, image, None, channel=1), "needs a layer"),
        (lambda: attribute("guided", tiny_segnet, image, None), "needs a concept"),
    ]
    for call, message in cases:
        with pytest.raises(SegscopeError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(SegscopeError) as info:
        attribute("smoothgrad", tiny_segnet, image, concept)
    assert all(m in str(info.value) for m in METHODS)


@pytest.mark.parametrize("assign", ["score", "one", "prob"])
def test_target_is_the_masked_sum_of_scores_or_probabilities(tiny_segnet, assign):
    image = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[5:15, 3:9] = True
    att = sensitivity(tiny_segnet, image, Concept.mask("markings", mask, assign=assign))
    with torch.no_grad():
        scores = tiny_segnet(image[None])[0]
    values = torch.softmax(scores, dim=0) if assign == "prob" else scores
    assert att.extras["target"] == pytest.approx(float(values[2][mask].sum()), rel=1e-5)
