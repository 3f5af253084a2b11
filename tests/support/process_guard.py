"""Refuse to start processes: what keeps tests/unit free of subprocesses, forks and spawns.

While a `NoProcesses` guard is active, `subprocess.Popen` (and so `subprocess.run`), `os.fork`,
`os.forkpty` (pty.fork), `os.posix_spawn*`, `os.system` and the fork_exec behind multiprocessing
raise `ProcessStarted` and are remembered in `attempts`, so a test that swallows the exception
still fails. Threads that were already running when the guard started (a session fixture's
server of another folder) are left alone; the test's own thread and any thread it starts are not.
"""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

WHY = "unit tests start no process: move this test to tests/integration (or the folder it fits)"

# (owner, attribute, name in messages)
TARGETS: list[tuple[Any, str, str]] = [
    (subprocess.Popen, "__init__", "subprocess.Popen"),
    (os, "fork", "os.fork"),
    (os, "forkpty", "os.forkpty"),
    (os, "posix_spawn", "os.posix_spawn"),
    (os, "posix_spawnp", "os.posix_spawnp"),
    (os, "system", "os.system"),
    (_posixsubprocess, "fork_exec", "_posixsubprocess.fork_exec"),
]


class ProcessStarted(BaseException):
    """A guarded test tried to start a process (a BaseException: `except Exception` misses it)."""


class NoProcesses:
    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._saved: list[tuple[Any, str, Any]] = []
        self._allowed: set[int] = set()

    def __enter__(self) -> Self:
        main = threading.main_thread().ident
        self._allowed = {t.ident for t in threading.enumerate() if t.ident not in (None, main)}
        for owner, attribute, name in TARGETS:
            if attribute in vars(owner):
                original = vars(owner)[attribute]
                self._saved.append((owner, attribute, original))
                setattr(owner, attribute, self._guarded(original, name))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        while self._saved:
            owner, attribute, original = self._saved.pop()
            setattr(owner, attribute, original)

    def _guarded(self, original: Callable[..., Any], name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() in self._allowed:
                return original(*args, **kwargs)
            self.attempts.append(name)
            raise ProcessStarted(f"{name}: {WHY}")

        return refuse
