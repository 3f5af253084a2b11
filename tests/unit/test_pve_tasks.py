"""Waiting for PVE tasks: backoff, exitstatus, failed-task log tail, timeout (fake API + clock)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from provision.errors import ProxmoxAPIError, TaskFailed, TaskTimeout
from provision.pve.tasks import Upid, is_ok, poll_delays, wait_task
from tests.support.reporting import RecordingReporter

UPID = "UPID:pve:0001A2B3:0023C4D5:6650F00D:qmclone:9000:root@pam!labctl:"


class FakeApi:
    """Answers task status with `running` for `polls_until_done` polls, then `exitstatus`."""

    def __init__(
        self, exitstatus: str, polls_until_done: int = 2, log: list[str] | None = None
    ) -> None:
        self.exitstatus = exitstatus
        self.remaining = polls_until_done
        self.log = log or []
        self.calls: list[tuple[str, bool]] = []

    def get(self, path: str, *, poll: bool = False, retry: bool = True, **params: Any) -> Any:
        self.calls.append((path, poll))
        if path.endswith("/status"):
            if self.remaining > 0:
                self.remaining -= 1
                return {"status": "running"}
            return {"status": "stopped", "exitstatus": self.exitstatus}
        if path.endswith("/log"):
            return [{"n": i + 1, "t": t} for i, t in enumerate(self.log)]
        raise AssertionError(path)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def test_upid_parse_takes_node_type_and_id_and_rejects_garbage() -> None:
    upid = Upid.parse(UPID)
    assert (upid.node, upid.type, upid.id) == ("pve", "qmclone", "9000")
    with pytest.raises(ProxmoxAPIError, match="not a task id"):
        Upid.parse("UPID:pve:nope")


def test_poll_delays_start_fast_and_back_off_to_one_second() -> None:
    delays = poll_delays()
    first = [next(delays) for _ in range(30)]
    assert first[0] == pytest.approx(0.1)
    assert all(b >= a for a, b in itertools.pairwise(first))
    assert first[-1] == 1.0


@pytest.mark.parametrize(
    ("status", "ok"),
    [("OK", True), ("WARNINGS: 2", True), ("VM 100 already running", False), ("", False)],
)
def test_only_ok_and_warnings_are_success(status: str, ok: bool) -> None:
    assert is_ok(status) is ok


def test_wait_returns_when_the_task_stops_ok_and_counts_polls_as_polls() -> None:
    api, clock = FakeApi("WARNINGS: 1", polls_until_done=3), Clock()
    result = wait_task(api, UPID, timeout_s=60, what="clone", sleep=clock.sleep, clock=clock)
    assert result.warnings and result.exitstatus == "WARNINGS: 1"
    assert len(api.calls) == 4 and all(poll for _, poll in api.calls)
    assert api.calls[0][0] == f"nodes/pve/tasks/{UPID}/status"


def test_failed_task_raises_with_the_end_of_its_log() -> None:
    log = [f"line {i}" for i in range(20)] + ["TASK ERROR: clone failed: disk full"]
    api, clock = FakeApi("clone failed: disk full", log=log), Clock()
    with pytest.raises(TaskFailed) as caught:
        wait_task(api, UPID, timeout_s=60, what="clone of tpl", sleep=clock.sleep, clock=clock)
    error = caught.value
    assert error.exitstatus == "clone failed: disk full"
    assert error.log_tail[-1] == "TASK ERROR: clone failed: disk full"
    assert "line 0" not in str(error) and "line 19" in str(error)
    assert str(error).startswith("clone of tpl failed: clone failed: disk full")


def test_timeout_raises_task_timeout_and_reports_progress_meanwhile() -> None:
    api, clock, reporter = FakeApi("OK", polls_until_done=10_000), Clock(), RecordingReporter()
    with pytest.raises(TaskTimeout, match="did not finish within 30s"):
        wait_task(
            api, UPID, timeout_s=30, what="clone", reporter=reporter, sleep=clock.sleep, clock=clock
        )
    assert any("still running" in m for _, m in reporter.events)
    assert max(clock.sleeps) == 1.0
