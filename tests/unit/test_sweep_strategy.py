"""Sweep strategies on tables of known results: smart finds grid's minimum with far fewer probes."""

from __future__ import annotations

import random

import pytest

from provision.shape import Shape
from provision.sweep.model import FreeMemTarget, Measurement, Space, Status, Targets, evaluate
from provision.sweep.strategy import (
    NOT_REACHED,
    Skip,
    explain_unprobed,
    order_for_reboots,
    pareto_frontier,
    search,
)
from tests.support.replay import Replay, count_reboots, needs_reboot, one_at_a_time
from tests.support.sweep_tables import MATRIX, gemma_table, random_monotone_table

G = 1024


def run(
    space: Space, table: dict[Shape, Measurement], targets: Targets, strategy: str, width: int = 1
) -> tuple[Measurement | None, Replay]:
    replay = Replay(table)
    result = search(space, targets, one_at_a_time(replay), strategy=strategy, width=width)
    return result.minimum, replay


def ok(
    cores: int,
    ram_gib: int,
    tps: float,
    *,
    cpu: str = "host",
    ttft: float = 1.0,
    used_gib: float = 3.0,
) -> Measurement:
    return Measurement(
        Shape(cores, ram_gib * G, cpu),
        Status.OK,
        eval_tps=tps,
        ttft_s=ttft,
        mem_total_mib=ram_gib * G,
        peak_used_mib=int(used_gib * G),
    )


def oom(cores: int, ram_gib: int, *, cpu: str = "host") -> Measurement:
    return Measurement(Shape(cores, ram_gib * G, cpu), Status.OOM, error="runner OOM-killed")


@pytest.mark.parametrize(
    "targets",
    [
        Targets(min_tps=10),
        Targets(min_tps=4),
        Targets(min_tps=5, max_ttft_s=1.0),
        Targets(min_tps=2, min_free_mem=FreeMemTarget(percent=40)),
        Targets(min_free_mem=FreeMemTarget(mib=10 * G)),
        Targets(max_ttft_s=0.65),
    ],
)
def test_smart_finds_the_grid_minimum_with_at_most_half_the_probes(targets: Targets) -> None:
    grid_min, grid_probes = run(MATRIX, gemma_table(), targets, "grid")
    smart_min, smart_probes = run(MATRIX, gemma_table(), targets, "smart")
    assert grid_min is not None
    assert smart_min == grid_min
    assert len(smart_probes.probed) * 2 <= len(grid_probes.probed)
    assert smart_probes.reboots * 2 <= grid_probes.reboots


def test_the_minimum_is_fewest_cores_then_least_ram() -> None:
    minimum, _ = run(MATRIX, gemma_table(), Targets(min_tps=10), "smart")
    assert minimum is not None
    assert minimum.shape == Shape(4, 4 * G, "host")  # 2 GiB is OOM, 2 cores make 5.9 tok/s


def test_plateau_gives_the_knee_not_the_fastest_shape() -> None:
    space = Space((1, 2, 4, 8, 16), (8 * G,), ("host",))
    table = {
        m.shape: m for m in [ok(1, 8, 3), ok(2, 8, 6), ok(4, 8, 9), ok(8, 8, 9.0), ok(16, 8, 9.0)]
    }
    assert run(space, table, Targets(min_tps=9), "smart")[0] == table[Shape(4, 8 * G)]
    assert run(space, table, Targets(min_tps=9), "grid")[0] == table[Shape(4, 8 * G)]


def test_oom_threshold_makes_smaller_ram_infeasible_without_probing_it() -> None:
    space = Space((2,), (2 * G, 3 * G, 4 * G, 6 * G, 8 * G, 16 * G), ("host",))
    table = {
        m.shape: m
        for m in [oom(2, 2), oom(2, 3), oom(2, 4), ok(2, 6, 5), ok(2, 8, 5), ok(2, 16, 5)]
    }
    replay = Replay(table)
    result = search(space, Targets(min_tps=4), one_at_a_time(replay), strategy="smart")
    assert result.minimum == table[Shape(2, 6 * G)]
    assert Shape(2, 2 * G) not in replay.probed
    assert Shape(2, 2 * G) in result.inferred
    assert "lacked memory" in result.inferred[Shape(2, 2 * G)]


def test_no_feasible_shape_gives_no_minimum_but_the_best_seen() -> None:
    replay = Replay(gemma_table())
    result = search(MATRIX, Targets(min_tps=50), one_at_a_time(replay), strategy="smart")
    assert result.minimum is None
    assert result.pareto == ()
    assert result.best_seen is not None and result.best_seen.eval_tps == 12.5
    assert len(replay.probed) <= 4  # the largest core counts rule out everything below


