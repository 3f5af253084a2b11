"""The median's 95 % interval from order statistics, and when `--runs auto` has measured enough."""

from __future__ import annotations

import pytest

from provision.probe.stats import (
    AUTO_MIN_RUNS,
    auto_runs_done,
    median_interval,
    stat,
)


def test_five_runs_have_no_95_percent_interval_for_the_median() -> None:
    # even [min, max] of 5 covers the median with 1 - 2/32 = 93.75 % only
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert stat([1, 2, 3, 4, 5]).ci_low is None  # type: ignore[union-attr]


def test_six_runs_give_min_to_max_as_the_interval() -> None:
    assert AUTO_MIN_RUNS == 6
    assert median_interval([9.0, 10.0, 11.0, 10.5, 9.5, 10.2]) == (9.0, 11.0)


@pytest.mark.parametrize(
    ("n", "ranks"),
    # the classic table of distribution-free 95 % intervals for a median (1-based ranks)
    [(8, (1, 8)), (9, (2, 8)), (12, (3, 10)), (20, (6, 15)), (30, (10, 21))],
)
def test_interval_ranks_match_the_binomial_table(n: int, ranks: tuple[int, int]) -> None:
    values = [float(i) for i in range(1, n + 1)]
    assert median_interval(values[::-1]) == (float(ranks[0]), float(ranks[1]))


def test_the_plus_minus_is_the_larger_side_of_the_interval() -> None:
    found = stat([10.0, 10.1, 10.2, 10.3, 10.4, 11.0])
    assert found is not None
    assert found.median == pytest.approx(10.25)
    assert found.half_width == pytest.approx(0.75)  # 11.0 - 10.25 is larger than 10.25 - 10.0
    assert not found.within(0.05)
    assert found.within(0.08)


def test_auto_stops_once_the_interval_is_within_five_percent() -> None:
    tight = stat([10.0, 10.1, 10.2, 10.2, 10.3, 10.4])
    wide = stat([8.0, 10.1, 10.2, 10.2, 10.3, 12.0])
    assert auto_runs_done(tight, attempted=6, max_runs=20)
    assert not auto_runs_done(wide, attempted=6, max_runs=20)
    assert auto_runs_done(wide, attempted=20, max_runs=20)  # the most runs allowed
    assert not auto_runs_done(None, attempted=3, max_runs=20)  # no good run yet
