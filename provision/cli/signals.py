"""SIGTERM stops a command the way Ctrl-C does, so its cleanups run either way.

Ctrl-C raises KeyboardInterrupt in the main thread; a command then restores what it changed (the
sweep puts the VM's shape back and removes its clones, a deploy stops the playbook) and labctl
exits 130 with "interrupted". `kill` (SIGTERM) takes the same path. The `labctl` group installs
this for the command it runs and puts the previous handler back when the command ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise KeyboardInterrupt; returns what puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers (and receives signals)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore
