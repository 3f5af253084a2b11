"""Statistics of repeated runs: the median, its 95 % confidence interval, and when `--runs auto`
has measured enough.

The interval is the distribution-free one for a median, from order statistics: with n runs,
[x(k), x(n-k+1)] covers the true median with probability 1 - 2 P(B <= k-1), B ~ Binomial(n, 1/2).
It needs no assumption about the shape of tok/s noise (a VM's is skewed: a neighbour's burst only
ever slows a run) and no random resampling, so the same runs always give the same interval. It
exists from 6 runs on (with 5, even [min, max] covers only 93.75 %).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
AUTO_MIN_RUNS = 6  # the fewest runs with a 95 % interval for the median
AUTO_MAX_RUNS = 20  # `--runs auto` stops here even when the interval is still wide
AUTO_TARGET = 0.05  # ... or once the interval is within +-5 % of the median


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    n: int
    ci_low: float | None = None  # 95 % confidence interval of the median (None below 6 values)
    ci_high: float | None = None

    @property
    def half_width(self) -> float | None:
        """The larger distance from the median to an end of its interval: the `±` shown."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return max(self.median - self.ci_low, self.ci_high - self.median)

    def within(self, fraction: float) -> bool:
        """True when the median's interval lies within +-fraction of the median."""
        width = self.half_width
        return width is not None and width <= fraction * abs(self.median)


def stat(values: Iterable[float | int | None]) -> Stat | None:
    known = [float(v) for v in values if v is not None]
    if not known:
        return None
    interval = median_interval(known)
    low, high = interval if interval is not None else (None, None)
    return Stat(
        median=statistics.median(known),
        min=min(known),
        max=max(known),
        n=len(known),
        ci_low=low,
        ci_high=high,
    )


def median_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """The order-statistic confidence interval of the median; None when n is too small."""
    n = len(values)
    k = _interval_rank(n, confidence)
    if k is None:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def _interval_rank(n: int, confidence: float) -> int | None:
    """The largest k with P(k <= B <= n-k) >= confidence for B ~ Binomial(n, 1/2)."""
    best = None
    tail = 0.0  # P(B <= k-1)
    for k in range(1, n // 2 + 1):
        tail += math.comb(n, k - 1) / 2**n
        if 1 - 2 * tail < confidence:
            break
        best = k
    return best


def auto_runs_done(eval_tps: Stat | None, attempted: int, max_runs: int) -> bool:
    """`--runs auto`: stop once the median eval tok/s is known to +-5 % or max_runs ran."""
    if attempted >= max_runs:
        return True
    return eval_tps is not None and eval_tps.within(AUTO_TARGET)
