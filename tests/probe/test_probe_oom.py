"""A runner really OOM-killed by the kernel (a cgroup memory limit) is "model does not fit"."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.errors import ExitCode, ModelDoesNotFit
from provision.probe.collect import collect
from provision.probe.parse import RunResult
from provision.probe.result import ProbeOptions
from tests.support.agent import of_kind, run_agent
from tests.support.installed_double import DoubleOllama, start_double, stop_double
from tests.support.reporting import RecordingReporter

MEMORY_V1 = Path("/sys/fs/cgroup/memory")
WEIGHTS = 96 << 20
LIMIT = 64 << 20  # room for the server, not for a runner holding 96 MiB of weights


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    if os.geteuid() != 0 or not (MEMORY_V1 / "cgroup.procs").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    group = MEMORY_V1 / f"labctl-probe-test-{os.getpid()}"
    group.mkdir()
    try:
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                (MEMORY_V1 / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        group.rmdir()


@pytest.fixture
def confined_double(memory_cgroup: Path, tmp_path: Path) -> Iterator[DoubleOllama]:
    double = start_double(tmp_path, WEIGHTS, cgroup=memory_cgroup)
    (memory_cgroup / "memory.limit_in_bytes").write_text(str(LIMIT))
    try:
        yield double
    finally:
        stop_double(double.process)


def test_runner_killed_by_the_kernel_for_memory_is_model_does_not_fit(
    confined_double: DoubleOllama,
) -> None:
    options = ProbeOptions(runs=3, warmup=0, num_predict=8, ollama_url=confined_double.url)
    events, code = run_agent(options)

    runs = of_kind(events, "run")
    assert code == 0 and len(runs) == 1, "the agent stops after an OOM kill"
    assert runs[0]["ok"] is False and "signal: killed" in runs[0]["error"]
    assert runs[0]["oom"]["likely"] is True, runs[0]["oom"]
    assert any("OOM kill" in e or "kernel:" in e for e in runs[0]["oom"]["evidence"])

    lines = [json.dumps(e) for e in events]
    kept: list[RunResult] = []
    with pytest.raises(ModelDoesNotFit) as raised:
        collect(lines, options, RecordingReporter(), _Keep(kept), vm="tiny")
    assert raised.value.exit_code == ExitCode.MODEL_DOES_NOT_FIT
    assert str(raised.value).startswith("model does not fit in RAM: gemma2:2b's runner")
    assert "labctl resize tiny --ram" in str(raised.value)
    assert [r.ok for r in kept] == [False], "the failed run is kept before the error"


def test_a_level_probe_whose_runner_is_killed_while_loading_is_model_does_not_fit(
    confined_double: DoubleOllama,
) -> None:
    options = ProbeOptions(
        runs=1, warmup=0, num_predict=8, concurrency=(1, 2), ollama_url=confined_double.url
    )
    events, code = run_agent(options)

    loads = of_kind(events, "thread_load")
    assert code == 0 and len(loads) == 1 and of_kind(events, "level") == []
    assert loads[0]["ok"] is False and loads[0]["oom"]["likely"] is True, loads[0]
    assert events[-1] == {"event": "end", "runs": 0, "levels": 0, "stopped": "oom"}

    with pytest.raises(ModelDoesNotFit) as raised:
        collect([json.dumps(e) for e in events], options, RecordingReporter(), vm="tiny")
    assert raised.value.exit_code == ExitCode.MODEL_DOES_NOT_FIT
    assert raised.value.figure == "OOM-killed while loading"


class _Keep:
    def __init__(self, into: list[RunResult]) -> None:
        self.into = into

    def on_facts(self, facts: object) -> None:
        pass

    def on_run(self, run: RunResult) -> None:
        self.into.append(run)
