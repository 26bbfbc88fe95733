"""Metrics against values worked out by hand: KL, dense-rank correlation, Wilson interval, consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ift_utils.metrics import accuracy_ci, consistency, dense_rank, kl_divergence, rank_correlation


# ------------------------------------------------------------------------------------------------ KL
def test_kl_hand_value_against_uniform():
    # p = [.5, .3, .2, 0], q = uniform: KL = .5 ln(.5/.25) + .3 ln(.3/.25) + .2 ln(.2/.25) + 0 (0 ln 0 = 0)
    by_hand = 0.5 * math.log(2.0) + 0.3 * math.log(1.2) + 0.2 * math.log(0.8)
    assert by_hand == pytest.approx(0.356641347, abs=1e-9)
    assert kl_divergence([0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]) == pytest.approx(by_hand, abs=1e-12)


def test_kl_renormalizes_both_inputs():
    # [2, 1, 1] -> [.5, .25, .25]; [1, 1, 2] -> [.25, .25, .5]; KL = .5 ln 2 + .25 ln 1 + .25 ln .5 = .25 ln 2
    assert kl_divergence([2, 1, 1], [1, 1, 2]) == pytest.approx(0.25 * math.log(2.0), abs=1e-12)


def test_kl_is_not_symmetric():
    # KL(p || q) and KL(q || p) written out for p = [.9, .1], q = [.5, .5]
    p, q = [0.9, 0.1], [0.5, 0.5]
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    backward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence(p, q) == pytest.approx(forward, abs=1e-12)
    assert kl_divergence(q, p) == pytest.approx(backward, abs=1e-12)
    assert forward != pytest.approx(backward)


def test_kl_clips_zero_in_q():
    # q = [1, 0] is clipped to [1, eps] / (1 + eps): KL = ln(.5) + ln(1 + eps) - .5 ln(eps), finite
    eps = 1e-12
    expected = math.log(0.5) + math.log1p(eps) - 0.5 * math.log(eps)
    got = kl_divergence([0.5, 0.5], [1.0, 0.0], eps=eps)
    assert math.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-9)


def test_kl_identical_is_zero():
    assert kl_divergence([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("p", "q"),
    [([0.5, 0.5], [0.3, 0.3, 0.4]), ([], []), ([-0.1, 1.1], [0.5, 0.5]), ([0.0, 0.0], [0.5, 0.5]),
     ([float("nan"), 1.0], [0.5, 0.5])],
)
def test_kl_rejects_bad_input(p, q):
    with pytest.raises(ValueError):
        kl_divergence(p, q)


# ---------------------------------------------------------------------------------------- ranks
def test_dense_rank_ties_share_consecutive_ranks():
    assert dense_rank([0.5, 0.2, 0.5, 0.1]).tolist() == [3, 2, 3, 1]
    assert dense_rank([0.25, 0.25, 0.25, 0.25]).tolist() == [1, 1, 1, 1]


def test_rank_correlation_perfect_orders():
    # p = [.5, .3, .2, 0] has dense ranks [4, 3, 2, 1]
    assert rank_correlation([0.5, 0.3, 0.2, 0.0], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(1.0)
    assert rank_correlation([0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(-1.0)


def test_rank_correlation_ties_by_hand():
    # p = [.4, .4, .1, .1] -> ranks [2, 2, 1, 1], deviations [.5, .5, -.5, -.5]
    # q = [.5, .2, .2, .1] -> ranks [3, 2, 2, 1], deviations [1, 0, 0, -1]
    # r = (.5 + 0 + 0 + .5) / sqrt(1 * 2) = 1 / sqrt(2)
    assert rank_correlation([0.4, 0.4, 0.1, 0.1], [0.5, 0.2, 0.2, 0.1]) == pytest.approx(1 / math.sqrt(2))


def test_rank_correlation_uses_dense_not_average_ranks():
    # p = [.5, .5, .2, .1] -> dense [3, 3, 2, 1], mean 2.25, deviations [.75, .75, -.25, -1.25]
    # q = [.1, .2, .3, .4] -> [1, 2, 3, 4], mean 2.5, deviations [-1.5, -.5, .5, 1.5]
    # sum of products = -1.125 - .375 - .125 - 1.875 = -3.5; sums of squares 2.75 and 5
    dense = -3.5 / math.sqrt(2.75 * 5)
    # average ranks would give [3.5, 3.5, 2, 1]: sum of products -4.5, squares 4.5 and 5
    average = -4.5 / math.sqrt(4.5 * 5)
    got = rank_correlation([0.5, 0.5, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4])
    assert got == pytest.approx(dense, abs=1e-12)
    assert got != pytest.approx(average, abs=1e-4)


def test_rank_correlation_constant_vector_is_zero():
    assert rank_correlation([0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert rank_correlation([0.1, 0.2, 0.3, 0.4], [0.3, 0.3, 0.3, 0.3]) == 0.0
    assert rank_correlation([1.0], [1.0]) == 0.0


def test_rank_correlation_identical_is_one():
    assert rank_correlation([0.1, 0.6, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1]) == pytest.approx(1.0)


# -------------------------------------------------------------------------------------- Wilson CI
def test_wilson_interval_by_hand():
    # 8 of 10 correct: centre = (p + z²/2n) / (1 + z²/n), half = z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)
    z, n, p = 1.959963984540054, 10, 0.8
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    acc, lo, hi = accuracy_ci([True] * 8 + [False] * 2)
    assert acc == 0.8
    assert lo == pytest.approx(centre - half, abs=1e-9)
    assert hi == pytest.approx(centre + half, abs=1e-9)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)


def test_wilson_interval_edges():
    acc, lo, hi = accuracy_ci(np.ones(5, dtype=bool))
    assert acc == 1.0 and hi == pytest.approx(1.0) and 0.0 < lo < 1.0
    acc, lo, hi = accuracy_ci([])
    assert all(math.isnan(v) for v in (acc, lo, hi))


# ------------------------------------------------------------------------------------- consistency
def test_consistency_means_over_questions():
    base = [[0.5, 0.3, 0.2, 0.0], [0.4, 0.4, 0.1, 0.1]]
    ft = [[0.25, 0.25, 0.25, 0.25], [0.5, 0.2, 0.2, 0.1]]
    res = consistency(base, ft)
    kl1 = 0.5 * math.log(2.0) + 0.3 * math.log(1.2) + 0.2 * math.log(0.8)
    kl2 = 0.4 * math.log(0.4 / 0.5) + 0.4 * math.log(0.4 / 0.2) + 0.1 * math.log(0.1 / 0.2) + 0.1 * math.log(1.0)
    assert res["n"] == 2
    assert res["kl"] == pytest.approx((kl1 + kl2) / 2, abs=1e-12)
    # question 1: ft is constant -> 0; question 2: 1/sqrt(2) (hand value above)
    assert res["rank_corr"] == pytest.approx((0.0 + 1 / math.sqrt(2)) / 2)


def test_consistency_identical_and_mismatch():
    probs = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
    res = consistency(probs, probs)
    assert res == {"kl": pytest.approx(0.0, abs=1e-12), "rank_corr": pytest.approx(1.0), "n": 2}
    with pytest.raises(ValueError):
        consistency(probs, probs[:1])
    assert consistency([], [])["n"] == 0


# ---------------------------------------------------------------------------------------- properties
_prob = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def _pairs(draw):
    k = draw(st.integers(min_value=2, max_value=6))
    p = draw(st.lists(_prob, min_size=k, max_size=k).filter(lambda v: sum(v) > 1e-6))
    q = draw(st.lists(_prob, min_size=k, max_size=k).filter(lambda v: sum(v) > 1e-6))
    return p, q


@settings(max_examples=60, deadline=None)
@given(_pairs())
def test_kl_is_non_negative(pq):
    p, q = pq
    assert kl_divergence(p, q) >= 0.0


@settings(max_examples=60, deadline=None)
@given(_pairs())
def test_rank_correlation_in_unit_interval(pq):
    p, q = pq
    r = rank_correlation(p, q)
    assert -1.0 <= r <= 1.0
    assert rank_correlation(p, q) == pytest.approx(rank_correlation(q, p))
