"""collect(): the agent's event stream becomes runs, kept one by one, and the right errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from provision.errors import GuestUnreachable, ModelDoesNotFit, ProbeError
from provision.probe.collect import collect
from provision.probe.facts import GuestFacts
from provision.probe.parse import RunResult
from provision.probe.result import ProbeOptions
from tests.support.reporting import RecordingReporter

OPTIONS = ProbeOptions(runs=2, warmup=1)
FACTS = {
    "event": "facts",
    "vcpus": 2,
    "cpu_model": "QEMU Virtual CPU",
    "kernel": "6.8.0",
    "flags": {"avx": True, "avx2": True, "avx512f": False, "fma": True},
    "mem_total": 4 << 30,
    "ollama_version": "0.32.15",
    "tags_entry": {"name": "gemma2:2b", "digest": "8ccf136f", "size": 1629518495},
}


def run_event(
    index: int, *, warmup: bool = False, ok: bool = True, oom: dict[str, Any] | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "run",
        "run": index,
        "warmup": warmup,
        "ok": ok,
        "error": None if ok else "llama runner process has terminated: signal: killed",
        "ollama": {
            "eval_count": 128,
            "eval_duration": 8_000_000_000,
            "prompt_eval_count": 40,
            "prompt_eval_duration": 400_000_000,
            "load_duration": 5_000_000,
            "done_reason": "length",
        }
        if ok
        else {},
        "ttft_s": 0.45,
        "wall_s": 8.5,
        "load_kind": "warm",
        "cache_bust": "nonce",
        "sampler": {"samples": 85, "interval_s": 0.1, "cpu_s": 0.03, "wall_s": 8.5},
    }
    if oom is not None:
        event["oom"] = oom
    return event


def sample(index: int, t: float, used_gib: float) -> dict[str, Any]:
    return {
        "event": "sample",
        "run": index,
        "t": t,
        "load1": 1.5,
        "cpu_pct": 97.0,
        "busiest_core_pct": 100.0,
        "mem_total": 4 << 30,
        "mem_available": int((4 - used_gib) * 2**30),
        "swap_used": 0,
        "ollama_rss": int(used_gib * 2**30) - (100 << 20),
    }


def lines(*events: dict[str, Any]) -> list[str]:
    return [json.dumps(e) for e in events]


class Keeper:
    def __init__(self) -> None:
        self.facts: list[GuestFacts] = []
        self.runs: list[RunResult] = []

    def on_facts(self, facts: GuestFacts) -> None:
        self.facts.append(facts)

    def on_run(self, run: RunResult) -> None:
        self.runs.append(run)


def good_stream() -> list[str]:
    return lines(
        {"event": "hello"},
        FACTS,
        {"event": "run_start", "run": 0, "warmup": True},
        run_event(0, warmup=True),
        {"event": "ps", "entry": {"size": 1_900_000_000, "size_vram": 0}},
        {"event": "run_start", "run": 1},
        sample(1, 0.1, 2.0),
        sample(1, 0.2, 2.5),
        run_event(1),
        {"event": "run_start", "run": 2},
        sample(2, 0.1, 2.2),
        run_event(2),
        {"event": "end", "runs": 3},
    )


def test_a_full_stream_gives_runs_summary_and_facts() -> None:
    keeper = Keeper()
    result = collect(good_stream(), OPTIONS, RecordingReporter(), keeper, vm="gemma")

    assert result.complete
    assert [(r.index, r.warmup) for r in keeper.runs] == [(0, True), (1, False), (2, False)]
    assert keeper.facts[0].model.digest == "8ccf136f"
    assert result.facts is not None and result.facts.ps is not None
    assert result.facts.ps.on_cpu is True
    summary = result.summary
    assert summary["eval_tps"].median == 16.0  # type: ignore[union-attr]
    assert summary["peak_mem_used"].max == 2.5 * 2**30  # type: ignore[union-attr]
    document = result.to_json()
    assert document["summary"]["eval_tps"]["median"] == 16.0
    assert document["facts"]["on_cpu"] is True and document["cache_bust"] == "nonce"
    assert len(document["runs"]) == 3 and document["runs"][1]["peak_mem_used"] == 2.5 * 2**30
    json.dumps(document)  # one JSON document, serialisable as is


def test_ssh_dropping_mid_run_keeps_earlier_runs_and_records_the_failed_one() -> None:
    def dropping() -> Iterator[str]:
        yield from good_stream()[:8]  # up to run 1's samples
        raise GuestUnreachable("SSH connection to gemma (root@10.0.0.5) dropped: EOF")

    keeper = Keeper()
    with pytest.raises(ProbeError) as raised:
        collect(dropping(), OPTIONS, RecordingReporter(), keeper, vm="gemma")

    assert str(raised.value) == (
        "SSH connection to gemma lost during run 2/3: EOF (0 measured "
        "run(s) kept; see `labctl results --vm gemma`)"
    )
    assert [(r.index, r.ok) for r in keeper.runs] == [(0, True), (1, False)]
    failed = keeper.runs[1]
    assert failed.error == "SSH connection lost during the run: EOF"
    assert failed.peaks.samples == 2  # what the VM went through until the drop is kept


def test_fatal_agent_error_becomes_one_probe_error_with_the_fix() -> None:
    stream = lines(
        {"event": "hello"},
        {"event": "error", "kind": "ollama_not_installed", "message": "no `ollama` on PATH"},
    )
    with pytest.raises(ProbeError) as raised:
        collect(stream, OPTIONS, RecordingReporter(), vm="gemma")

    assert str(raised.value) == (
        "Ollama is not installed on gemma (no `ollama` on PATH) (run `labctl deploy gemma`)"
    )


def test_oom_killed_runner_is_model_does_not_fit_after_keeping_the_run() -> None:
    oom = {"likely": True, "evidence": ["kernel: Out of memory: Killed process 812 (llama-server)"]}
    stream = lines(
        FACTS,
        {"event": "run_start", "run": 0, "warmup": True},
        sample(0, 0.1, 3.9),
        run_event(0, warmup=True, ok=False, oom=oom),
        {"event": "end", "runs": 1, "stopped": "oom"},
    )
    keeper = Keeper()
    with pytest.raises(ModelDoesNotFit) as raised:
        collect(stream, OPTIONS, RecordingReporter(), keeper, vm="tiny")

    assert raised.value.exit_code == 9
    assert "model does not fit in RAM" in str(raised.value)
    assert "Killed process 812 (llama-server)" in str(raised.value)
    assert keeper.runs[0].oom_likely
    assert keeper.runs[0].peaks.min_mem_available == int(0.1 * 2**30)
    # no token came: the kill struck while the weights were being read into RAM
    assert raised.value.figure == "OOM-killed while loading, Ollama held 3.8 GiB of 4.0 GiB"


def test_an_oom_kill_after_tokens_says_while_generating() -> None:
    oom = {"likely": True, "evidence": ["runner pid [9] vanished"]}
    killed = {**run_event(0, ok=False, oom=oom), "stream_tokens": 5}
    stream = lines(
        FACTS,
        {"event": "run_start", "run": 0},
        sample(0, 0.1, 3.0),
        killed,
        {"event": "end", "runs": 1, "stopped": "oom"},
    )
    with pytest.raises(ModelDoesNotFit) as raised:
        collect(stream, ProbeOptions(runs=1, warmup=0), RecordingReporter(), Keeper(), vm="x")
    assert raised.value.figure.startswith("OOM-killed while generating, Ollama held 2.9 GiB")


def test_a_run_the_model_ended_early_is_kept_and_said_so() -> None:
    early = run_event(1)
    early["ollama"] = {**early["ollama"], "eval_count": 12, "done_reason": "stop"}
    stream = lines(
        FACTS,
        {"event": "run_start", "run": 0, "warmup": True},
        run_event(0, warmup=True),
        {"event": "run_start", "run": 1},
        early,
        {"event": "run_start", "run": 2},
        run_event(2),
        {"event": "end", "runs": 3},
    )
    reporter = RecordingReporter()
    result = collect(stream, ProbeOptions(runs=2, warmup=1, num_predict=128), reporter, vm="gemma")

    assert [r.ended_early(128) for r in result.runs] == [False, True, False]
    assert result.warnings == [
        (
            "run 2 ended early: the model stopped (end of sequence) after "
            "12 of 128 tokens; its eval tok/s covers those"
        )
    ]
    from provision.cli.probe import render_probe

    assert "ok, EOS" in render_probe(result)  # the result column (wrapped as it fits)


def test_when_every_measured_run_fails_the_probe_fails() -> None:
    failing = {"likely": False, "evidence": []}
    stream = lines(
        FACTS,
        run_event(0, warmup=True),
        run_event(1, ok=False, oom=failing),
        run_event(2, ok=False, oom=failing),
        {"event": "end", "runs": 3},
    )
    reporter = RecordingReporter()
    with pytest.raises(ProbeError, match="all 2 measured runs failed on gemma"):
        collect(stream, OPTIONS, reporter, vm="gemma")
    assert (
        "warn",
        "run 2 failed: llama runner process has terminated: signal: killed",
    ) in reporter.events


def test_missing_avx2_is_reported_as_a_warning() -> None:
    facts = {**FACTS, "flags": {"avx": True, "avx2": False, "avx512f": False, "fma": False}}
    reporter = RecordingReporter()
    result = collect(
        lines(facts, {"event": "end", "runs": 0}),
        ProbeOptions(runs=1, warmup=0),
        reporter,
        vm="gemma",
    )

    warnings = [text for kind, text in reporter.events if kind == "warn"]
    assert len(warnings) == 1 and "Proxmox cpu type" in warnings[0]
    assert result.warnings == warnings


def test_options_are_validated_with_one_line_errors() -> None:
    from provision.errors import UsageError

    with pytest.raises(UsageError, match="--runs must be at least 1"):
        ProbeOptions(runs=0).validated()
    with pytest.raises(UsageError, match="prompt is empty"):
        ProbeOptions(prompt="  ").validated()
    with pytest.raises(UsageError, match="over 64 KiB"):
        ProbeOptions(prompt="x" * 70_000).validated()
