"""Guests that stop on their own: their VM stops, as a PVE VM does when its QEMU process ends.

qemu-server's `vmstatus` says `running` exactly while the VM's QEMU process lives
(src/PVE/QemuServer.pm:2558, `$list->{$vmid}->{pid} ? 'running' : 'stopped'`), so a guest that
powers off, crashes or is killed is `stopped` at the next status call, with uptime 0 and no
agent. Here the guest backend reports such an exit (`GuestBackend.watch_exits`) as soon as it
sees it; the VM is marked stopped and the exit, with the tail of the guest's console, is kept
for `GET /_sim/guest-exits` (in memory: a restarted simulator forgets them).

A guest that dies while its start task runs fails that task the way `vm_start` fails when QEMU
exits: QEMU's output in the task log, then `start failed: QEMU exited with code N`
(QemuServer.pm:5825-5835, 5878).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from provision.sim.guests.base import GuestExit
from provision.sim.models.state import ClusterState
from provision.sim.tasks import Task, TaskError

log = logging.getLogger("provision.sim")


class GuestExitMixin(ClusterState):
    """The backend's exit reports: VM status, the kept console tails, failed start tasks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.guest_exits: dict[int, GuestExit] = {}
        self._boot_watches: dict[int, threading.Event] = {}
        super().__init__(*args, **kwargs)
        self.backend.watch_exits(self._guest_exited)

    def _guest_exited(self, exit: GuestExit) -> None:
        """Called by the backend's thread that saw the guest end (see GuestBackend)."""
        with self.lock:
            self.guest_exits[exit.vmid] = exit
            vm = self.vms.get(exit.vmid)
            was_running = vm is not None and vm.running
            if vm is not None and was_running:
                vm.status, vm.started_at = "stopped", None
            watch = self._boot_watches.get(exit.vmid)
        if watch is not None:
            watch.set()
        if was_running:
            self.save()
        last = exit.console_tail[-1] if exit.console_tail else "no console output"
        log.warning("VM %s stopped on its own (exit code %s): %s", exit.vmid, exit.exit_code, last)

    @contextlib.contextmanager
    def _watching_boot(self, vmid: int) -> Iterator[threading.Event]:
        """An event set if the VM's guest stops on its own while the block runs."""
        watch = threading.Event()
        with self.lock:
            self._boot_watches[vmid] = watch
        try:
            yield watch
        finally:
            with self.lock:
                if self._boot_watches.get(vmid) is watch:
                    del self._boot_watches[vmid]

    def _await_start_window(self, task: Task, vmid: int, watch: threading.Event) -> None:
        """Until the start task's time is up, a guest that dies still fails the start."""
        remaining = task.starttime + task.duration - time.time()
        if watch.wait(max(0.0, remaining)):
            with self.lock:
                exit = self.guest_exits[vmid]
            raise self._start_failed(task, exit)

    def _start_failed(self, task: Task, exit: GuestExit) -> TaskError:
        """The task log gets the console's last lines, as PVE's gets QEMU's output."""
        for line in exit.console_tail:
            task.say(line)
        return TaskError(f"start failed: QEMU exited with code {exit.exit_code}")

    def guest_exits_json(self) -> dict[str, Any]:
        """GET /_sim/guest-exits: the last exit of each VM whose guest stopped on its own."""
        with self.lock:
            return {str(v): e.to_json() for v, e in sorted(self.guest_exits.items())}
