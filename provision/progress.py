"""Progress reporting: library code reports through a Reporter, the CLI renders it on stderr."""

from __future__ import annotations

import time
from typing import Protocol


class Reporter(Protocol):
    def stage(self, name: str) -> None:
        """A new stage starts (e.g. "clone", "start", "agent", "ssh", "deploy")."""
        ...

    def step(self, message: str) -> None:
        """One progress line inside the current stage."""
        ...

    def warn(self, message: str) -> None:
        """Something the user should know but that does not stop the run."""
        ...


class NullReporter:
    """Reports nothing (library callers that do not care)."""

    def stage(self, name: str) -> None:
        pass

    def step(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass


class Stopwatch:
    """Elapsed seconds since creation, for the `[12.3s]` on progress lines."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start
