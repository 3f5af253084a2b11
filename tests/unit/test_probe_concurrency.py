"""Concurrency statistics: percentiles, queue wait from Ollama's clock, level pooling."""

from __future__ import annotations

from typing import Any

import pytest

from provision.probe.concurrency import (
    LevelRound,
    RequestResult,
    ThreadLoad,
    group_levels,
    level_stats,
    percentile,
    queue_wait_s,
    thread_warning,
)

MS = 1_000_000  # ns


def ollama(total: int, load: int, prompt: int, generate: int, count: int) -> dict[str, Any]:
    return {
        "done": True,
        "total_duration": total * MS,
        "load_duration": load * MS,
        "prompt_eval_duration": prompt * MS,
        "eval_duration": generate * MS,
        "eval_count": count,
    }


def request_event(ttft: float, gaps: list[float], reply: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": True,
        "error": None,
        "ttft_s": ttft,
        "tokens": len(gaps) + 1,
        "gaps_s": gaps,
        "ollama": reply,
    }


def level_event(users: int, wall: float, requests: list[dict[str, Any]], **extra: Any) -> Any:
    return {
        "index": 0,
        "users": users,
        "repeat": 0,
        "num_thread": None,
        "wall_s": wall,
        "agent_cpu_s": 0.02,
        "sampler": {"samples": 20, "cpu_s": 0.004, "wall_s": wall},
        "requests": requests,
        **extra,
    }


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 95, 3.85),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        ([7.0], 95, 7.0),
    ],
)
def test_percentiles_interpolate_between_closest_ranks(
    values: list[float], pct: float, expected: float
) -> None:
    assert percentile(values, pct) == pytest.approx(expected)


def test_no_values_have_no_percentile() -> None:
    assert percentile([], 50) is None


def test_queue_wait_is_what_ollamas_total_leaves_after_load_prompt_and_eval() -> None:
    # 3.0 s in all, 0.1 s scheduling, 0.4 s prompt, 1.5 s generating: 1.0 s waiting for a slot
    assert queue_wait_s(ollama(3000, 100, 400, 1500, 30)) == pytest.approx(1.0)


def test_queue_wait_is_never_negative_and_unknown_without_the_fields() -> None:
    assert queue_wait_s(ollama(1000, 100, 400, 600, 30)) == 0.0
    assert queue_wait_s({"total_duration": 10}) is None


def test_a_level_pools_its_requests_and_rates_tokens_over_its_wall_time() -> None:
    round_ = LevelRound.from_event(
        level_event(
            2,
            4.0,
            [
                request_event(0.5, [0.1, 0.1, 0.3], ollama(2000, 0, 300, 1500, 30)),
                request_event(1.5, [0.2, 0.2], ollama(3900, 0, 300, 2000, 20)),
            ],
        )
    )
    stats = level_stats([round_])

    assert stats.completed == 2 and stats.failed == 0
    assert stats.aggregate_tps == pytest.approx(50 / 4.0)
    assert stats.tps_per_user_p50 == pytest.approx((20.0 + 10.0) / 2)
    assert stats.ttft_p50_s == pytest.approx(1.0) and stats.ttft_max_s == 1.5
    assert stats.ttft_p95_s == pytest.approx(0.5 + 0.95 * 1.0)
    assert stats.itl_p50_s == pytest.approx(0.2) and stats.itl_p95_s == pytest.approx(0.28)
    assert stats.queue_wait_max_s == pytest.approx(1.6)  # 3.9 - 0.3 - 2.0
    assert stats.agent_cpu_pct == pytest.approx(0.5) and stats.sampler_cpu_pct == pytest.approx(0.1)


def test_a_request_failing_mid_run_is_counted_failed_and_the_others_still_reported() -> None:
    failed = {
        "ok": False,
        "error": "an error was encountered while running the model: unexpected EOF",
        "ttft_s": 0.4,
        "tokens": 3,
        "gaps_s": [0.1, 0.1],
        "ollama": {},
    }
    round_ = LevelRound.from_event(
        level_event(2, 2.0, [failed, request_event(0.5, [0.1], ollama(1000, 0, 100, 900, 10))])
    )
    stats = level_stats([round_])

    assert (stats.completed, stats.failed) == (1, 1)
    assert stats.aggregate_tps == pytest.approx(10 / 2.0)  # the failed stream's tokens not counted
    assert stats.ttft_max_s == 0.5 and stats.errors == (failed["error"],)


def test_an_ok_event_without_ollamas_final_object_is_a_failed_request() -> None:
    request = RequestResult.from_event({"ok": True, "tokens": 4, "ollama": {}})
    assert not request.ok and request.error == "the stream did not finish"


def test_levels_are_grouped_by_thread_count_and_users_in_measurement_order() -> None:
    events = [
        level_event(1, 1.0, [request_event(0.2, [], ollama(900, 0, 100, 800, 8))], num_thread=2),
        level_event(2, 1.0, [request_event(0.2, [], ollama(900, 0, 100, 800, 8))], num_thread=2),
        level_event(1, 1.0, [request_event(0.4, [], ollama(900, 0, 100, 800, 8))], num_thread=2),
    ]
    levels = group_levels(LevelRound.from_event(e) for e in events)

    assert [(level.num_thread, level.users, level.repeats) for level in levels] == [
        (2, 1, 2),
        (2, 2, 1),
    ]


def load_with(threads: int | None) -> ThreadLoad:
    return ThreadLoad.from_event(
        {
            "num_thread": threads,
            "ok": True,
            "load_duration": 2_500_000_000,
            "wall_s": 3.0,
            "runners": [{"pid": 42, "name": "llama-server", "argv_threads": threads, "tasks": 9}],
        }
    )


def test_more_runner_threads_than_vcpus_is_warned_about() -> None:
    warning = thread_warning(load_with(8), vcpus=2)
    assert warning is not None and "8 threads" in warning and "2 vCPU" in warning
    assert load_with(8).load_s == pytest.approx(2.5)


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_runner_threads_within_the_vcpus_are_not_warned_about(threads: int | None) -> None:
    assert thread_warning(load_with(threads), vcpus=2) is None


def test_a_load_without_ollamas_duration_is_timed_by_the_guest() -> None:
    # Ollama answers a prompt-less load request without durations (server/routes.go:478-483)
    load = ThreadLoad.from_event({"num_thread": 1, "ok": True, "load_wall_s": 4.2, "wall_s": 6.0})
    assert load.load_s == pytest.approx(4.2)
