"""One rule that turns per-seed numbers into a verdict: an interval of the difference against a
margin fixed in advance.

A comparison is a linear contrast of group means, ``Δ = Σ c_i · mean_i`` (method minus
baseline: ``c = (+1, -1)``; the difference of two gains: four groups), with a 95% confidence
interval from Student's t on Welch–Satterthwaite degrees of freedom::

    se² = Σ c_i² s_i² / n_i        df = se⁴ / Σ (c_i² s_i² / n_i)² / (n_i - 1)

or, where both sides share their units (the same tokenizer seed by seed), a paired interval
on the per-unit differences (t on n - 1 degrees of freedom). A practical margin δ, stated
before the runs, says which differences are too small to matter. The words, in order:

- **equivalent within ±δ**: the interval lies inside (-δ, δ) (a real difference smaller than δ
  is still too small to matter);
- **better** / **worse**: the interval excludes 0 on the side that is better / worse for this
  metric;
- **unresolved**: neither; ``seeds_needed`` says how many seeds per side the observed spread
  would need for the interval to decide, if the observed difference held.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95
MAX_SEEDS = 1000  # seeds_needed stops looking here


@dataclass(frozen=True)
class Interval:
    """A difference ``delta`` with its two-sided interval ``[low, high]`` and degrees of freedom
    (``inf`` when the spread is zero); ``n`` is the seeds per side (the smallest group)."""

    delta: float
    low: float
    high: float
    df: float
    n: int
    paired: bool = False
    weight: float = 2.0  # Σ c_i²: the variance of Δ is weight · sd² / n at n seeds a side
    units: str = "seeds"  # what n counts ("cells" for a slope over cells)
    sizes: tuple[int, ...] = ()  # values per group, as given

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Verdict:
    """An interval, the margin it was judged against, and the word."""

    interval: Interval | None
    margin: float
    word: str  # "better", "worse", "equivalent", "unresolved" or "not measured yet"
    seeds_needed: int | None = None  # per side, for "unresolved"

    def text(self, fmt: str = "{:+.1f}") -> str:
        """``Δ +1.2 [−0.3, +2.7], δ 4.5: **unresolved** (needs ~7 seeds per side)``."""
        iv = self.interval
        if iv is None:
            return f"**{self.word}**"
        ci = f"[{fmt.format(iv.low)}, {fmt.format(iv.high)}]"
        name = "b" if iv.units == "cells" else "Δ"
        n = iv.n if len(set(iv.sizes)) <= 1 else " vs ".join(str(k) for k in iv.sizes)
        head = f"{name} {fmt.format(iv.delta)} {ci} ({n} {iv.units}), δ {self.margin:.1f}: "
        word = "equivalent within ±δ" if self.word == "equivalent" else self.word
        return head + f"**{word}**" + self._need()

    def _need(self) -> str:
        if self.word != "unresolved" or self.seeds_needed is None:
            return ""
        if self.seeds_needed > MAX_SEEDS:
            return f" (more than {MAX_SEEDS} seeds per side would be needed)"
        unit = "pairs" if self.interval and self.interval.paired else "seeds per side"
        return f" (about {self.seeds_needed} {unit} would decide it)"


def _t(df: float) -> float:
    return float(stats.t.ppf(0.5 + LEVEL / 2, df)) if math.isfinite(df) else 1.959963984540054


def contrast(groups: Sequence[tuple[float, Sequence[float]]]) -> Interval | None:
    """Interval of ``Σ c_i · mean(values_i)`` over ``(c_i, values_i)``; None when a group has
    fewer than 2 values (no spread to estimate)."""
    if not groups or any(len(v) < 2 for _, v in groups):
        return None
    delta, var, dof_denominator, weight = 0.0, 0.0, 0.0, 0.0
    for c, values in groups:
        n = len(values)
        mean = math.fsum(values) / n
        s2 = math.fsum((x - mean) ** 2 for x in values) / (n - 1)
        delta += c * mean
        weight += c * c
        term = c * c * s2 / n
        var += term
        dof_denominator += term * term / (n - 1)
    se = math.sqrt(var)
    df = var * var / dof_denominator if dof_denominator > 0 else math.inf
    h = _t(df) * se
    n_min = min(len(v) for _, v in groups)
    sizes = tuple(len(v) for _, v in groups)
    return Interval(delta, delta - h, delta + h, df, n_min, weight=weight, sizes=sizes)


def welch(method: Sequence[float], baseline: Sequence[float]) -> Interval | None:
    """Method minus baseline, Welch's interval (unequal variances)."""
    return contrast([(1.0, method), (-1.0, baseline)])


