"""Tunable timing of the simulator and the faults tests inject (moto's "managed state" idea).

Both are plain data, persisted with the state, and changed through the control API
(`/_sim/settings`, `/_sim/faults`) or `SimServer(..., **settings)`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from provision.sim.guests.base import SYSTEMD_INOTIFY_FAILURE

DEFAULT_TASK_DURATIONS: dict[str, float] = {
    "qmclone": 2.0,
    "qmconfig": 0.2,
    "qmstart": 1.0,
    "qmstop": 0.5,
    "qmshutdown": 1.5,
    "qmreboot": 2.0,
    "qmdestroy": 1.0,
    "resize": 0.5,
}


@dataclass
class Settings:
    """Timing knobs. Seconds everywhere; durations are per task type (`qmclone`, `qmstart`, ...)."""

    task_durations: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_DURATIONS))
    default_task_duration: float = 0.5
    agent_delay: float = 5.0  # after a start/reboot, how long until the guest agent answers
    agent_timeout: float = (
        3.0  # how long a call to a silent agent takes to fail (qga_check_running)
    )
    auth_failure_delay: float = 3.0  # pveproxy delays every 401 by 3 s
    nextid_lower: int = 100
    nextid_upper: int = 1_000_000
    # pvedaemon's worker count per node (pve-manager PVE/Service/pvedaemon.pm:18 `max_workers
    # => 3`): pveproxy hands every `protected` API method to it (PVE/HTTPServer.pm:193-194),
    # the agent endpoints included, so a call waits while all workers are busy.
    daemon_workers: int = 3
    # Guests (container backend): seconds from a new clone's first boot until cloud-init's ssh
    # module has written fresh host keys (sshd starts only then; the agent answers before).
    cloudinit_ssh_delay: float = 1.0
    # Guests: how long the simulated `package_upgrade: true` work (PVE's ciupgrade, default 1)
    # of a clone's first boot burns CPU and holds the dpkg lock.
    cloudinit_upgrade_seconds: float = 6.0

    def duration(self, task_type: str) -> float:
        return float(self.task_durations.get(task_type, self.default_task_duration))

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update; unknown keys raise ValueError (so typos in tests fail loudly)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        for key, value in changes.items():
            if key == "task_durations":
                self.task_durations.update({k: float(v) for k, v in dict(value).items()})
            elif key == "daemon_workers":
                if int(value) < 1:
                    raise ValueError("daemon_workers must be at least 1")
                self.daemon_workers = int(value)
            elif key in ("nextid_lower", "nextid_upper"):
                setattr(self, key, int(value))
            else:
                setattr(self, key, float(value))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _MatchesCall:
    """A fault aimed at some API calls: regexes on the HTTP method and the path."""

    method: str | None
    path: str | None

    def matches(self, method: str, path: str) -> bool:
        if self.method and not re.fullmatch(self.method, method, re.IGNORECASE):
            return False
        return not (self.path and not re.search(self.path, path))


@dataclass
class HttpFault(_MatchesCall):
    """Answer the next `times` matching API calls with `status` (500, 596, ...) and `message`."""

    status: int
    message: str
    times: int = 1
    method: str | None = None  # regex on the HTTP method
    path: str | None = None  # regex searched in the path below /api2/json


@dataclass
class SlowReply(_MatchesCall):
    """Hold the answer to the next `times` matching calls `seconds` after the work is done:
    what a slow link or proxy does (the call took effect; the client learns it late)."""

    seconds: float
    times: int = 1
    method: str | None = None  # regex on the HTTP method
    path: str | None = None  # regex searched in the path below /api2/json


@dataclass
class TaskFault:
    """The next `times` tasks of `task_type` end with `TASK ERROR: <message>` (0: forever)."""

    task_type: str
    message: str
    times: int = 1


@dataclass
class BootFailure:
    """The next `times` boots of VM `vmid` (None: of any VM; times 0: forever) fail: the guest's
    init prints `console` and exits at once, before the guest is up."""

    console: tuple[str, ...] = SYSTEMD_INOTIFY_FAILURE
    vmid: int | None = None
    times: int = 1


@dataclass
class Faults:
    """Everything a test can break on purpose. Thread-safe; consuming a fault counts it down."""

    http: list[HttpFault] = field(default_factory=list)
    slow: list[SlowReply] = field(default_factory=list)
    tasks: list[TaskFault] = field(default_factory=list)
    agent_down: list[int] = field(default_factory=list)  # VMIDs whose agent never answers
    agent_down_all: bool = False
    ignore_shutdown: list[int] = field(default_factory=list)  # guests that ignore ACPI powerdown
    boot_failures: list[BootFailure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take_http(self, method: str, path: str) -> HttpFault | None:
        with self._lock:
            for fault in self.http:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.http.remove(fault)
                    return fault
        return None

    def take_slow(self, method: str, path: str) -> float:
        """Seconds to hold this call's answer (0 when no slow-reply fault matches)."""
        with self._lock:
            for fault in self.slow:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.slow.remove(fault)
                    return fault.seconds
        return 0.0

    def take_task(self, task_type: str) -> str | None:
        with self._lock:
            for fault in self.tasks:
                if fault.task_type == task_type:
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self.tasks.remove(fault)
                    return fault.message
        return None

    def take_boot_failure(self, vmid: int) -> tuple[str, ...] | None:
        """The console lines of a boot of vmid that is to fail, or None."""
        with self._lock:
            for fault in self.boot_failures:
                if fault.vmid in (None, vmid):
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self.boot_failures.remove(fault)
                    return fault.console
        return None

    def agent_is_down(self, vmid: int) -> bool:
        return self.agent_down_all or vmid in self.agent_down

    def add(self, spec: dict[str, Any]) -> None:
        """Add one fault from its JSON form (see provision/sim/README.md)."""
        kind = spec.get("kind")
        with self._lock:
            if kind == "http":
                self.http.append(
                    HttpFault(
                        status=int(spec.get("status", 500)),
                        message=str(spec.get("message", "simulated failure")),
                        times=int(spec.get("times", 1)),
                        method=spec.get("method"),
                        path=spec.get("path"),
                    )
                )
            elif kind == "slow":
                self.slow.append(
                    SlowReply(
                        seconds=float(spec["seconds"]),
                        times=int(spec.get("times", 1)),
                        method=spec.get("method"),
                        path=spec.get("path"),
                    )
                )
            elif kind == "task":
                self.tasks.append(
                    TaskFault(str(spec["type"]), str(spec["message"]), int(spec.get("times", 1)))
                )
            elif kind == "agent":
                if spec.get("vmid") is None:
                    self.agent_down_all = True
                else:
                    self.agent_down.append(int(spec["vmid"]))
            elif kind == "ignore_shutdown":
                self.ignore_shutdown.append(int(spec["vmid"]))
            elif kind == "boot_failure":
                self.boot_failures.append(_boot_failure(spec))
            else:
                raise ValueError(
                    f"unknown fault kind {kind!r} "
                    "(http, slow, task, agent, ignore_shutdown, boot_failure)"
                )

    def clear(self) -> None:
        with self._lock:
            self.http.clear()
            self.slow.clear()
            self.tasks.clear()
            self.agent_down.clear()
            self.agent_down_all = False
            self.ignore_shutdown.clear()
            self.boot_failures.clear()

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "http": [asdict(f) for f in self.http],
                "slow": [asdict(f) for f in self.slow],
                "tasks": [asdict(f) for f in self.tasks],
                "agent_down": list(self.agent_down),
                "agent_down_all": self.agent_down_all,
                "ignore_shutdown": list(self.ignore_shutdown),
                "boot_failures": [asdict(f) for f in self.boot_failures],
            }


def _boot_failure(spec: dict[str, Any]) -> BootFailure:
    console = spec.get("console", SYSTEMD_INOTIFY_FAILURE)
    if isinstance(console, str) or not all(isinstance(line, str) for line in console):
        raise ValueError("console is a list of lines")
    vmid = spec.get("vmid")
    return BootFailure(
        tuple(console), None if vmid is None else int(vmid), int(spec.get("times", 1))
    )
