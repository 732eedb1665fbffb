"""Concept: which output neurons start an explanation, with which relevance (SPEC §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segscope.errors import SegscopeError
from segscope.explain import Concept

NAMES = ("background", "road", "markings")


@pytest.fixture
def scores() -> torch.Tensor:
    # K=3, H=2, W=3; argmax per pixel: [[1,1,0],[2,0,1]]
    return torch.tensor(
        [
            [[0.0, 1.0, 3.0], [0.5, 2.0, -1.0]],
            [[2.0, 1.5, 1.0], [0.0, 1.0, 2.0]],
            [[1.0, 0.0, -2.0], [4.0, -3.0, 0.5]],
        ]
    )


def test_pixel_assigns_one_to_a_single_neuron(scores):
    r = Concept.pixel("road", 1, 2).initial_relevance(scores, NAMES)
    expected = torch.zeros(3, 2, 3)
    expected[1, 1, 2] = 1.0
    assert torch.equal(r, expected)


def test_pixel_score_and_prob_assignments(scores):
    r = Concept.pixel(2, 0, 0, assign="score").initial_relevance(scores, NAMES)
    assert r.sum().item() == pytest.approx(1.0) and r[2, 0, 0].item() == 1.0
    p = Concept.pixel("markings", 0, 0, assign="prob").initial_relevance(scores, NAMES)
    col = np.array([0.0, 2.0, 1.0])
    softmax = np.exp(col) / np.exp(col).sum()
    assert p[2, 0, 0].item() == pytest.approx(softmax[2], rel=1e-6)
    assert (p != 0).sum().item() == 1


def test_mask_score_assignment_keeps_class_scores_inside_mask(scores):
    mask = np.array([[1, 0, 1], [0, 0, 1]])
    r = Concept.mask("road", mask).initial_relevance(scores, NAMES)
    expected = torch.zeros(3, 2, 3)
    expected[1] = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 2.0]])
    assert torch.equal(r, expected)


def test_from_prediction_tp_fp_fn(scores):
    # prediction: [[1,1,0],[2,0,1]]
    label = np.array([[1, 0, 1], [1, 255, 1]])
    sel = {k: Concept.from_prediction("road", k, label).selection(scores, NAMES).int().tolist()
           for k in ("tp", "fp", "fn")}
    assert sel["tp"] == [[1, 0, 0], [0, 0, 1]]
    assert sel["fp"] == [[0, 1, 0], [0, 0, 0]]
    assert sel["fn"] == [[0, 0, 1], [1, 0, 0]]
    r = Concept.from_prediction("road", "tp", label, assign="one").initial_relevance(scores, NAMES)
    assert r.sum().item() == 2.0 and r[1, 0, 0].item() == 1.0 and r[1, 1, 2].item() == 1.0


def test_user_tensor_is_taken_as_is(scores):
    t = torch.randn(3, 2, 3)
    assert torch.equal(Concept.tensor(t).initial_relevance(scores, NAMES), t)
    with pytest.raises(SegscopeError, match="shape"):
        Concept.tensor(torch.zeros(3, 4, 4)).initial_relevance(scores, NAMES)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Concept.pixel("road", 2, 0), "outside"),
        (lambda: Concept.pixel("road", 0, -1), "outside"),
        (lambda: Concept.pixel("sky", 0, 0), "unknown class 'sky'"),
        (lambda: Concept.pixel(3, 0, 0), "out of range"),
        (lambda: Concept.mask("road", np.zeros((2, 3))), "no pixels"),
        (lambda: Concept.mask("road", np.ones((3, 3))), "3x3"),
        (lambda: Concept.from_prediction("markings", "fp", np.full((2, 3), 2)), "no false pos"),
        (lambda: Concept.from_prediction("road", "tn", np.ones((2, 3))), "unknown prediction"),
        (lambda: Concept.mask("road", np.ones((2, 3)), assign="logit"), "unknown assignment"),
    ],
)
def test_bad_concepts_give_one_clear_line(scores, make, message):
    with pytest.raises(SegscopeError, match=message) as info:
        make().initial_relevance(scores, NAMES)
    assert "\n" not in str(info.value)