def test_nothing_fits_at_all() -> None:
    space = Space((1, 2), (1 * G, 2 * G), ("host",))
    table = {m.shape: m for m in [oom(1, 1), oom(1, 2), oom(2, 1), oom(2, 2)]}
    result = search(space, Targets(min_tps=1), one_at_a_time(Replay(table)))
    assert result.minimum is None and result.best_seen is None


def test_tie_between_cpu_types_goes_to_more_tokens_then_the_first_listed() -> None:
    v2 = "x86-64-v2-AES"
    space = Space((2, 4), (4 * G,), (v2, "host"))
    faster = {
        m.shape: m
        for m in [
            ok(2, 4, 3, cpu=v2),
            ok(4, 4, 6, cpu=v2),
            ok(2, 4, 3, cpu="host"),
            ok(4, 4, 8, cpu="host"),
        ]
    }
    for strategy in ("smart", "grid"):
        minimum, _ = run(space, faster, Targets(min_tps=5), strategy)
        assert minimum is not None and minimum.shape == Shape(4, 4 * G, "host")
    equal = {
        m.shape: m
        for m in [
            ok(2, 4, 3, cpu=v2),
            ok(4, 4, 8, cpu=v2),
            ok(2, 4, 3, cpu="host"),
            ok(4, 4, 8, cpu="host"),
        ]
    }
    for strategy in ("smart", "grid"):
        minimum, _ = run(space, equal, Targets(min_tps=5), strategy)
        assert minimum is not None and minimum.shape.cpu_type == "x86-64-v2-AES"


def test_a_failed_probe_counts_as_not_meeting_the_targets_and_is_listed() -> None:
    space = Space((1, 2, 4), (4 * G,), ("host",))
    table = {m.shape: m for m in [ok(1, 4, 3), ok(4, 4, 9)]}  # 2 cores missing: probe fails
    result = search(space, Targets(min_tps=5), one_at_a_time(Replay(table)))
    assert result.minimum == table[Shape(4, 4 * G)]
    assert [m.shape for m in result.failed] == [Shape(2, 4 * G)]


@pytest.mark.parametrize("seed", range(300))
def test_smart_equals_grid_on_random_monotone_tables(seed: int) -> None:
    rng = random.Random(seed)
    space, table = random_monotone_table(rng)
    targets = Targets(
        min_tps=rng.choice([None, 0.5, 1.0, 2.0, 4.0, 8.0, 30.0]),
        max_ttft_s=rng.choice([None, 2.0, 5.0, 20.0]),
        min_free_mem=rng.choice([None, FreeMemTarget(percent=50), FreeMemTarget(mib=2 * G)]),
    )
    grid_min, grid_replay = run(space, table, targets, "grid")
    smart_min, smart_replay = run(space, table, targets, "smart")
    assert smart_min == grid_min
    assert len(smart_replay.probed) <= len(grid_replay.probed)
    wide_min, _ = run(space, table, targets, "smart", width=3)
    assert wide_min == grid_min


@pytest.mark.parametrize("seed", range(300))
def test_every_shape_smart_skips_is_explained_and_the_explanation_holds(seed: int) -> None:
    rng = random.Random(seed)
    space, table = random_monotone_table(rng)
    targets = Targets(
        min_tps=rng.choice([None, 1.0, 2.0, 4.0, 30.0]),
        min_free_mem=rng.choice([None, FreeMemTarget(percent=50)]),
    )
    result = search(
        space, targets, one_at_a_time(Replay(table)), strategy="smart", width=rng.choice([1, 2, 3])
    )
    measured = {m.shape for m in result.measurements}
    parts = [measured, set(result.inferred), set(result.unprobed)]
    assert sum(map(len, parts)) == len(space) and set().union(*parts) == set(space.shapes())
    for shape, unprobed in result.unprobed.items():
        assert unprobed.skip is not Skip.NOT_REACHED, shape  # a finished search explains all
        if unprobed.misses:  # the table agrees: it really misses
            assert not evaluate(table[shape], targets).feasible, (shape, unprobed)
        else:  # it really could not have been the minimum
            assert result.minimum is not None
            least = result.minimum.shape
            assert (shape.cores, shape.memory_mib) >= (least.cores, least.memory_mib)


