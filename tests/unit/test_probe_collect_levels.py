"""collect() with concurrency levels: loads counted apart, each level kept as it arrives, the
thread warning, invalid shapes refused before any measurement, all-failed levels an error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from provision.errors import ExitCode, InvalidShape, ModelDoesNotFit, ProbeError
from provision.probe.collect import collect
from provision.probe.concurrency import LevelRound, ThreadLoad
from provision.probe.facts import GuestFacts
from provision.probe.parse import RunResult
from provision.probe.result import ProbeOptions
from provision.probe.shape_check import ExpectedShape
from tests.support.reporting import RecordingReporter

OPTIONS = ProbeOptions(runs=1, warmup=0, concurrency=(1, 2), thread_counts=(None, 4))
FACTS = {
    "event": "facts",
    "vcpus": 2,
    "mem_total": 4 << 30,
    "topology": {"processors": 2, "sockets": 1, "cores": 2, "threads_per_core": 1},
    "ollama_num_parallel": 2,
    "tags_entry": {"name": "gemma2:2b", "size": 1629518495},
}
REPLY = {
    "done": True,
    "total_duration": 2_000_000_000,
    "load_duration": 1_000_000,
    "prompt_eval_duration": 300_000_000,
    "eval_duration": 1_500_000_000,
    "eval_count": 16,
}


def load(threads: int | None) -> dict[str, Any]:
    return {
        "event": "thread_load",
        "num_thread": threads,
        "ok": True,
        "load_duration": 3_000_000_000,
        "wall_s": 3.5,
        "runners": [{"pid": 9, "name": "llama-server", "argv_threads": threads, "tasks": 8}],
    }


def level(users: int, threads: int | None, *, ok: bool = True) -> dict[str, Any]:
    request: dict[str, Any] = {"ok": ok, "error": None if ok else "boom", "ttft_s": 0.4}
    request |= {"tokens": 16, "gaps_s": [0.09] * 15, "ollama": REPLY if ok else {}}
    return {
        "event": "level",
        "users": users,
        "num_thread": threads,
        "wall_s": 2.1,
        "sampler": {"samples": 21, "cpu_s": 0.003, "wall_s": 2.1},
        "requests": [request] * users,
    }


class Keeper:
    def __init__(self) -> None:
        self.facts: list[GuestFacts] = []
        self.levels: list[LevelRound] = []
        self.loads: list[ThreadLoad] = []

    def on_facts(self, facts: GuestFacts) -> None:
        self.facts.append(facts)

    def on_run(self, run: RunResult) -> None:
        raise AssertionError("a level probe has no runs")

    def on_level(self, level: LevelRound) -> None:
        self.levels.append(level)

    def on_thread_load(self, load: ThreadLoad) -> None:
        self.loads.append(load)


def lines(*events: dict[str, Any]) -> list[str]:
    return [json.dumps(e) for e in events]


def test_levels_and_loads_are_kept_as_they_arrive_and_summarised() -> None:
    keeper, reporter = Keeper(), RecordingReporter()
    events = lines(
        FACTS,
        load(None),
        level(1, None),
        level(2, None),
        load(4),
        level(1, 4),
        level(2, 4),
        {"event": "end"},
    )
    result = collect(events, OPTIONS, reporter, keeper, vm="gemma")

    assert [lv.users for lv in keeper.levels] == [1, 2, 1, 2]
    assert [ld.num_thread for ld in keeper.loads] == [None, 4]
    assert [(lv.num_thread, lv.users, lv.completed) for lv in result.levels] == [
        (None, 1, 1),
        (None, 2, 2),
        (4, 1, 1),
        (4, 2, 2),
    ]
    assert any("4 threads but the guest has 2 vCPU(s)" in w for w in result.warnings)
    document = result.to_json()
    assert [lv["users"] for lv in document["levels"]] == [1, 2, 1, 2]
    assert document["thread_loads"][1]["load_s"] == 3.0


def test_a_guest_not_seeing_its_shape_stops_the_probe_before_any_level() -> None:
    keeper = Keeper()
    with pytest.raises(InvalidShape, match=r"nproc says 2 vCPU\(s\), the VM has 4"):
        collect(
            lines(FACTS, load(None), level(1, None), {"event": "end"}),
            OPTIONS,
            RecordingReporter(),
            keeper,
            vm="gemma",
            expected=ExpectedShape(cores=4, memory_mib=4096),
        )
    assert len(keeper.facts) == 1 and keeper.levels == [] and keeper.loads == []


def test_levels_where_no_request_completed_are_a_probe_error() -> None:
    with pytest.raises(ProbeError, match="no request of any concurrency level completed"):
        collect(
            lines(FACTS, load(None), level(2, None, ok=False), {"event": "end"}),
            OPTIONS,
            RecordingReporter(),
            vm="gemma",
        )


OOM_VERDICT = {
    "likely": True,
    "evidence": ["runner pid [9] vanished; the kernel counted 1 OOM kill(s) in /proc/vmstat"],
}


def test_a_level_whose_runner_was_killed_for_memory_is_model_does_not_fit() -> None:
    keeper = Keeper()
    killed = level(4, None, ok=False) | {"oom": OOM_VERDICT}
    samples = [{"event": "sample", "run": 2, "t": 0.1, "mem_total": 4 << 30, "ollama_rss": 3 << 30}]
    with pytest.raises(ModelDoesNotFit) as raised:
        collect(
            lines(FACTS, load(None), level(1, None), *samples, killed, {"event": "end"}),
            OPTIONS,
            RecordingReporter(),
            keeper,
            vm="gemma",
        )
    assert raised.value.exit_code == ExitCode.MODEL_DOES_NOT_FIT
    assert str(raised.value).startswith("model does not fit in RAM: gemma2:2b's runner was")
    assert "the kernel counted 1 OOM kill" in str(raised.value)
    assert "probe fewer users" in (raised.value.hint or "")
    assert raised.value.figure == "OOM-killed serving 4 users, Ollama held 3.0 GiB of 4.0 GiB"
    assert [lv.users for lv in keeper.levels] == [1, 4], "the levels are kept before the error"


def test_a_load_killed_for_memory_is_model_does_not_fit_while_loading() -> None:
    killed = load(None) | {"ok": False, "error": "signal: killed", "oom": OOM_VERDICT}
    reporter = RecordingReporter()
    with pytest.raises(ModelDoesNotFit) as raised:
        collect(lines(FACTS, killed, {"event": "end"}), OPTIONS, reporter, vm="gemma")
    assert raised.value.figure == "OOM-killed while loading"
    assert not any("loading with num_thread" in text for _kind, text in reporter.events)


def test_a_failed_level_without_memory_evidence_stays_a_failed_request() -> None:
    failed = level(2, None, ok=False) | {"oom": {"likely": False, "evidence": []}}
    reporter = RecordingReporter()
    result = collect(
        lines(FACTS, load(None), level(1, None), failed, {"event": "end"}),
        OPTIONS,
        reporter,
        vm="gemma",
    )
    assert [lv.failed for lv in result.levels] == [0, 2]
    assert ("warn", "2 user(s): a request failed: boom") in reporter.events
