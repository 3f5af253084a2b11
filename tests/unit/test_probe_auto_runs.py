"""`--runs auto`: the agent runs in batches on one connection, runs are numbered as one series,
and the series stops at the first run that puts the median within +-5 % (or at max_runs)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, Self

import pytest

import provision.guest
from provision.probe.result import ProbeOptions
from provision.probe.run import probe
from provision.probe.stats import stat
from tests.support.reporting import RecordingReporter

FACTS = {
    "event": "facts",
    "vcpus": 2,
    "cpu_model": "QEMU Virtual CPU",
    "kernel": "6.8.0",
    "flags": {"avx2": True},
    "mem_total": 4 << 30,
    "ollama_version": "0.32.15",
    "tags_entry": {"name": "gemma2:2b", "digest": "8ccf136f", "size": 1629518495},
}


class ScriptedGuest:
    """An SSH session whose agent reports the next eval tok/s of `rates` for each run."""

    def __init__(self, rates: list[float]) -> None:
        self.rates = iter(rates)
        self.invocations: list[dict[str, Any]] = []
        self.last_exit_code: int | None = 0
        self.last_stderr = ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def stream_lines(self, command: str, stdin: bytes, timeout: float) -> Iterator[str]:
        options = json.loads(base64.b64decode(command.rsplit(" ", 1)[1]))
        self.invocations.append(options)
        yield json.dumps(FACTS)
        total = options["warmup"] + options["runs"]
        for index in range(total):
            yield json.dumps({"event": "run_start", "run": index, "warmup": index < 1})
            yield json.dumps(self._run(index, warmup=index < options["warmup"]))
        yield json.dumps({"event": "end", "runs": total, "stopped": None})

    def _run(self, index: int, *, warmup: bool) -> dict[str, Any]:
        rate = next(self.rates)
        return {
            "event": "run",
            "run": index,
            "warmup": warmup,
            "ok": True,
            "error": None,
            "ollama": {"eval_count": 100, "eval_duration": int(100e9 / rate)},
            "ttft_s": 0.4,
            "load_kind": "warm",
        }


def run_auto(
    monkeypatch: pytest.MonkeyPatch, rates: list[float], **changes: Any
) -> tuple[Any, ScriptedGuest]:
    guest = ScriptedGuest(rates)
    monkeypatch.setattr(provision.guest, "connect", lambda address: guest)
    options = ProbeOptions(**{"runs": 6, "runs_auto": True, "warmup": 1, **changes})
    return probe(object(), options, RecordingReporter()), guest


def test_auto_runs_until_the_first_run_that_brings_the_median_within_five_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # warm-up, then six scattered runs, then steady ones until the interval closes in
    rates = [5.0, 8.0, 12.0, 10.0, 10.2, 9.9, 10.1] + [10.0] * 20
    result, guest = run_auto(monkeypatch, rates)

    measured = [r.eval_tps for r in result.measured]
    assert [r.index for r in result.runs] == list(range(len(result.runs)))  # one series
    assert [o["runs"] for o in guest.invocations] == [6] + [1] * (len(guest.invocations) - 1)
    assert [o["warmup"] for o in guest.invocations][1:] == [0] * (len(guest.invocations) - 1)
    final = stat(measured)
    assert final is not None and final.within(0.05)
    earlier = [stat(measured[:n]) for n in range(6, len(measured))]
    assert not any(s is not None and s.within(0.05) for s in earlier)  # not one run later
    assert 6 < len(measured) < 20
    assert "known to ±" in result.precision_note()


def test_auto_gives_up_at_max_runs_and_says_how_well_the_median_is_known(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rates = [5.0] + [6.0, 14.0] * 10  # never within 5 %
    result, guest = run_auto(monkeypatch, rates, max_runs=8)

    assert len(result.measured) == 8 and len(guest.invocations) == 3
    assert "stopped at 8 runs (max_runs)" in result.precision_note()
    assert result.to_json()["precision"] == result.precision_note()


def test_fixed_runs_are_one_invocation(monkeypatch: pytest.MonkeyPatch) -> None:
    result, guest = run_auto(monkeypatch, [5.0, 8.0, 12.0], runs_auto=False, runs=2)
    assert len(guest.invocations) == 1 and len(result.measured) == 2
