"""What a playbook run did: per-host stats, the tasks that changed or failed, where the logs are."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass(frozen=True)
class TaskOutcome:
    """One task on one host, from the event stream."""

    host: str
    task: str
    status: str  # ok | changed | failed | unreachable | skipped | ignored
    duration_s: float
    message: str = ""


@dataclass(frozen=True)
class DeployResult:
    """What a playbook run did. `changes` are the tasks that changed (would change, in check)."""

    status: str  # ansible-runner: successful | failed | timeout | canceled
    rc: int
    stats: dict[str, HostStats]
    changed: int
    artifact_dir: Path
    duration_s: float
    check: bool
    inventory_path: Path
    changes: tuple[TaskOutcome, ...] = ()
    failures: tuple[TaskOutcome, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

    def to_json(self) -> dict[str, Any]:
        """For `--json`: what ran, what changed (or would, in check mode), where the logs are."""
        return {
            "status": self.status,
            "rc": self.rc,
            "check": self.check,
            "changed": self.changed,
            "duration_s": round(self.duration_s, 2),
            "hosts": {name: asdict(stats) for name, stats in self.stats.items()},
            "changes": [{"host": c.host, "task": c.task} for c in self.changes],
            "artifact_dir": str(self.artifact_dir),
            "inventory": str(self.inventory_path),
        }
