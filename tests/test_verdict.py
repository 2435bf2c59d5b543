"""The verdict rule (``mvq.metrics.verdict``): known answers and the interval's arithmetic."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from mvq.metrics import verdict as v


def test_welch_interval_matches_scipy():
    a, b = [10.0, 12.0, 11.0, 13.0], [14.0, 18.0, 15.0]
    iv = v.welch(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert iv.delta == pytest.approx(sum(a) / 4 - sum(b) / 3)
    assert (iv.low, iv.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert iv.df == pytest.approx(res.df) and iv.n == 3


def test_paired_interval_matches_scipy():
    a, b = [5.0, 7.0, 6.5, 9.0], [6.0, 7.5, 8.0, 9.2]
    iv = v.paired(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (iv.low, iv.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert iv.paired and iv.n == 4


def test_slope_interval_matches_scipy():
    xs = [0.0, 0.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0]
    ys = [190.0, 185.0, 160.0, 158.0, 150.0, 152.0, 136.0, 140.0]
    iv = v.slope(xs, ys)
    fit = stats.linregress(xs, ys)
    h = stats.t.ppf(0.975, len(xs) - 2) * fit.stderr
    assert iv.delta == pytest.approx(fit.slope)
    assert (iv.low, iv.high) == (pytest.approx(fit.slope - h), pytest.approx(fit.slope + h))


def test_contrast_of_two_gains_adds_four_variances():
    groups = [
        (1.0, [180.0, 184.0]),
        (-1.0, [130.0, 140.0]),
        (-1.0, [150.0, 144.0]),
        (1.0, [128.0, 131.0]),
    ]
    iv = v.contrast(groups)
    assert iv.delta == pytest.approx(182 - 135 - 147 + 129.5)
    var = (8 + 50 + 18 + 4.5) / 2
    assert iv.half_width / math.sqrt(var) == pytest.approx(stats.t.ppf(0.975, iv.df))
    assert iv.weight == 4.0


def test_identical_inputs_are_equivalent():
    a = [100.0, 101.0, 99.0, 100.5, 99.5]
    verdict = v.compare(a, list(a), floor=0.8)
    assert verdict.word == "equivalent" and verdict.interval.delta == 0.0
    assert "equivalent within ±δ" in verdict.text()


@pytest.mark.parametrize(
    ("lower", "shift", "word"),
    [
        (True, -30.0, "better"),
        (True, 30.0, "worse"),
        (False, 30.0, "better"),
        (False, -30.0, "worse"),
    ],
)
def test_a_clear_shift_is_better_or_worse_in_the_right_direction(lower, shift, word):
    base = [100.0, 101.0, 99.0, 100.5, 99.5]
    method = [x + shift for x in base]
    assert v.compare(method, base, floor=0.8, lower_is_better=lower).word == word


def test_two_seeds_with_a_large_spread_are_unresolved_and_say_how_many_seeds():
    verdict = v.compare([100.0, 140.0], [110.0, 150.0], floor=0.8)
    assert verdict.word == "unresolved" and verdict.seeds_needed is not None
    assert verdict.seeds_needed > 2 and "seeds per side would decide it" in verdict.text()
    # with that many seeds at the same spread, the interval would exclude 0 or sit inside ±δ
    n, iv = verdict.seeds_needed, verdict.interval
    sd = iv.half_width / stats.t.ppf(0.975, iv.df) / math.sqrt(2 / iv.n)
    h = stats.t.ppf(0.975, 2 * n - 2) * sd * math.sqrt(2 / n)
    assert h < max(abs(iv.delta), verdict.margin - abs(iv.delta))
    h_before = stats.t.ppf(0.975, 2 * (n - 1) - 2) * sd * math.sqrt(2 / (n - 1))
    assert h_before >= max(abs(iv.delta), verdict.margin - abs(iv.delta))


def test_margin_is_five_percent_never_below_three_floors():
    assert v.margin(180.0, 0.8) == pytest.approx(9.0)
    assert v.margin(20.0, 0.8) == pytest.approx(2.4)


def test_a_real_difference_smaller_than_the_margin_is_equivalent():
    base = [100.0, 100.1, 99.9, 100.0]
    method = [x + 1.0 for x in base]  # excludes 0, inside ±5
    assert v.compare(method, base, floor=0.1).word == "equivalent"


def test_fewer_than_two_seeds_is_not_measured_yet():
    assert v.compare([1.0], [2.0, 3.0], floor=0.1).word == "not measured yet"
    assert v.compare([], [], floor=0.1).word == "not measured yet"
