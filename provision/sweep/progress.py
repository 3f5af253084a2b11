"""Progress of a parallel sweep: several workers report at once through one Reporter.

The CLI's reporter prefixes each step with the current stage, and there is one current stage.
With two workers, one worker's "run 1/1: 6.8 tok/s" would show under the other's stage. Each
worker (and the main thread) gets a channel that names its VM in the stage, and a line from a
channel other than the last one that spoke announces its stage again first.
"""

from __future__ import annotations

import threading

from provision.progress import Reporter


class SharedProgress:
    """One Reporter shared by channels; the lock keeps a stage and its step together."""

    def __init__(self, base: Reporter) -> None:
        self.base = base
        self._lock = threading.Lock()
        self._speaking: tuple[int, str] | None = None  # (channel id, stage) last announced

    def channel(self, vm: str = "") -> ProgressChannel:
        return ProgressChannel(self, vm)

    def _stage(self, channel: ProgressChannel, announce: bool) -> None:
        with self._lock:
            self._announce(channel, force=announce)

    def _step(self, channel: ProgressChannel, message: str) -> None:
        with self._lock:
            self._announce(channel, force=False)
            self.base.step(message)

    def _announce(self, channel: ProgressChannel, *, force: bool) -> None:
        key = (id(channel), channel.label)
        if force or self._speaking != key:
            self.base.stage(channel.label)
            self._speaking = key


class ProgressChannel:
    """A Reporter for one worker: stages read `pw-2 probe`, warnings `pw-2: ...`."""

    def __init__(self, shared: SharedProgress, vm: str) -> None:
        self._shared = shared
        self._vm = vm
        self._stage = ""

    @property
    def label(self) -> str:
        return " ".join(p for p in (self._vm, self._stage) if p)

    def stage(self, name: str) -> None:
        self._stage = name
        self._shared._stage(self, announce=True)

    def step(self, message: str) -> None:
        self._shared._step(self, message)

    def warn(self, message: str) -> None:
        self._shared.base.warn(f"{self._vm}: {message}" if self._vm else message)
