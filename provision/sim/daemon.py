"""pvedaemon's worker pool: where the simulator runs PVE's `protected` API methods.

pveproxy runs unprivileged; it answers what it can itself and proxies every method marked
`protected => 1` to pvedaemon on 127.0.0.1:85 (pve-manager `PVE/HTTPServer.pm:193-194`,
pve-http-server `src/PVE/APIServer/AnyEvent.pm:754-755`). pvedaemon is a pre-forked server with
`max_workers => 3` (pve-manager `PVE/Service/pvedaemon.pm:18`; MAX_WORKERS in
/etc/default/pvedaemon overrides it), and a worker serves one request at a time. So a call that
blocks holds a worker: every guest-agent endpoint is protected (qemu-server
`src/PVE/API2/Qemu/Agent.pm:219,448`) and waits up to 3 s for the agent's `guest-ping`
(`src/PVE/QemuServer/Agent.pm:82-89`) when no agent answers. While all workers are busy, every
other protected call (status/current, task status, config, start, ...) waits for one. Each node
has its own pvedaemon.

A call that starts a task (start, shutdown, stop, destroy, clone, ...) holds its worker only
until the task is forked: `fork_worker` forks the task's process and, for an API call, returns the
UPID as soon as the child reports it started (pve-common `src/PVE/RESTEnvironment.pm:520,
686-745`: the parent waits for the child only when `$sync`, i.e. on the CLI). Here the task runs
in its own thread (models/tasks.py `_spawn`) and the handler returns its UPID at once, so a
running task holds no worker.

Not simulated: pveproxy gives up on a proxied request after 30 s (`AnyEvent.pm:835`); here a
call waits for a worker as long as it takes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class DaemonPool:
    """At most `workers()` protected calls run at once per node; the others queue."""

    def __init__(self, workers: Callable[[], int]) -> None:
        self._workers = workers
        self._cond = threading.Condition()
        self._busy: dict[str, int] = {}
        self._peak: dict[str, int] = {}

    @contextmanager
    def worker(self, node: str) -> Iterator[None]:
        with self._cond:
            while self._busy.get(node, 0) >= max(1, int(self._workers())):
                self._cond.wait()
            busy = self._busy.get(node, 0) + 1
            self._busy[node] = busy
            self._peak[node] = max(self._peak.get(node, 0), busy)
        try:
            yield
        finally:
            with self._cond:
                self._busy[node] -= 1
                self._cond.notify_all()

    def busy(self, node: str) -> int:
        with self._cond:
            return self._busy.get(node, 0)

    def peak(self, node: str) -> int:
        """The most workers of `node` ever busy at once."""
        with self._cond:
            return self._peak.get(node, 0)
