"""Waiting for PVE tasks (UPIDs): quick-then-slower polls, a per-operation timeout, exit checked.

A PVE action that forks a worker returns its UPID at once; errors inside the worker only show up
as the task's `exitstatus` (pve-api.md §0, §8). `OK` and `WARNINGS: n` are success; anything else
is the error text, and the task log's last lines say what happened.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from provision.errors import ProxmoxAPIError, TaskFailed, TaskTimeout
from provision.progress import NullReporter, Reporter

UPID_RE = re.compile(
    r"^UPID:(?P<node>[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):(?P<pid>[0-9A-Fa-f]{8}):"
    r"(?P<pstart>[0-9A-Fa-f]{8,9}):(?P<starttime>[0-9A-Fa-f]{8}):(?P<type>[^:\s/]+):"
    r"(?P<id>[^:\s/]*):(?P<user>[^:\s/]+):$"
)
_OK_RE = re.compile(r"^(OK|WARNINGS: \d+)$")
FIRST_POLL_S = 0.1
MAX_POLL_S = 1.0
POLL_GROWTH = 1.1
LOG_TAIL_LINES = 8
PROGRESS_EVERY_S = 10.0


class ApiGetter(Protocol):
    def get(self, path: str, *, poll: bool = False, retry: bool = True, **params: Any) -> Any: ...


@dataclass(frozen=True)
class Upid:
    raw: str
    node: str
    type: str
    id: str

    @classmethod
    def parse(cls, text: str) -> Upid:
        match = UPID_RE.match(text.strip())
        if not match:
            raise ProxmoxAPIError(f"Proxmox returned something that is not a task id: {text!r}")
        return cls(raw=text.strip(), node=match["node"], type=match["type"], id=match["id"])


@dataclass(frozen=True)
class TaskResult:
    upid: str
    exitstatus: str
    duration_s: float

    @property
    def warnings(self) -> bool:
        return self.exitstatus.startswith("WARNINGS")


def poll_delays(
    first: float = FIRST_POLL_S, maximum: float = MAX_POLL_S, growth: float = POLL_GROWTH
) -> Iterator[float]:
    """0.1, 0.14, 0.2, ... up to 1 s: quick tasks end quickly, long ones cost few requests."""
    delay = first
    while True:
        yield delay
        delay = min(maximum, delay * growth)


def is_ok(exitstatus: str) -> bool:
    return bool(_OK_RE.match(exitstatus.strip()))


def wait_task(
    api: ApiGetter,
    upid: str,
    *,
    timeout_s: float,
    what: str,
    reporter: Reporter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> TaskResult:
    """Poll the task until it stops; TaskFailed (with log tail) or TaskTimeout otherwise."""
    task = Upid.parse(upid)
    reporter = reporter or NullReporter()
    path = f"nodes/{task.node}/tasks/{task.raw}/status"
    start = clock()
    next_note = start + PROGRESS_EVERY_S
    delays = poll_delays()
    next_poll = start
    while True:
        # Poll on a schedule measured from the start, so request latency does not add up.
        next_poll += next(delays)
        sleep(max(0.0, next_poll - clock()))
        status = api.get(path, poll=True)
        now = clock()
        if status.get("status") == "stopped":
            exitstatus = str(status.get("exitstatus", "")).strip()
            if is_ok(exitstatus):
                return TaskResult(task.raw, exitstatus, now - start)
            tail = task_log_tail(api, task)
            shown = " | ".join(tail) if tail else "(empty task log)"
            raise TaskFailed(
                f"{what} failed: {exitstatus or 'unknown error'} — task log: {shown}",
                upid=task.raw,
                exitstatus=exitstatus,
                log_tail=tail,
            )
        if now - start > timeout_s:
            raise TaskTimeout(
                f"{what} did not finish within {timeout_s:g}s (task {task.raw} still running)",
                hint="it may still complete; see the node's task log, or raise the timeout in "
                "[timeouts]",
            )
        if now >= next_note:
            reporter.step(f"{what}: still running ({now - start:.0f}s of {timeout_s:g}s)")
            next_note = now + PROGRESS_EVERY_S


def task_log_tail(api: ApiGetter, task: Upid, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of the task log (the final 'TASK ERROR: ...' included)."""
    try:
        entries = api.get(f"nodes/{task.node}/tasks/{task.raw}/log", start=0, limit=5000)
    except ProxmoxAPIError:
        return []
    texts = [str(e.get("t", "")) for e in sorted(entries or [], key=lambda e: int(e.get("n", 0)))]
    return [t for t in texts if t.strip()][-lines:]
