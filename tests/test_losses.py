"""The training losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segscope.losses import DICE_SMOOTH, segmentation_loss, soft_dice

IGNORE = 255


def _case():
    """One 1x3 image, two classes; logits chosen so the softmax is 0.8/0.2, 0.5/0.5, 0.1/0.9
    (class 0/1) and the labels 0, 1, ignored."""
    p1 = torch.tensor([0.2, 0.5, 0.9])
    logits = torch.stack([torch.zeros(3), torch.log(p1 / (1 - p1))]).view(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, IGNORE]]])
    return logits, labels


def test_soft_dice_by_hand():
    logits, labels = _case()
    d = soft_dice(logits, labels, IGNORE).tolist()
    s = DICE_SMOOTH
    # the ignored third pixel counts for neither class
    want0 = (2 * 0.8 + s) / ((0.8 + 0.5) + 1 + s)
    want1 = (2 * 0.5 + s) / ((0.2 + 0.5) + 1 + s)
    assert d == pytest.approx([want0, want1], rel=1e-6)


def test_soft_dice_is_one_for_a_perfect_prediction_and_falls_with_errors():
    labels = torch.tensor([[[0, 1, 1, 2]]])
    perfect = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 60
    assert soft_dice(perfect, labels, IGNORE).tolist() == pytest.approx([1, 1, 1], abs=1e-6)
    wrong = perfect.roll(1, dims=1)  # every pixel predicts the next class
    assert soft_dice(wrong, labels, IGNORE).max() < 0.5


def test_loss_is_cross_entropy_plus_one_minus_mean_dice():
    logits, labels = _case()
    w = torch.tensor([1.0, 3.0])
    ce = segmentation_loss(logits, labels, w, IGNORE, "ce")
    # weighted CE over the two valid pixels: -(1 log .8 + 3 log .5) / (1 + 3)
    assert float(ce) == pytest.approx(-(math.log(0.8) + 3 * math.log(0.5)) / 4, rel=1e-6)
    both = segmentation_loss(logits, labels, w, IGNORE, "ce+dice")
    dice0 = (2 * 0.8 + DICE_SMOOTH) / (1.3 + 1 + DICE_SMOOTH)
    dice1 = (2 * 0.5 + DICE_SMOOTH) / (0.7 + 1 + DICE_SMOOTH)
    assert float(both) == pytest.approx(float(ce) + 1 - (dice0 + dice1) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        segmentation_loss(logits, labels, w, IGNORE, "dice")


def _pull(width: int) -> tuple[float, float]:
    """Total gradient towards class 1 on a vertical line of ``width`` pixels in a 20x20
    image of class 0, from logits 0: (cross-entropy's, the Dice term's)."""
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, :, 10:10 + width] = 1
    logits = torch.zeros(1, 2, 20, 20, requires_grad=True)
    g_ce, = torch.autograd.grad(segmentation_loss(logits, labels, None, IGNORE, "ce"), logits)
    g_all, = torch.autograd.grad(segmentation_loss(logits, labels, None, IGNORE, "ce+dice"),
                                 logits)
    line = labels[0] == 1
    return -float(g_ce[0, 1][line].sum()), -float((g_all - g_ce)[0, 1][line].sum())


def test_dice_pull_on_a_class_grows_slower_than_its_size():
    """Cross-entropy's pull on a class is proportional to its pixel count (p - y over
    the image: 20 x width x 0.5 / 400); the Dice term's grows more slowly, so it adds
    the most, relative to cross-entropy, for the thinnest class."""
    ce1, dice1 = _pull(1)
    ce8, dice8 = _pull(8)
    assert ce1 == pytest.approx(20 * 0.5 / 400, rel=1e-6)
    assert ce8 == pytest.approx(8 * ce1, rel=1e-6)
    assert dice1 > 0 and dice8 < 5 * dice1  # sub-linear in the class's size
    assert dice1 / ce1 > 1.5 * (dice8 / ce8)


@pytest.mark.parametrize("loss", ["ce", "ce+dice"])
def test_a_batch_without_labelled_pixels_has_zero_loss_and_zero_gradient(loss):
    """The weighted mean of no pixels was 0/0: one all-ignore label stopped training as
    "diverged". Nothing is learnt from such a batch; a labelled one is unchanged."""
    logits, labels = _case()
    logits = logits.clone().requires_grad_(True)
    weight = torch.tensor([0.5, 2.0])
    out = segmentation_loss(logits, torch.full_like(labels, IGNORE), weight, IGNORE, loss)
    out.backward()
    assert out.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    assert math.isnan(F.cross_entropy(logits, torch.full_like(labels, IGNORE), weight=weight,
                                      ignore_index=IGNORE).item())  # what it was
    with_labels = segmentation_loss(logits, labels, weight, IGNORE, "ce")
    assert with_labels.item() == pytest.approx(
        F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE).item())
