"""docs/extending.md, "Add a rule", followed step by step: a toy rule (LRP-0) defined as
the doc says, registered with one line, used through every way in, and checked against
a matrix computation of its formula."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from segscope.errors import SegscopeError
from segscope.explain import Concept, attribute, lrp
from segscope.explain.rules import RULES, Rule, Term, recip


@dataclass(frozen=True)
class Basic(Rule):
    """LRP-0: R_i = Σ_j x_i w_ij / Σ_i' x_i' w_i'j · R_j."""

    @property
    def name(self) -> str:
        return "basic"

    def terms(self, x, op, nonneg=None):
        return [Term(x, recip(op.fwd(x, op.weight)), op.weight)]


class _Net(nn.Module):
    """conv (mixed-sign input: the raw image minus 0.5) -> ReLU -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 5, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def _basic_matrix(w: np.ndarray, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """R_i = Σ_j x_i w_ji / z_j R_j for a dense layer w (out, in), z_j = Σ_i x_i w_ji."""
    z = w @ x
    share = np.divide(r, z, out=np.zeros_like(r), where=z != 0)
    return x * (w.T @ share)


def test_a_toy_rule_following_the_doc(monkeypatch):
    monkeypatch.setitem(RULES, "basic", Basic)  # step 2: one line
    torch.manual_seed(0)
    model = _Net().double().eval()
    img = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        h = torch.relu(model.conv(img[None]))[0]
        scores = model.fc(h.flatten())
    start = torch.zeros(3, dtype=torch.float64)
    start[1] = scores[1]
    e = lrp(model, img, Concept.tensor(start), rule="basic", keep="all",
            dtype_keep=torch.float64)
    assert e.rule == "basic"
    # the reference: both layers unfolded into dense matrices, the formula in numpy
    n_in = 3 * 4 * 5
    with torch.no_grad():
        conv = torch.stack([nn.functional.conv2d(torch.eye(n_in, dtype=torch.float64)[i]
                                                 .view(1, 3, 4, 5), model.conv.weight,
                                                 None, 1, 1).flatten()
                            for i in range(n_in)], 1).numpy()
    fc = model.fc.weight.detach().numpy()
    r_h = _basic_matrix(fc, h.flatten().numpy(), e.initial.numpy())
    np.testing.assert_allclose(e.layers["conv"].flatten().numpy(), r_h, rtol=1e-10)
    r_x = _basic_matrix(conv, img.flatten().numpy(), r_h)
    np.testing.assert_allclose(e.input.flatten().numpy(), r_x, rtol=1e-9, atol=1e-14)
    # the biases are left out of z: every layer conserves relevance
    assert e.input_total == pytest.approx(e.output_total, rel=1e-10)
    assert all(abs(v) < 1e-10 * abs(e.output_total) for v in e.absorbed.values())
    # the same rule through the per-layer text and attribute()
    mixed = lrp(model, img, Concept.tensor(start), rule="fc=basic,default=alpha1beta0",
                keep=["conv"], dtype_keep=torch.float64)
    np.testing.assert_allclose(mixed.layers["conv"].flatten().numpy(), r_h, rtol=1e-10)
    att = attribute("lrp", model, img, Concept.tensor(start), rule="basic")
    torch.testing.assert_close(att.input, e.input, rtol=0, atol=0)


def test_an_unregistered_rule_name_is_refused():
    with pytest.raises(SegscopeError, match="unknown LRP rule 'basic'"):
        lrp(_Net().eval(), torch.rand(3, 4, 5), Concept.tensor(torch.ones(3)), rule="basic")