def paired(method: Sequence[float], baseline: Sequence[float]) -> Interval | None:
    """Method minus baseline unit by unit (same order): a one-sample t interval of the
    differences; None below 2 pairs."""
    if len(method) != len(baseline):
        raise ValueError(f"paired values differ in count: {len(method)} vs {len(baseline)}")
    diffs = [a - b for a, b in zip(method, baseline, strict=True)]
    if len(diffs) < 2:
        return None
    iv = contrast([(1.0, diffs)])
    assert iv is not None
    n = len(diffs)
    return Interval(iv.delta, iv.low, iv.high, iv.df, n, True, 1.0, "pairs", (n,))


def slope(xs: Sequence[float], ys: Sequence[float]) -> Interval | None:
    """Least-squares slope of ``ys`` on ``xs`` with its interval (t on n - 2 degrees of
    freedom); None with fewer than 3 points or fewer than 2 distinct x."""
    n = len(xs)
    if n < 3 or len(set(xs)) < 2:
        return None
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    b = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    rss = math.fsum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    df = n - 2
    se = math.sqrt(rss / df / sxx)
    h = _t(df if se > 0 else math.inf) * se
    return Interval(b, b - h, b + h, float(df), n, weight=n / sxx, units="cells")


def margin(baseline_mean: float, floor: float, fraction: float = 0.05) -> float:
    """The practical margin δ: ``fraction`` of the baseline's mean, never below 3× the floor
    (the metric between two real samples of the comparison's size)."""
    return max(fraction * abs(baseline_mean), 3.0 * floor)


def word(interval: Interval | None, delta_margin: float, lower_is_better: bool = True) -> str:
    """The word for an interval of method minus baseline (see the module docstring)."""
    if interval is None:
        return "unresolved"
    if -delta_margin < interval.low and interval.high < delta_margin:
        return "equivalent"
    if interval.high < 0 or interval.low > 0:
        below = interval.high < 0
        return "better" if below == lower_is_better else "worse"
    return "unresolved"


def _half_width(n: int, sd: float, interval: Interval) -> float:
    df = n - 1 if interval.paired else 2 * n - 2
    return _t(df) * sd * math.sqrt(interval.weight / n)


def seeds_needed(interval: Interval, delta_margin: float) -> int | None:
    """Seeds per side (more than the interval has) for which an interval of the observed
    spread would decide, if the observed difference held: its half-width below ``|Δ|``
    (excludes 0) or below ``δ - |Δ|`` (inside ±δ), on ``2n - 2`` degrees of freedom (``n - 1``
    paired). ``MAX_SEEDS + 1`` when even that many would not do."""
    target = max(abs(interval.delta), delta_margin - abs(interval.delta))
    if target <= 0:
        return MAX_SEEDS + 1
    # the spread per unit implied by the interval: half-width = t · sd · sqrt(weight / n)
    sd = interval.half_width / _t(interval.df) / math.sqrt(interval.weight / interval.n)
    if sd == 0:
        return interval.n
    # more than today's (which did not decide): the normal approximation, then exact
    n = max(interval.n + 1, math.ceil(interval.weight * (_t(math.inf) * sd / target) ** 2))
    while n <= MAX_SEEDS and _half_width(n, sd, interval) >= target:
        n += 1
    return n


def decide(interval: Interval | None, delta_margin: float, lower_is_better: bool = True) -> Verdict:
    """The verdict for ``interval`` against ``delta_margin`` (None: "not measured yet")."""
    if interval is None:
        return Verdict(None, delta_margin, "not measured yet")
    w = word(interval, delta_margin, lower_is_better)
    need = seeds_needed(interval, delta_margin) if w == "unresolved" else None
    return Verdict(interval, delta_margin, w, need)


def compare(
    method: Sequence[float],
    baseline: Sequence[float],
    floor: float,
    lower_is_better: bool = True,
    paired_: bool = False,
) -> Verdict:
    """Method against baseline, per-seed values, with the margin of the baseline's mean:
    the whole rule in one call ("not measured yet" below 2 values a side)."""
    iv = paired(method, baseline) if paired_ else welch(method, baseline)
    delta_margin = margin(math.fsum(baseline) / len(baseline), floor) if baseline else math.nan
    return decide(iv, delta_margin, lower_is_better)
