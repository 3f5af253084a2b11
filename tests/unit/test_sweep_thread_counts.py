"""A sweep over runner thread counts (`--num-thread auto,1,2`): each shape counts with its best
thread count, and the report says which and what each gave."""

from __future__ import annotations

from provision.probe.concurrency import LevelRound, RequestResult
from provision.probe.result import ProbeOptions, ProbeResult
from provision.report.model import describe_point
from provision.shape import Shape
from provision.sweep.lab import measurement_from_probe
from provision.sweep.model import Status

SHAPE = Shape(2, 4096, "host")


def level(num_thread: int | None, users: int, tps: float) -> LevelRound:
    """`users` requests of 32 tokens, each at `tps`, together in 32 / tps seconds."""
    request = RequestResult(
        ok=True, error=None, ttft_s=0.5, queue_wait_s=0.01, eval_count=32, eval_tps=tps, tokens=32
    )
    return LevelRound(
        index=0,
        users=users,
        repeat=0,
        num_thread=num_thread,
        wall_s=32 / tps,
        agent_cpu_s=None,
        sampler_cpu_s=None,
        sampler_wall_s=None,
        samples=0,
        requests=(request,) * users,
        peak_mem_used=2_500 << 20,
    )


def probed(*rounds: LevelRound) -> ProbeResult:
    return ProbeResult(vm="gemma", options=ProbeOptions(), rounds=list(rounds), complete=True)


def test_a_shape_counts_with_its_best_thread_count_and_says_what_each_gave() -> None:
    result = probed(level(None, 1, 9.8), level(1, 1, 6.1), level(2, 1, 10.4))

    measured = measurement_from_probe(SHAPE, result, {"probe_id": 7})

    assert measured.status is Status.OK and measured.eval_tps == 10.4
    assert measured.details["num_thread"] == "2"
    assert measured.details["by_num_thread"] == {"auto": 9.8, "1": 6.1, "2": 10.4}
    assert measured.details["probe_id"] == 7
    assert describe_point(measured).endswith(
        ", best with num_thread 2 (auto 9.8, 1 6.1, 2 10.4 tok/s)"
    )


def test_with_users_the_best_thread_count_is_the_busiest_levels() -> None:
    # one thread count is faster alone, the other serves two users better
    result = probed(level(None, 1, 10.0), level(None, 2, 4.0), level(2, 1, 9.0), level(2, 2, 6.0))

    measured = measurement_from_probe(SHAPE, result, {})

    assert measured.details["num_thread"] == "2"
    assert [(lv.users, lv.tps_per_user) for lv in measured.levels] == [(1, 9.0), (2, 6.0)]


def test_one_thread_count_is_reported_as_before() -> None:
    measured = measurement_from_probe(SHAPE, probed(level(None, 1, 9.8)), {})
    assert "num_thread" not in measured.details
    assert (
        describe_point(measured)
        == "2 vCPU / 4 GiB (cpu=host): 9.8 tok/s, TTFT 500 ms, 2.4 GiB peak used"
    )
