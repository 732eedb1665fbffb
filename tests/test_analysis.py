"""The chapter-9 numbers on hand-made relevance tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segscope import analysis as A


def test_layer_sum_is_eq_9_1():
    r = np.arange(24, dtype=float).reshape(2, 3, 4) - 5
    expected = np.array([[r[0, y, x] + r[1, y, x] for x in range(4)] for y in range(3)])
    np.testing.assert_allclose(A.layer_sum(r), expected)
    np.testing.assert_allclose(A.layer_sum(torch.tensor(r)), expected)


def test_feature_values_sum_to_channels_and_match_hand_case():
    # Channel totals 1, 3, 0, 4 -> layer total 8, C = 4: fv = total_k / 8 * 4.
    r = np.zeros((4, 2, 2))
    r[0, 0, 0] = 1
    r[1] = 0.75
    r[2, 0, 0], r[2, 1, 1] = 2, -2
    r[3, 1, 0] = 4
    fv = A.feature_values(r)
    np.testing.assert_allclose(fv, [0.5, 1.5, 0.0, 2.0])
    assert fv.sum() == pytest.approx(4)
    rng = np.random.default_rng(0)
    big = rng.random((37, 5, 6))
    assert A.feature_values(big).sum() == pytest.approx(37)


def test_feature_values_guard_a_zero_total():
    r = np.zeros((3, 2, 2))
    r[0, 0, 0], r[1, 0, 0] = 1.0, -1.0
    np.testing.assert_array_equal(A.feature_values(r), np.zeros(3))


def test_rank_features_high_to_low():
    assert A.rank_features([0.5, 2.0, 0.1, 1.4]).tolist() == [1, 3, 0, 2]


def test_switch_off_known_share():
    # 10 pixels of 100 hold 99 % of the relevance.
    r = np.full(100, 1 / 90)
    r[[3, 17, 25, 40, 41, 55, 60, 72, 88, 99]] = 9.9
    curve = A.switch_off_curve(r.reshape(10, 10))
    assert curve.pixels_holding(0.99) == pytest.approx(0.10)
    # 50 % needs ceil(50 / 9.9) = 6 of the big ones.
    assert curve.pixels_holding(0.50) == pytest.approx(0.06)
    assert curve.pixels_holding(1.0) == pytest.approx(1.0)
    mask = curve.kept_mask(0.99)
    assert mask.sum() == 10 and mask.ravel()[[3, 17, 99]].all()


def test_switch_off_curve_monotone_and_ends():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(7, 9)) ** 3
    curve = A.switch_off_curve(r)
    assert curve.pixel_share[0] == 1 and curve.pixel_share[-1] == 0
    assert curve.relevance_share[0] == pytest.approx(1) and curve.relevance_share[-1] == 0
    assert np.all(np.diff(curve.relevance_share) <= 1e-12)
    assert np.all(np.diff(curve.pixel_share) < 0)
    # Shares are of R+: the kept relevance at the pixel share p is a top-k sum.
    pos = np.sort(np.clip(r.ravel(), 0, None))[::-1]
    k = 20
    idx = len(curve.pixel_share) - 1 - k
    assert curve.relevance_share[idx] == pytest.approx(pos[:k].sum() / pos.sum())


def test_negative_share():
    assert A.negative_share(np.array([[3.0, -1.0], [0.0, 0.0]])) == pytest.approx(0.25)
    assert A.negative_share(np.zeros((2, 2))) == 0.0


def test_common_threshold_lights_the_share_of_the_block():
    maps = np.zeros((2, 2, 2))
    maps[0] = [[4, 3], [0, 0]]
    maps[1] = [[2, 1], [0, -5]]
    # Block R+ total 10: 4 (40 %), 4+3 (70 %), 4+3+2 (90 %).
    assert A.common_threshold(maps, 0.4) == 4
    assert A.common_threshold(maps, 0.5) == 3
    assert A.common_threshold(maps, 0.9) == 2
    assert A.common_threshold(np.zeros((2, 2, 2)), 0.3) == math.inf


def test_unit_points_and_specific_features():
    fv = {"road": [3.0, 0.0, 1.0, 0.0], "markings": [4.0, 0.0, 0.0, 2.0],
          "background": [0.0, 0.0, 0.0, 2.0]}
    points = A.class_points(fv)
    assert points.shape == (4, 3)
    unit = A.unit_points(points)
    np.testing.assert_allclose(unit[0], [0.6, 0.8, 0.0])
    np.testing.assert_allclose(np.linalg.norm(unit[[0, 2, 3]], axis=1), 1.0)
    np.testing.assert_array_equal(unit[1], 0)  # a feature at the origin stays there
    spec = A.specific_features(points, list(fv))
    assert spec["road"] == [2]
    assert spec["markings"] == [0, 3]  # tie on feature 3: argmax takes the first axis
    assert spec["background"] == []


def test_divergences():
    a = np.array([1.0, 2.0, 0.0, 3.0])
    assert A.cosine_distance(a, 2 * a) == pytest.approx(0, abs=1e-12)
    assert A.jensen_shannon(a, 2 * a) == pytest.approx(0, abs=1e-12)
    b = np.array([0.0, 1.0, 1.0, 0.0])
    # cos = 2 / (sqrt(14) sqrt(2))
    assert A.cosine_distance(a, b) == pytest.approx(1 - 2 / math.sqrt(28))
    # Disjoint supports: JS (base 2) is exactly 1.
    assert A.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1)
    # Hand case: p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4).
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    assert A.jensen_shannon([1, 1], [1, 0]) == pytest.approx(0.5 * kl_p + 0.5 * kl_q)
    assert A.cosine_distance(np.zeros(3), np.zeros(3)) == 0
    assert A.jensen_shannon(np.zeros(3), [1, 0, 0]) == 1


def test_profile_divergence_per_layer():
    rng = np.random.default_rng(2)
    ra = {"conv1_1": rng.random((4, 3, 3)), "pool1": rng.random((4, 2, 2))}
    rb = {"conv1_1": ra["conv1_1"] * 3, "pool1": rng.random((4, 2, 2))}
    out = A.profile_divergence(ra, rb)
    assert out["conv1_1"]["cosine"] == pytest.approx(0, abs=1e-12)
    assert out["conv1_1"]["js"] == pytest.approx(0, abs=1e-12)
    assert out["pool1"]["cosine"] > 0 and out["pool1"]["js"] > 0


def test_spearman_by_hand():
    x = [10, 20, 20, 40, 30]
    y = [1, 3, 2, 5, 4]
    np.testing.assert_allclose(A.rankdata(x), [1, 2.5, 2.5, 5, 4])
    rx, ry = np.array([1, 2.5, 2.5, 5, 4]), np.array([1, 3, 2, 5, 4])
    # Pearson of the ranks, written out.
    dx, dy = rx - rx.mean(), ry - ry.mean()
    expected = (dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum())
    assert A.spearman(x, y) == pytest.approx(expected)
    # No ties: the classic 1 - 6 Σd² / (n (n² - 1)).
    x2, y2 = [3, 1, 4, 2, 5], [2, 1, 5, 3, 4]
    d = np.array([3, 1, 4, 2, 5]) - np.array([2, 1, 5, 3, 4])
    assert A.spearman(x2, y2) == pytest.approx(1 - 6 * (d**2).sum() / (5 * 24))
    assert A.spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1)
    assert math.isnan(A.pearson([1, 1, 1], [1, 2, 3]))


def test_share_reaching_input():
    assert A.share_reaching_input(0.25, 2.0) == 0.125
    assert math.isnan(A.share_reaching_input(1.0, 0.0))
