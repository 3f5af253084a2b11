"""Worker tasks as PVE reports them: UPID, status, exit status and log.

A task is `running` until its simulated duration has passed *and* its work is done; the
`Cluster` runs the work (models/tasks.py). Not simulated: `TASK WARNINGS`, task stop requests.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

UPID_RE = re.compile(
    r"^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):"
    r"([0-9A-Fa-f]{8}):([^:\s/]+):([^:\s/]*):([^:\s/]+):$"
)


class TaskError(Exception):
    """An error inside a worker: the task ends with `TASK ERROR: <message>`."""


@dataclass
class Task:
    """A worker task: UPID, its log and its end state.

    Status is `running` until the simulated duration has passed *and* the work is done.
    """

    upid: str
    node: str
    type: str
    id: str
    user: str
    pid: int
    pstart: int
    starttime: float
    duration: float
    status: str = "running"
    exitstatus: str | None = None
    endtime: float | None = None
    log: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    begun: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def say(self, line: str) -> None:
        self.log.append(line)

    def finish(self, error: str | None) -> None:
        if error is None:
            self.exitstatus = "OK"
            self.log.append("TASK OK")
        else:
            flat = " ".join(error.strip().splitlines())
            self.exitstatus = flat
            self.log.append(f"TASK ERROR: {flat}")
        self.status = "stopped"
        self.endtime = time.time()
        self.begun.set()
        self.done.set()

    def status_json(self) -> dict[str, Any]:
        user, _, token = self.user.partition("!")
        result: dict[str, Any] = {
            "upid": self.upid,
            "node": self.node,
            "pid": self.pid,
            "pstart": self.pstart,
            "starttime": int(self.starttime),
            "type": self.type,
            "id": self.id,
            "user": user,
            "status": self.status,
        }
        if token:
            result["tokenid"] = token
        if self.status == "stopped":
            result["exitstatus"] = self.exitstatus
        return result

    def list_json(self) -> dict[str, Any]:
        """An entry of GET /nodes/{node}/tasks: `status` is the exit status, once stopped."""
        entry = {k: v for k, v in self.status_json().items() if k not in ("status", "exitstatus")}
        if self.status == "stopped":
            entry["status"] = self.exitstatus
            entry["endtime"] = int(self.endtime or self.starttime)
        return entry

    def to_json(self) -> dict[str, Any]:
        skip = ("done", "begun")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip} | {
            "log": list(self.log)
        }