def test_a_shape_with_more_cores_than_the_minimum_is_not_probed_and_says_so() -> None:
    space = Space((1, 2), (1 * G, 2 * G), ("host",))
    table = {m.shape: m for m in [oom(1, 1), ok(1, 2, 5), oom(2, 1), ok(2, 2, 9)]}
    replay = Replay(table)
    result = search(space, Targets(min_tps=4), one_at_a_time(replay))
    assert result.minimum == table[Shape(1, 2 * G)]
    assert Shape(2, 1 * G) not in replay.probed
    assert result.unprobed[Shape(2, 1 * G)].why == "not probed: more cores than the minimum"
    assert result.unprobed[Shape(2, 1 * G)].misses is False  # it might OOM: verdict unknown


def test_unprobed_shapes_name_the_miss_that_rules_them_out_or_the_minimum() -> None:
    space = Space((1, 2, 4), (2 * G, 4 * G, 8 * G, 16 * G), ("host",))
    table = {m.shape: m for m in [ok(1, 16, 3), ok(2, 16, 6), ok(4, 16, 9), ok(2, 4, 6), oom(2, 2)]}
    result = search(space, Targets(min_tps=5), one_at_a_time(Replay(table)))
    assert result.minimum == table[Shape(2, 4 * G)]
    assert result.unprobed[Shape(1, 4 * G)].why == (
        "not probed: ruled out by 1 vCPU / 16 GiB (cpu=host), which missed (3.0 tok/s < 5)"
    )
    assert result.unprobed[Shape(1, 4 * G)].misses
    assert result.unprobed[Shape(2, 8 * G)].why == "not probed: more RAM than the minimum"
    assert result.unprobed[Shape(4, 2 * G)].skip is Skip.CANNOT_WIN


def test_a_shape_under_a_measured_oom_is_ruled_out_by_it() -> None:
    space = Space((1, 2), (1 * G, 2 * G), ("host",))
    reasons = explain_unprobed(space, Targets(min_tps=4), {Shape(2, 2 * G): oom(2, 2)}, {}, None)
    assert (
        reasons[Shape(1, 1 * G)].why == "not probed: ruled out by OOM at 2 vCPU / 2 GiB (cpu=host)"
    )
    assert all(reasons[s].misses for s in (Shape(1, 1 * G), Shape(1, 2 * G), Shape(2, 1 * G)))


def test_an_interrupted_search_says_which_shapes_it_had_not_reached() -> None:
    space = Space((1, 2, 4), (4 * G,), ("host",))
    reasons = explain_unprobed(
        space, Targets(min_tps=5), {Shape(2, 4 * G): ok(2, 4, 6)}, {}, ok(2, 4, 6)
    )
    assert reasons[Shape(1, 4 * G)].why == NOT_REACHED  # could still be a smaller minimum
    assert reasons[Shape(1, 4 * G)].skip is Skip.NOT_REACHED
    assert reasons[Shape(4, 4 * G)].skip is Skip.CANNOT_WIN


def test_wider_batches_measure_several_shapes_per_round() -> None:
    batches: list[list[Shape]] = []

    def measure_batch(batch: list[Shape]) -> list[Measurement]:
        batches.append(batch)
        return [gemma_table()[s] for s in batch]

    search(MATRIX, Targets(min_tps=10), measure_batch, strategy="smart", width=2)
    assert max(len(b) for b in batches) == 2
    assert len(batches) < 6


def test_pareto_frontier_drops_dominated_points() -> None:
    a, b, c, d = ok(2, 8, 6), ok(4, 4, 10), ok(4, 8, 10), ok(8, 4, 12)
    assert pareto_frontier([a, b, c, d]) == (a, b, d)  # c: same speed as b with more RAM


def test_grid_order_starts_at_the_current_shape_and_groups_ram_changes() -> None:
    shapes = MATRIX.shapes()
    start = Shape(4, 8 * G, "host")
    ordered = order_for_reboots(shapes, start)
    assert ordered[0] == start
    assert sorted(ordered) == sorted(shapes)
    assert count_reboots(ordered, start) == len(shapes) - 1
    groups = len({(s.cores, s.cpu_type) for s in shapes})
    assert count_reboots(ordered, start, hot_ram=True) <= groups + 1


def test_every_change_of_shape_is_a_reboot_unless_ram_grows_on_a_hotplug_vm() -> None:
    a = Shape(2, 4 * G)
    assert not needs_reboot(a, a)
    assert needs_reboot(None, a)
    assert needs_reboot(a, a.with_(memory_mib=8 * G))
    assert not needs_reboot(a, a.with_(memory_mib=8 * G), hot_ram=True)
    assert needs_reboot(a, a.with_(memory_mib=2 * G), hot_ram=True)
    assert needs_reboot(a, a.with_(cpu_type="kvm64"), hot_ram=True)
