"""Every LRP rule against a plain-numpy re-implementation in matrix form.

The convolution is unfolded into its dense matrix W (out, in) by applying it to basis
vectors; z_ij = x_i W_ij is built explicitly as an outer-product matrix, and the rule's
R_i = Σ_j share_ij R_j is computed with numpy. The engine must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segscope.errors import SegscopeError
from segscope.explain import Concept, lrp, propagate
from segscope.explain.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    WSquare,
    ZBox,
    ZPlus,
    parse_rule,
)

H, W_ = 5, 6



def _conv(stride: int = 1, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 2, 3, stride=stride, padding=1).double()
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
    return nn.Sequential(conv).eval()


def _dense(model: nn.Sequential, shape: tuple[int, int, int]):
    """(W (out,in), b (out,), connectivity (out,in)) of the model's single conv."""
    conv = model[0]
    n_in = int(np.prod(shape))
    cols, conn = [], []
    ones = nn.Conv2d(3, 2, 3, stride=conv.stride, padding=1, bias=False).double()
    with torch.no_grad():
        ones.weight.fill_(1.0)
        for i in range(n_in):
            e = torch.zeros(n_in, dtype=torch.float64)
            e[i] = 1.0
            e = e.view(1, *shape)
            cols.append(nn.functional.conv2d(e, conv.weight, None, conv.stride, 1).flatten())
            conn.append(ones(e).flatten())
        out_shape = nn.functional.conv2d(torch.zeros(1, *shape, dtype=torch.float64),
                                         conv.weight, None, conv.stride, 1).shape[1:]
    w = torch.stack(cols, 1).numpy()
    c = (torch.stack(conn, 1).numpy() > 0).astype(float)
    b = conv.bias.detach().numpy().repeat(int(np.prod(out_shape[1:])))
    return w, b, c, tuple(out_shape)


def _safe_div(a, z):
    out = np.zeros_like(a)
    np.divide(a, z, out=out, where=z != 0)
    return out


def _matrix_rule(rule, x, w, b, conn, r):
    """R_i = Σ_j (z_ij / z_j) R_j with the rule's z, all in dense numpy."""
    zij = x[None, :] * w  # (out, in): z_ij stored as [j, i]
    if isinstance(rule, (AlphaBeta, ZPlus)):
        alpha, beta, bias = (1.0, 0.0, False) if isinstance(rule, ZPlus) else \
            (rule.alpha, rule.beta, rule.bias)
        zp, zn = np.maximum(zij, 0), np.minimum(zij, 0)
        bp, bn = (np.maximum(b, 0), np.minimum(b, 0)) if bias else (0 * b, 0 * b)
        share = alpha * _safe_div(zp, (zp.sum(1) + bp)[:, None])
        share = share - beta * _safe_div(zn, (zn.sum(1) + bn)[:, None])
    elif isinstance(rule, Epsilon):
        zj = zij.sum(1) + (b if rule.bias else 0)
        sign = np.where(zj >= 0, 1.0, -1.0)
        share = zij / (zj + rule.eps * sign)[:, None]
    elif isinstance(rule, Gamma):
        wg = w + rule.gamma * np.maximum(w, 0)
        zg = x[None, :] * wg
        bg = b + rule.gamma * np.maximum(b, 0)
        share = _safe_div(zg, (zg.sum(1) + bg)[:, None])
    elif isinstance(rule, Flat):
        share = _safe_div(conn, conn.sum(1)[:, None])
    elif isinstance(rule, WSquare):
        share = _safe_div(w**2, (w**2).sum(1)[:, None])
    elif isinstance(rule, ZBox):
        zb = zij - rule.low * np.maximum(w, 0) - rule.high * np.minimum(w, 0)
        share = _safe_div(zb, zb.sum(1)[:, None])
    else:  # pragma: no cover
        raise AssertionError(rule)
    return (share * r[:, None]).sum(0)


RULES = [
    AlphaBeta(1, 0),
    AlphaBeta(2, 1),
    AlphaBeta(1, 0, bias=False),
    AlphaBeta(2, 1, bias=False),
    Epsilon(0.01),
    Epsilon(0.01, bias=False),
    ZPlus(),
    Gamma(0.25),
    Flat(),
    WSquare(),
    ZBox(0.0, 1.0),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
@pytest.mark.parametrize("signs", ["positive", "mixed"])
@pytest.mark.parametrize("stride", [1, 2])
def test_rule_matches_matrix_form(rule, signs, stride):
    if isinstance(rule, ZBox) and signs == "mixed":
        pytest.skip("z^B is for inputs inside its box")
    model = _conv(stride)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, H, W_, generator=g, dtype=torch.float64)
    if signs == "mixed":
        x = x * 2 - 1
    w, b, conn, out_shape = _dense(model, (3, H, W_))
    # Concept.tensor stores float32: draw values that survive that exactly.
    r = torch.randn(*out_shape, generator=g).double()
    got = lrp(model, x, Concept.tensor(r), rule=rule).input.numpy().ravel()
    want = _matrix_rule(rule, x.numpy().ravel(), w, b, conn, r.numpy().ravel())
    assert np.abs(want).max() > 1e-3  # the case is not trivially zero
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _matrix(conv: nn.Conv2d, shape: tuple[int, int, int]):
    """(W (out,in), b (out,)) of ``conv`` on inputs of ``shape``, from basis images."""
    n = int(np.prod(shape))
    with torch.no_grad():
        basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
        w = nn.functional.conv2d(basis, conv.weight, None, conv.stride, conv.padding)
    out = w.shape[1:]
    return w.reshape(n, -1).T.numpy(), conv.bias.detach().numpy().repeat(out[1] * out[2])


