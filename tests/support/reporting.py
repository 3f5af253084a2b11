"""A Reporter that keeps what a user would have seen, for tests to check."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RecordingReporter:
    """Keeps every event as (kind, text): ("stage", name), ("step", message), ("warn", ...)."""

    events: list[tuple[str, str]] = field(default_factory=list)

    def stage(self, name: str) -> None:
        self.events.append(("stage", name))

    def step(self, message: str) -> None:
        self.events.append(("step", message))

    def warn(self, message: str) -> None:
        self.events.append(("warn", message))
