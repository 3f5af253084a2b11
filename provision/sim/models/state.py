"""`ClusterState`: the state every part of `Cluster` shares, its persistence and its locks.

Concurrency: one re-entrant lock (`lock`) guards all state; each task runs in its own thread,
serialised per VM by an operation lock (`_op_lock`, PVE's config flock). Guest-backend calls
happen outside the state lock because a real backend can take seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from provision.sim.access import Access
from provision.sim.errors import PveError, config_missing
from provision.sim.guests.base import GuestBackend
from provision.sim.models.base import (
    GIB,
    KEEP_TASKS,
    STATE_FILE,
    STATE_VERSION,
    TEMPLATE_VMID,
    Node,
    Storage,
    Vm,
    default_storages,
    node_names,
    template_config,
)
from provision.sim.settings import Faults, Settings
from provision.sim.tasks import Task


class ClusterState:
    """All state of one simulated PVE cluster, persisted as JSON in `state_dir`.

    The base of every part of `Cluster`: the parts read and change these attributes and call
    the lookups and locks below.
    """

    def __init__(
        self,
        state_dir: Path,
        backend: GuestBackend,
        nodes: int = 1,
        node_cpus: int = 16,
        node_memory: int = 64 * GIB,
        settings: Settings | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.backend = backend
        self.lock = threading.RLock()
        self.faults = Faults()
        self.settings = settings or Settings()
        self.access = Access(state_dir)
        self.nodes: dict[str, Node] = {}
        self.storages = default_storages()
        self.vms: dict[int, Vm] = {}
        self.tasks: dict[str, Task] = {}
        self._next_pid = 0x1000 + secrets.randbelow(0x10000)
        self._op_locks: dict[int, threading.Lock] = {}
        self._threads: list[threading.Thread] = []
        self._write_lock = threading.Lock()
        self._snapshot_seq = 0
        self._written_seq = 0
        self._finished_task_texts: dict[str, str] = {}  # a finished task's JSON never changes
        if not self._load():
            self._initialise(nodes, node_cpus, node_memory)
        self._add_missing_nodes(nodes, node_cpus, node_memory)
        self.save()

    # --- persistence -------------------------------------------------------------------------

    def _initialise(self, nodes: int, node_cpus: int, node_memory: int) -> None:
        now = time.time()
        for name in node_names(nodes):
            self.nodes[name] = Node(name, node_cpus, node_memory, now)
        first = next(iter(self.nodes))
        self.vms[TEMPLATE_VMID] = Vm(TEMPLATE_VMID, first, template_config())

    def _add_missing_nodes(self, nodes: int, node_cpus: int, node_memory: int) -> None:
        for name in node_names(nodes):
            if name not in self.nodes:
                self.nodes[name] = Node(name, node_cpus, node_memory, time.time())

    def _load(self) -> bool:
        """Read state.json. Running VMs stay running only if the backend still runs them;
        tasks that were running when the server stopped end as interrupted."""
        path = self.state_dir / STATE_FILE
        if not path.exists():
            return False
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: not a simulator state file ({exc})") from exc
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: unsupported state version {data.get('version')!r}")
        self.settings.update(data.get("settings", {}))
        self.nodes = {n["name"]: Node(**n) for n in data["nodes"]}
        for raw in data["vms"]:
            vm = Vm(**raw)
            if vm.running and not self.backend.is_running(vm.vmid):
                vm.status, vm.started_at = "stopped", None
            self.vms[vm.vmid] = vm
        for raw in data["tasks"]:
            task = Task(**raw)
            if task.status == "running":
                task.finish("interrupted: the simulator was restarted")
            task.done.set()
            task.begun.set()
            self.tasks[task.upid] = task
        self._next_pid = int(data.get("next_pid", self._next_pid))
        return True

    def save(self) -> None:
        """Write state.json atomically (temp file + rename).

        Snapshots are numbered so that a slow writer never replaces a newer snapshot. Only the
        copies are taken under the cluster lock; the JSON is written outside it, and a finished
        task's text is made once: with KEEP_TASKS tasks kept, dumping them all on every change
        took ~14 ms with the lock held, which every other request waited for.
        """
        with self.lock:
            self._snapshot_seq += 1
            seq = self._snapshot_seq
            tasks = sorted(self.tasks.values(), key=lambda t: t.starttime)[-KEEP_TASKS:]
            task_texts = [self._task_text(task) for task in tasks]
            self._finished_task_texts = {
                t.upid: text
                for t, text in zip(tasks, task_texts, strict=True)
                if t.upid in self._finished_task_texts
            }
            head = {
                "version": STATE_VERSION,
                "settings": self.settings.to_json(),
                "nodes": [asdict(n) for n in self.nodes.values()],
                "vms": [asdict(v) for v in sorted(self.vms.values(), key=lambda v: v.vmid)],
                "next_pid": self._next_pid,
            }
        text = json.dumps(head, sort_keys=True)[:-1] + ', "tasks": [' + ", ".join(task_texts) + "]}"
        with self._write_lock:
            if seq < self._written_seq:
                return
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".state.", suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, self.state_dir / STATE_FILE)
            self._written_seq = seq

    def _task_text(self, task: Task) -> str:
        """The task as JSON; a finished task's text is kept (it cannot change any more)."""
        text = self._finished_task_texts.get(task.upid)
        if text is None:
            finished = task.done.is_set()  # read first: a task finishing meanwhile is not kept
            text = json.dumps(task.to_json(), sort_keys=True)
            if finished:
                self._finished_task_texts[task.upid] = text
        return text

    def close(self, timeout: float = 5.0) -> None:
        """Wait briefly for task threads, then persist."""
        deadline = time.time() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.time()))
        self.save()

    # --- lookups -----------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        """The node, or the 500 pveproxy gives when it cannot proxy to an unknown node."""
        node = self.nodes.get(name)
        if node is None:
            raise PveError.internal(f"unable to get remote IP address for node '{name}'")
        return node

    def vm(self, node: str, vmid: int) -> Vm:
        vm = self.vms.get(int(vmid))
        if vm is None or vm.node != node:
            raise config_missing(node, int(vmid))
        return vm

    def storage(self, name: str) -> Storage:
        for storage in self.storages:
            if storage.storage == name:
                return storage
        raise PveError.internal(f"storage '{name}' does not exist")

    @contextlib.contextmanager
    def _op_lock(self, vmid: int, timeout: float = 10.0) -> Iterator[None]:
        """PVE's per-VM config flock (`lock_config`): waits `timeout` seconds, then dies."""
        with self.lock:
            lock = self._op_locks.setdefault(vmid, threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise PveError.internal(
                f"can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout"
            )
        try:
            yield
        finally:
            lock.release()