@pytest.mark.parametrize("rule", [Epsilon(0.01), Epsilon(0.0), Epsilon(0.01, bias=False)],
                         ids=lambda r: r.name)
@pytest.mark.parametrize("top", ["same", "wsquare"])
def test_epsilon_behind_a_relu_matches_matrix_form(rule, top):
    """ε takes its denominators from the forward pass's own outputs, which the ReLU after
    the convolution must leave intact: two layers against the matrix form, step by step
    (R through the ReLU unchanged). With w² above it, relevance reaches the outputs the
    ReLU cut, where only the true (negative) z gives the right share."""
    top_rule = rule if top == "same" else WSquare()
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 2, 3, padding=1)).double().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, H, W_, generator=g, dtype=torch.float64) * 2 - 1
    w1, b1 = _matrix(model[0], (3, H, W_))
    w2, b2 = _matrix(model[2], (4, H, W_))
    a1 = np.maximum(w1 @ x.numpy().ravel() + b1, 0)
    assert 0 < (a1 == 0).mean() < 1  # the ReLU cuts some outputs, not all
    r = torch.randn(2, H, W_, generator=g).double()
    r1 = _matrix_rule(top_rule, a1, w2, b2, None, r.numpy().ravel())
    want = _matrix_rule(rule, x.numpy().ravel(), w1, b1, None, r1)
    got = lrp(model, x, Concept.tensor(r), rule={"0": rule, "2": top_rule}).input.numpy().ravel()
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_alpha_beta_bias_share_is_absorbed():
    model = _conv()
    x = torch.rand(3, H, W_, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w, b, _, out_shape = _dense(model, (3, H, W_))
    r = torch.rand(*out_shape).double()
    e = lrp(model, x, Concept.tensor(r))
    zp = np.maximum(x.numpy().ravel()[None, :] * w, 0).sum(1) + np.maximum(b, 0)
    want = (r.numpy().ravel() * _safe_div(np.maximum(b, 0), zp)).sum()
    assert want > 1e-3
    assert e.absorbed["0"] == pytest.approx(want, rel=1e-9)
    assert e.input_total + e.absorbed["0"] == pytest.approx(e.output_total, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("alpha1beta0", AlphaBeta(1, 0)),
        ("alpha2beta1", AlphaBeta(2, 1)),
        ("alpha1beta0:nobias", AlphaBeta(1, 0, bias=False)),
        ("epsilon", Epsilon()),
        ("epsilon:0.01", Epsilon(0.01)),
        ("zplus", ZPlus()),
        ("gamma:0.5", Gamma(0.5)),
        ("flat", Flat()),
        ("wsquare", WSquare()),
        ("zbox", ZBox()),
        ("zbox:-1:1", ZBox(-1.0, 1.0)),
    ],
)
def test_parse_rule(text, rule):
    assert parse_rule(text) == rule
    assert parse_rule(parse_rule(text).name) == rule


@pytest.mark.parametrize("text", ["alpha1beta1", "alpha0.5beta-0.5", "lrp", "epsilon:x",
                                  "gamma:1:2", "epsilon:inf", "epsilon:1e400", "gamma:inf",
                                  "epsilon:nan", "zbox:-inf:1"])
def test_bad_rules_are_one_line_errors(text):
    with pytest.raises(SegscopeError) as info:
        parse_rule(text)
    assert "\n" not in str(info.value)


def test_rule_per_layer(tiny_segnet):
    img = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))
    concept = Concept.pixel("road", 10, 20)
    plain = lrp(tiny_segnet, img, concept, keep=["conv1_1", "conv1_2"])
    mixed = lrp(tiny_segnet, img, concept, keep=["conv1_1", "conv1_2"],
                rule={"first": "zbox", "default": "alpha1beta0"})
    named = lrp(tiny_segnet, img, concept, keep=["conv1_1"],
                rule={"conv1_1": "zbox", "default": "alpha1beta0"})
    # Only the pixel layer's rule differs: relevance above it is the same ...
    torch.testing.assert_close(mixed.layers["conv1_1"], plain.layers["conv1_1"])
    assert not torch.allclose(mixed.input, plain.input)
    torch.testing.assert_close(named.input, mixed.input)
    # ... and the pixel layer maps conv1_1's relevance by z^B (checked in matrix form above).
    alone = propagate(tiny_segnet, img, "conv1_1", mixed.layers["conv1_1"], rule="zbox")
    torch.testing.assert_close(alone.input[0], mixed.input)
    assert "conv1_1=zbox" in named.rule
    with pytest.raises(SegscopeError, match="pool1"):
        lrp(tiny_segnet, img, concept, rule={"pool1": "zbox"})
