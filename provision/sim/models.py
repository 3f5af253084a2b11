"""The simulated cluster: nodes, storages, VMs and tasks, and every operation the API exposes.

This is moto's `models.py` role: plain typed state plus the PVE rules (which errors are
synchronous HTTP errors and which are task errors, pending changes, locks, digests). The HTTP
layer (`responses.py`) only parses, calls one method here and wraps the result.

Concurrency: one re-entrant lock guards all state; each task runs in its own thread, serialised
per VM by an operation lock (PVE's config flock). Guest-backend calls happen outside the state
lock because a real backend can take seconds.

Privileges: `self.access` (access.py) holds the users, tokens, roles and ACLs; the checks PVE
makes inside handlers (storages, bridges, config keys, task owners, filtered listings) are called
from here, the per-endpoint ones by the server (permissions.py).

Not simulated (cluster-wide): HA (`hastart`/`hastop`), groups and pools, snapshots, backups,
replication, migration, shared storage, RRD lag (usage numbers are current, not 10 s old),
`TASK WARNINGS`, paused/suspended VMs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from provision.sim import permissions, vmconfig
from provision.sim.access import ROOT, Access
from provision.sim.errors import PveError, config_missing, vm_locked
from provision.sim.guests.base import GuestBackend, GuestSpec
from provision.sim.settings import Faults, Settings
from provision.sim.tasks import UPID_RE, Task, TaskError

STATE_FILE = "state.json"
STATE_VERSION = 1
TEMPLATE_VMID = 9000
TEMPLATE_NAME = "ubuntu-2404-cloud"
GIB = 1024**3
NODE_BASE_MEMORY = 2 * GIB  # what the host itself uses, so free memory is never the full total
KEEP_TASKS = 500
log = logging.getLogger("provision.sim")


@dataclass
class Storage:
    """A node-local storage. Not simulated: real capacity accounting, shared storages."""

    storage: str
    type: str
    content: tuple[str, ...]
    total: int

    def supports(self, content: str) -> bool:
        return content in self.content


@dataclass
class Node:
    """A cluster node. Usage numbers are derived from the VMs running on it."""

    name: str
    maxcpu: int
    maxmem: int
    booted_at: float
    cpu_model: str = "AMD Ryzen 9 5950X 16-Core Processor"


@dataclass
class Vm:
    """A QEMU VM: its config file (current + [PENDING]) and its run state."""

    vmid: int
    node: str
    config: dict[str, str]
    pending: dict[str, str] = field(default_factory=dict)
    pending_delete: dict[str, int] = field(default_factory=dict)  # key -> 1 if forced
    status: str = "stopped"
    started_at: float | None = None
    linked_base: int | None = None  # template VMID whose base disk this VM's disk is linked to

    @property
    def running(self) -> bool:
        return self.status == "running"

    def merged(self) -> dict[str, str]:
        """Config with pending values applied (what GET config returns without current=1)."""
        merged = {k: v for k, v in self.config.items() if k not in self.pending_delete}
        merged.update(self.pending)
        return merged

    def digest(self) -> str:
        return vmconfig.digest(self.config, self.pending, self.pending_delete)

    def apply_pending(self) -> None:
        """`vmconfig_apply_pending`: everything pending becomes current."""
        for key in self.pending_delete:
            self.config.pop(key, None)
        self.config.update(self.pending)
        self.pending.clear()
        self.pending_delete.clear()

    @property
    def is_template(self) -> bool:
        return self.config.get("template") == "1"

    @property
    def agent_enabled(self) -> bool:
        value = self.config.get("agent")
        if value is None:
            return False
        first = value.split(",")[0]
        enabled = first.split("=", 1)[1] if first.startswith("enabled=") else first
        return enabled in ("1", "on", "yes", "true")


def default_storages() -> list[Storage]:
    return [
        Storage("local", "dir", ("iso", "vztmpl", "snippets", "backup"), 100 * GIB),
        Storage("local-lvm", "lvmthin", ("images", "rootdir"), 400 * GIB),
    ]


def template_config() -> dict[str, str]:
    """VM 9000, a cloud-init Ubuntu 24.04 template as a homelab would prepare it."""
    return {
        "agent": "1",
        "boot": "order=scsi0;ide2;net0",
        "cores": "2",
        "cpu": "x86-64-v2-AES",
        "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
        "ipconfig0": "ip=dhcp",
        "memory": "2048",
        "meta": f"creation-qemu=9.2.0,ctime={int(time.time())}",
        "name": TEMPLATE_NAME,
        "net0": f"virtio={vmconfig.random_mac()},bridge=vmbr0",
        "ostype": "l26",
        "scsi0": "local-lvm:base-9000-disk-0,size=3584M",
        "scsihw": "virtio-scsi-pci",
        "serial0": "socket",
        "smbios1": f"uuid={uuid.uuid4()}",
        "sockets": "1",
        "template": "1",
        "vga": "serial0",
        "vmgenid": str(uuid.uuid4()),
    }


def node_names(count: int) -> list[str]:
    """pve, pve2, pve3, ..."""
    return ["pve" if i == 0 else f"pve{i + 1}" for i in range(count)]


class Cluster:
    """All state of one simulated PVE cluster, persisted as JSON in `state_dir`.

    Not simulated: see the module docstring; each operation's docstring adds its own gaps.
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

        Snapshots are numbered so that a slow writer never replaces a newer snapshot.
        """
        with self.lock:
            self._snapshot_seq += 1
            seq = self._snapshot_seq
            tasks = sorted(self.tasks.values(), key=lambda t: t.starttime)[-KEEP_TASKS:]
            data = {
                "version": STATE_VERSION,
                "settings": self.settings.to_json(),
                "nodes": [asdict(n) for n in self.nodes.values()],
                "vms": [asdict(v) for v in sorted(self.vms.values(), key=lambda v: v.vmid)],
                "tasks": [t.to_json() for t in tasks],
                "next_pid": self._next_pid,
            }
            text = json.dumps(data, indent=1, sort_keys=True)
        with self._write_lock:
            if seq < self._written_seq:
                return
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".state.", suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, self.state_dir / STATE_FILE)
            self._written_seq = seq

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

    # --- tasks -------------------------------------------------------------------------------

    def _spawn(
        self,
        node: str,
        task_type: str,
        task_id: str,
        user: str,
        work: Callable[[Task], None],
        finish: Callable[[Task], None] | None = None,
        lock_vmid: int | None = None,
    ) -> Task:
        """Create a task and run `work` in a thread; `finish` runs once the duration is over.

        A fault registered for this task type replaces the work with its error.
        """
        now = time.time()
        with self.lock:
            self._next_pid += 1
            pid = self._next_pid
            node_obj = self.nodes[node]
            pstart = int((now - node_obj.booted_at) * 100) & 0xFFFFFFFF
            upid = (
                f"UPID:{node}:{pid:08X}:{pstart:08X}:{int(now):08X}:{task_type}:{task_id}:{user}:"
            )
            task = Task(
                upid,
                node,
                task_type,
                task_id,
                user,
                pid,
                pstart,
                now,
                self.settings.duration(task_type),
            )
            self.tasks[upid] = task
        injected = self.faults.take_task(task_type)
        thread = threading.Thread(
            target=self._run_task,
            args=(task, work, finish, lock_vmid, injected),
            name=f"task-{task_type}-{task_id}",
            daemon=True,
        )
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()
        return task

    def _run_task(
        self,
        task: Task,
        work: Callable[[Task], None],
        finish: Callable[[Task], None] | None,
        lock_vmid: int | None,
        injected: str | None,
    ) -> None:
        error: str | None = None
        try:
            if injected is not None:
                raise TaskError(injected)
            with self._op_lock(lock_vmid) if lock_vmid is not None else contextlib.nullcontext():
                work(task)
                task.begun.set()
                remaining = task.starttime + task.duration - time.time()
                if remaining > 0:
                    time.sleep(remaining)
                if finish is not None:
                    finish(task)
        except (TaskError, PveError) as exc:
            error = str(exc)
        except Exception as exc:  # a backend failure must end the task, not kill the thread
            log.exception("task %s failed unexpectedly", task.upid)
            error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            task.finish(error)
        self.save()

    def task(self, node: str, upid: str, user: str = ROOT) -> Task:
        """One task, for its owner or a caller with Sys.Audit on the node (Tasks.pm:527-528)."""
        match = UPID_RE.match(upid)
        if not match:
            raise PveError.params({"upid": "unable to parse worker upid"})
        permissions.task_access(self.access, user, node, match.group(8))
        with self.lock:
            task = self.tasks.get(upid)
        if task is None or task.node != node:
            raise PveError.params({"upid": "no such task"})
        return task

    def task_list(
        self, node: str, params: dict[str, Any], user: str = ROOT
    ) -> tuple[list[dict[str, Any]], int]:
        """GET /nodes/{node}/tasks, newest first: filters vmid, typefilter, source, errors; only
        the caller's own tasks without Sys.Audit on the node (Tasks.pm:184-190).

        Not simulated: userfilter, statusfilter, since/until.
        """
        self.node(node)
        auditor = permissions.sees(self.access, user, f"/nodes/{node}", ["Sys.Audit"])
        with self.lock:
            tasks = sorted(
                (t for t in self.tasks.values() if t.node == node),
                key=lambda t: t.starttime,
                reverse=True,
            )
        vmid, kind = params.get("vmid"), params.get("typefilter")
        source = params.get("source", "archive")
        chosen = [
            t
            for t in tasks
            if (vmid is None or t.id == str(vmid))
            and (kind is None or t.type == kind)
            and (source == "all" or (t.status == "running") == (source == "active"))
            and (not _truthy(params.get("errors")) or t.exitstatus not in (None, "OK"))
            and (auditor or permissions.owns_task(user, t.user))
        ]
        start, limit = int(params.get("start", 0)), int(params.get("limit", 50))
        return [t.list_json() for t in chosen[start : start + limit]], len(chosen)

    def task_log(
        self, node: str, upid: str, start: int, limit: int, user: str = ROOT
    ) -> tuple[list[dict[str, Any]], int]:
        """`[{n, t}]` lines from `start` (0-based), at most `limit`, and the total line count."""
        task = self.task(node, upid, user)
        with self.lock:
            lines = list(task.log)
        chosen = lines[start : start + limit] if limit > 0 else lines[start:]
        return [{"n": start + i + 1, "t": text} for i, text in enumerate(chosen)], len(lines)

    # --- cluster -----------------------------------------------------------------------------

    def nextid(self, vmid: int | None) -> str:
        """GET /cluster/nextid. Returns a *string*, as PVE's JSON::XS stringifies the hash key."""
        with self.lock:
            if vmid is not None:
                if vmid in self.vms:
                    raise PveError.params({"vmid": f"VM {vmid} already exists"})
                return str(vmid)
            lower, upper = self.settings.nextid_lower, self.settings.nextid_upper
            for candidate in range(lower, upper):
                if candidate not in self.vms:
                    return str(candidate)
        raise PveError.internal(f"unable to get any free VMID in range [{lower}, {upper}]")

    def resources(self, kind: str | None, user: str = ROOT) -> list[dict[str, Any]]:
        """GET /cluster/resources: VMs only with VM.Audit (Cluster.pm:588), node usage only with
        Sys.Audit (Cluster.pm:622), storages only with Datastore.Audit (Cluster.pm:647).

        Not simulated: pool/network/sdn entries, RRD lag, lxc.
        """
        with self.lock:
            vms = sorted(self.vms.values(), key=lambda v: v.vmid)
            nodes = list(self.nodes.values())
        sees = functools.partial(permissions.sees, self.access, user)
        result: list[dict[str, Any]] = []
        if kind in (None, "vm"):
            result += [self._vm_resource(vm) for vm in vms if sees(f"/vms/{vm.vmid}", ["VM.Audit"])]
        if kind in (None, "node"):
            for node in nodes:
                entry = self._node_resource(node)
                result.append(entry if sees(f"/nodes/{node.name}", ["Sys.Audit"])
                              else _without_stats(entry))
        if kind in (None, "storage"):
            for node in nodes:
                result += [self._storage_json(node.name, s, resource=True) for s in self.storages
                           if sees(f"/storage/{s.storage}", ["Datastore.Audit"])]
        return result

    def _vm_resource(self, vm: Vm) -> dict[str, Any]:
        status = self._vm_status(vm)
        entry: dict[str, Any] = {
            "id": f"qemu/{vm.vmid}",
            "vmid": vm.vmid,
            "node": vm.node,
            "type": "qemu",
            "status": status["status"],
            "name": status["name"],
            "template": 1 if vm.is_template else 0,
            "maxcpu": status["cpus"],
            "cpu": status["cpu"],
            "maxmem": status["maxmem"],
            "mem": status["mem"],
            "memhost": status["mem"],
            "maxdisk": status["maxdisk"],
            "disk": 0,
            "netin": 0,
            "netout": 0,
            "diskread": 0,
            "diskwrite": 0,
            "uptime": status["uptime"],
        }
        for key in ("lock", "tags"):
            if key in status:
                entry[key] = status[key]
        return entry

    def _node_usage(self, node: Node) -> tuple[float, int]:
        with self.lock:
            running = [v for v in self.vms.values() if v.node == node.name and v.running]
        used = NODE_BASE_MEMORY + sum(vmconfig.memory_mib(v.config) * 1024**2 for v in running)
        cpu = min(1.0, 0.01 + 0.02 * len(running))
        return cpu, min(used, node.maxmem)

    def _node_resource(self, node: Node) -> dict[str, Any]:
        cpu, used = self._node_usage(node)
        return {
            "id": f"node/{node.name}",
            "node": node.name,
            "type": "node",
            "status": "online",
            "cpu": cpu,
            "maxcpu": node.maxcpu,
            "mem": used,
            "maxmem": node.maxmem,
            "disk": 8 * GIB,
            "maxdisk": 100 * GIB,
            "uptime": int(time.time() - node.booted_at),
            "level": "",
            "cgroup-mode": 2,
        }

    def _storage_json(self, node: str, storage: Storage, resource: bool) -> dict[str, Any]:
        used = 0
        if storage.supports("images"):
            with self.lock:
                used = sum(self._disk_bytes(v) for v in self.vms.values() if v.node == node)
        common = {
            "storage": storage.storage,
            "content": ",".join(sorted(storage.content)),
            "shared": 0,
        }
        if resource:
            return {
                **common,
                "id": f"storage/{node}/{storage.storage}",
                "node": node,
                "type": "storage",
                "status": "available",
                "plugintype": storage.type,
                "disk": used,
                "maxdisk": storage.total,
            }
        return {
            **common,
            "type": storage.type,
            "active": 1,
            "enabled": 1,
            "total": storage.total,
            "used": used,
            "avail": storage.total - used,
            "used_fraction": used / storage.total,
        }

    def nodes_list(self, user: str = ROOT) -> list[dict[str, Any]]:
        """GET /nodes; usage numbers only with Sys.Audit on the node (Nodes.pm:2986-2987)."""
        from provision.sim.tls import current_fingerprint

        result = []
        for node in self.nodes.values():
            entry = self._node_resource(node)
            if not permissions.sees(self.access, user, f"/nodes/{node.name}", ["Sys.Audit"]):
                entry = _without_stats(entry)
            entry["ssl_fingerprint"] = current_fingerprint(self.state_dir)
            result.append(entry)
        return result

    def node_status(self, name: str) -> dict[str, Any]:
        """GET /nodes/{node}/status. Not simulated: ksm, swap use, boot-info details."""
        node = self.node(name)
        cpu, used = self._node_usage(node)
        return {
            "cpu": cpu,
            "wait": 0.0,
            "uptime": int(time.time() - node.booted_at),
            "idle": 0,
            "loadavg": ["0.10", "0.15", "0.20"],
            "memory": {
                "total": node.maxmem,
                "used": used,
                "free": node.maxmem - used,
                "available": node.maxmem - used,
            },
            "swap": {"total": 8 * GIB, "used": 0, "free": 8 * GIB},
            "rootfs": {"total": 100 * GIB, "used": 8 * GIB, "free": 92 * GIB, "avail": 92 * GIB},
            "cpuinfo": {
                "cpus": node.maxcpu,
                "cores": node.maxcpu // 2 or 1,
                "sockets": 1,
                "model": node.cpu_model,
                "mhz": "3400.000",
                "hvm": "1",
                "flags": "fpu sse sse2 avx avx2",
                "user_hz": 100,
            },
            "ksm": {"shared": 0},
            "kversion": "Linux 6.14.8-2-pve #1 SMP PREEMPT_DYNAMIC",
            "current-kernel": {
                "sysname": "Linux",
                "release": "6.14.8-2-pve",
                "machine": "x86_64",
                "version": "#1 SMP PREEMPT_DYNAMIC",
            },
            "boot-info": {"mode": "efi", "secureboot": 0},
            "pveversion": "pve-manager/9.2.0/simulated",
        }

    def node_storages(
        self, name: str, content: str | None, user: str = ROOT
    ) -> list[dict[str, Any]]:
        """GET /nodes/{node}/storage: only storages with Datastore.Audit or .AllocateSpace
        (pve-storage src/PVE/API2/Storage/Status.pm:244-245)."""
        self.node(name)
        privs = ["Datastore.Audit", "Datastore.AllocateSpace"]
        return [
            self._storage_json(name, s, resource=False)
            for s in self.storages
            if (content is None or s.supports(content))
            and permissions.sees(self.access, user, f"/storage/{s.storage}", privs, any_of=True)
        ]

    # --- VM read side ------------------------------------------------------------------------

    def vm_list(self, node: str, user: str = ROOT) -> list[dict[str, Any]]:
        """GET /nodes/{node}/qemu: only VMs with VM.Audit (Qemu.pm:1113)."""
        self.node(node)
        with self.lock:
            vms = [v for v in self.vms.values() if v.node == node
                   and permissions.sees(self.access, user, f"/vms/{v.vmid}", ["VM.Audit"])]
        result = []
        for vm in sorted(vms, key=lambda v: v.vmid):
            status = self._vm_status(vm)
            entry = {
                k: status[k]
                for k in (
                    "vmid",
                    "status",
                    "name",
                    "cpus",
                    "maxmem",
                    "mem",
                    "maxdisk",
                    "disk",
                    "uptime",
                    "cpu",
                    "netin",
                    "netout",
                    "diskread",
                    "diskwrite",
                )
            }
            for key in ("lock", "tags", "template", "pid"):
                if key in status:
                    entry[key] = status[key]
            result.append(entry)
        return result

    def _disk_bytes(self, vm: Vm) -> int:
        total = 0
        for key, _ in vmconfig.drives(vm.config):
            value = vm.config[key]
            size = vmconfig.drive_option(value, "size")
            if size and not vmconfig.is_cdrom(value):
                total += vmconfig.parse_size(size)
        return total

    def _boot_disk_bytes(self, vm: Vm) -> int:
        for key, _ in vmconfig.drives(vm.config):
            value = vm.config[key]
            size = vmconfig.drive_option(value, "size")
            if size and not vmconfig.is_cdrom(value):
                return vmconfig.parse_size(size)
        return 0

    def _vm_status(self, vm: Vm) -> dict[str, Any]:
        host_cpus = self.nodes[vm.node].maxcpu
        config = dict(vm.config)
        cpus = vmconfig.vcpus(config, host_cpus)
        maxmem = vmconfig.memory_mib(config) * 1024**2
        status: dict[str, Any] = {
            "vmid": vm.vmid,
            "status": vm.status,
            "qmpstatus": vm.status,
            "name": config.get("name", f"VM {vm.vmid}"),
            "cpus": cpus,
            "maxmem": maxmem,
            "mem": 0,
            "memhost": 0,
            "cpu": 0.0,
            "uptime": 0,
            "disk": 0,
            "maxdisk": self._boot_disk_bytes(vm),
            "netin": 0,
            "netout": 0,
            "diskread": 0,
            "diskwrite": 0,
            "ha": {"managed": 0},
        }
        if vm.running:
            cpu, mem = self.backend.usage(vm.vmid)
            status.update(
                {
                    "mem": mem,
                    "memhost": mem,
                    "cpu": round(cpu / max(cpus, 1), 4),
                    "uptime": int(time.time() - (vm.started_at or time.time())),
                    "pid": 100000 + vm.vmid,
                    "running-machine": "pc-i440fx-9.2+pve0",
                    "running-qemu": "9.2.0",
                }
            )
        if "lock" in config:
            status["lock"] = config["lock"]
        if "tags" in config:
            status["tags"] = config["tags"]
        if vm.is_template:
            status["template"] = 1
        if any(k.startswith("serial") for k in config):
            status["serial"] = 1
        if vm.agent_enabled:
            status["agent"] = 1
        return status

    def status_current(self, node: str, vmid: int) -> dict[str, Any]:
        """GET status/current. Not simulated: blockstat, nics, ballooninfo, pressure fields."""
        with self.lock:
            vm = self.vm(node, vmid)
        return self._vm_status(vm)

    def get_config(
        self, node: str, vmid: int, current: bool, snapshot: str | None = None
    ) -> dict[str, Any]:
        """GET config: pending applied unless current=1; `digest` of the whole file.

        Not simulated: snapshots (a `snapshot` parameter always names a missing one).
        """
        with self.lock:
            vm = self.vm(node, vmid)
            if snapshot is not None:
                raise PveError.internal(f"snapshot '{snapshot}' does not exist")
            config = dict(vm.config) if current else vm.merged()
            result = vmconfig.typed(config)
            result["digest"] = vm.digest()
        return result

    def get_pending(self, node: str, vmid: int) -> list[dict[str, Any]]:
        """GET pending: every key with value / pending / delete (GuestHelpers.pm)."""
        with self.lock:
            vm = self.vm(node, vmid)
            current = vmconfig.typed(vm.config)
            pending = vmconfig.typed(vm.pending)
            result: list[dict[str, Any]] = []
            for key in sorted(set(current) | set(pending) | set(vm.pending_delete)):
                entry: dict[str, Any] = {"key": key}
                if key in current:
                    entry["value"] = current[key]
                if key in pending:
                    entry["pending"] = pending[key]
                if key in vm.pending_delete:
                    entry["delete"] = 2 if vm.pending_delete[key] else 1
                result.append(entry)
            result.append({"key": "digest", "value": vm.digest()})
        return result

    # --- clone -------------------------------------------------------------------------------

    def clone(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST clone. Synchronous checks, then a `qmclone` task (id = source VMID).

        The new VM appears with `lock: clone` at once and is unlocked when the task ends.
        Not simulated: `snapname` (no snapshots), `pool`, `bwlimit`, cross-node clones
        (all storage is local, so `target` other than this node fails as in PVE).
        """
        newid = int(params["newid"])
        with self.lock:
            source = self.vm(node, vmid)
            if "lock" in source.config:
                raise vm_locked(source.config["lock"])
            if newid in self.vms:
                raise PveError.internal(f"unable to create VM {newid}: config file already exists")
            linked = self._clone_mode(source, params)
            permissions.clone_access(self.access, user, source.config, params.get("storage"))
            target = params.get("target")
            if target and target not in (node, "localhost"):
                self.node(target)
                raise PveError.internal(
                    f"can't clone VM to node '{target}' (VM uses local storage)"
                )
            if params.get("snapname"):
                raise PveError.internal(f"snapshot '{params['snapname']}' does not exist")
            if params.get("pool"):
                raise PveError.internal(f"pool '{params['pool']}' does not exist")
            new_config = vmconfig.clone_config(
                source.config,
                vmid,
                newid,
                params.get("name"),
                params.get("description"),
                linked,
                params.get("storage"),
            )
            new_config["lock"] = "clone"

        def work(task: Task) -> None:
            with self.lock:
                if newid in self.vms:  # lost the race for newid (worker-side re-check)
                    raise TaskError(f"unable to create VM {newid}: config file already exists")
                self.vms[newid] = Vm(newid, node, new_config, linked_base=vmid if linked else None)
            self.save()
            task.begun.set()
            for key, volid in vmconfig.drives(source.config):
                if vmconfig.is_cdrom(source.config[key]) and not vmconfig.is_cloudinit(
                    source.config[key]
                ):
                    continue
                full_copy = not linked or vmconfig.is_cloudinit(source.config[key])
                verb = "create full clone of" if full_copy else "create linked clone of"
                task.say(f"{verb} drive {key} ({volid})")
            try:
                self.backend.clone_disk(vmid, newid, linked)
            except Exception as exc:
                with self.lock:
                    self.vms.pop(newid, None)
                raise TaskError(f"clone failed: {exc}") from exc

        def finish(task: Task) -> None:
            with self.lock:
                vm = self.vms.get(newid)
                if vm is not None:
                    vm.config.pop("lock", None)

        # No operation lock on newid while copying: other workers see `lock: clone` instead.
        task = self._spawn(node, "qmclone", str(vmid), user, work, finish)
        task.begun.wait(timeout=5.0)
        return task.upid

    def _clone_mode(self, source: Vm, params: dict[str, Any]) -> bool:
        """True for a linked clone; raises PVE's synchronous errors for impossible requests."""
        full_param = params.get("full")
        full = bool(int(full_param)) if full_param is not None else not source.is_template
        if not full:
            for option in ("storage", "format"):
                if params.get(option) is not None:
                    raise PveError.internal(f"parameter '{option}' not allowed for linked clones")
            if not source.is_template:
                for key, volid in vmconfig.drives(source.config):
                    if not vmconfig.is_cdrom(source.config[key]):
                        raise PveError.internal(
                            f"Linked clone feature is not supported for '{volid}' ({key})"
                        )
        storage_name = params.get("storage")
        if storage_name is not None:
            storage = self.storage(storage_name)
            if not storage.supports("images"):
                raise PveError.params(
                    {"storage": f"storage '{storage_name}' does not support vm images"}
                )
        return not full

    # --- config update -------------------------------------------------------------------------

    def update_config(
        self, node: str, vmid: int, user: str, params: dict[str, Any], asynchronous: bool
    ) -> str | None:
        """POST (asynchronous, `qmconfig` task) or PUT (synchronous) config.

        Not simulated: `revert` only drops pending values, storage allocation for new disks
        (`local-lvm:32` syntax is stored verbatim), `import-from`, cloud-init ISO regeneration.
        """
        if not asynchronous:
            with self._op_lock(vmid):
                with self.lock:
                    vm = self.vm(node, vmid)
                    change = self._check_update(vm, params, user)
                    permissions.update_access(self.access, user, vmid, vm.merged(), change.values)
                    errors, reshape = self._apply_update(vm, change)
                self.save()
                self._reshape(vm, reshape)
                if errors:
                    raise PveError.params(errors)
            return None
        with self.lock:
            vm = self.vm(node, vmid)
            change = self._check_update(vm, params, user)

        def work(task: Task) -> None:
            with self.lock:
                current = self.vm(node, vmid)
                # in PVE's $updatefn, so inside the task for a POST
                permissions.update_access(
                    self.access, user, vmid, current.merged(), change.values
                )
                task.say(
                    f"update VM {vmid}: " + " ".join(f"-{k} {v}" for k, v in change.values.items())
                )
                errors, reshape = self._apply_update(current, change)
            self.save()
            self._reshape(current, reshape)
            if errors:
                # a PVE::Exception with errors, flattened into the task's end line
                lines = "\n".join(f"{k}: {v}" for k, v in errors.items())
                raise TaskError(f"Parameter verification failed.\n{lines}")

        task = self._spawn(node, "qmconfig", str(vmid), user, work, lock_vmid=vmid)
        delay = params.get("background_delay")
        if delay is None:
            return task.upid
        if not task.done.wait(timeout=float(delay)):
            return task.upid
        if task.exitstatus != "OK":
            raise PveError.internal(f"failed to update VM {vmid}: {task.exitstatus}")
        return None

    def _check_update(self, vm: Vm, params: dict[str, Any], user: str = ROOT) -> ConfigChange:
        """The early checks of `update_vm_api`, always synchronous."""
        from provision.sim.schema import load_schema

        schema = load_schema()
        control = {
            "node",
            "vmid",
            "delete",
            "revert",
            "digest",
            "skiplock",
            "force",
            "background_delay",
            "import-working-storage",
        }
        values = {k: vmconfig.as_config_text(v) for k, v in params.items() if k not in control}
        deletes: dict[str, int] = {}
        force = 1 if str(params.get("force", "0")) in ("1", "True", "true") else 0
        for option in re.split(r"[,; ]+", str(params.get("delete", ""))):
            if not option:
                continue
            option = "ide2" if option == "cdrom" else option
            if option in values:
                raise PveError.params(
                    {"delete": f"you can't use '-{option}' and -delete {option}' at the same time"}
                )
            if schema.property(vmconfig.CONFIG_PATH, "POST", option) is None:
                raise PveError.params({"delete": f"unknown option '{option}'"})
            deletes[option] = force
        reverts = [r for r in re.split(r"[,; ]+", str(params.get("revert", ""))) if r]
        if not values and not deletes and not reverts:
            raise PveError.internal("no options specified")
        # Qemu.pm:2196-2204: per-key privileges and bridges, before the config is loaded
        permissions.config_key_access(self.access, user, vm.vmid, [*deletes, *values])
        permissions.bridge_access(self.access, user, values)
        digest = params.get("digest")
        if digest and digest != vm.digest():
            raise PveError.internal("checksum mismatch (file change by other user?)")
        if "lock" in vm.config and not _truthy(params.get("skiplock")):
            raise vm_locked(vm.config["lock"])
        merged = {**vm.merged(), **values}
        if "balloon" in values and int(values["balloon"]) > vmconfig.memory_mib(merged):
            raise PveError.internal(
                "balloon value too large (must be smaller than assigned memory)"
            )
        if "sshkeys" in values:
            _validate_ssh_keys(unquote(values["sshkeys"]))
        if "cipassword" in values:
            salt = secrets.token_hex(8)
            digest_text = hashlib.sha256((salt + values["cipassword"]).encode()).hexdigest()
            values["cipassword"] = f"$5${salt}${digest_text}"
        return ConfigChange(values, deletes, reverts)

    def _apply_update(self, vm: Vm, change: ConfigChange) -> tuple[dict[str, str], bool]:
        """Write the change; on a running VM apply what hotplugs and keep the rest pending.

        Returns (hotplug errors per key, whether the running guest's shape changed).
        """
        for key in change.reverts:
            vm.pending.pop(key, None)
            vm.pending_delete.pop(key, None)
        if not vm.running:
            for key, force in change.deletes.items():
                vm.pending.pop(key, None)
                vm.pending_delete[key] = force
            vm.pending.update(change.values)
            vm.apply_pending()
            return {}, False
        errors: dict[str, str] = {}
        reshape = False
        for key, value in change.values.items():
            vm.pending_delete.pop(key, None)
            decision = vmconfig.hotplug_decision(key, vm.config)
            if decision == "apply":
                vm.config[key] = value
                vm.pending.pop(key, None)
                reshape = reshape or key in ("vcpus", "memory")
            else:
                vm.pending[key] = value
                if decision != "pending":
                    errors[key] = decision
        for key, force in change.deletes.items():
            vm.pending.pop(key, None)
            if vmconfig.is_fast_plug(key):
                vm.config.pop(key, None)
            elif key in vm.config:
                vm.pending_delete[key] = force
        return errors, reshape

    def _reshape(self, vm: Vm, needed: bool) -> None:
        if needed and vm.running:
            cores = vmconfig.vcpus(vm.config, self.nodes[vm.node].maxcpu)
            self.backend.reshape(vm.vmid, cores, vmconfig.memory_mib(vm.config))

    def cloudinit_regenerate(self, node: str, vmid: int) -> None:
        """PUT cloudinit: checks the lock; the ISO itself is not simulated."""
        with self.lock:
            vm = self.vm(node, vmid)
            if "lock" in vm.config:
                raise vm_locked(vm.config["lock"])

    # --- resize ------------------------------------------------------------------------------

    def resize(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """PUT resize: a `resize` task; every check runs in the worker (PVE >= 8.0)."""
        disk, size = str(params["disk"]), str(params["size"])

        def work(task: Task) -> None:
            with self.lock:
                vm = self.vm(node, vmid)
                if params.get("digest") and params["digest"] != vm.digest():
                    raise TaskError("checksum mismatch (file change by other user?)")
                if "lock" in vm.config and not _truthy(params.get("skiplock")):
                    raise TaskError(f"VM is locked ({vm.config['lock']})")
                value = vm.config.get(disk)
                if value is None:
                    raise TaskError(f"disk '{disk}' does not exist")
                if vmconfig.is_cdrom(value):
                    raise TaskError("you can't resize a cdrom")
                permissions.resize_storage_access(self.access, user, value.split(",", 1)[0])
                old = vmconfig.parse_size(vmconfig.drive_option(value, "size") or "0")
                amount = vmconfig.parse_size(size)
                new = old + amount if size.startswith("+") else amount
                if new < old:
                    raise TaskError("shrinking disks is not supported")
                if new == old:
                    task.say("Disk size unchanged.")
                    return
                vm.config[disk] = vmconfig.with_drive_option(
                    value, "size", vmconfig.format_size(new)
                )
                task.say(f"Image resized to {vmconfig.format_size(new)}.")
            self.save()

        return self._spawn(node, "resize", str(vmid), user, work, lock_vmid=vmid).upid

    # --- power -------------------------------------------------------------------------------

    def _spec(self, vm: Vm) -> GuestSpec:
        config = vm.config
        keys = unquote(config.get("sshkeys", ""))
        net0 = config.get("net0", "")
        mac = re.search(r"([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})", net0)
        return GuestSpec(
            vmid=vm.vmid,
            name=config.get("name", f"vm{vm.vmid}"),
            cores=vmconfig.vcpus(config, self.nodes[vm.node].maxcpu),
            memory_mib=vmconfig.memory_mib(config),
            ciuser=config.get("ciuser"),
            sshkeys=tuple(k.strip() for k in keys.splitlines() if k.strip()),
            ipconfig0=config.get("ipconfig0"),
            macaddr=mac.group(1).lower() if mac else "bc:24:11:00:00:00",
            # qemu-server src/PVE/QemuServer/Cloudinit.pm:186 writes `package_upgrade: true`
            # unless ciupgrade is set and false; its schema default is 1 (QemuServer.pm:805-810)
            package_upgrade=config.get("ciupgrade") is None or _truthy(config["ciupgrade"]),
            ssh_keys_delay=self.settings.cloudinit_ssh_delay,
            upgrade_seconds=self.settings.cloudinit_upgrade_seconds,
            extra={"node": vm.node, "tags": config.get("tags", "")},
        )

    def start(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST status/start: no synchronous checks at all; errors are task errors.

        Not simulated: `machine`, `timeout`, migration parameters.
        """
        self.node(node)

        def work(task: Task) -> None:
            with self.lock:
                vm = self.vm(node, vmid)
                self._check_startable(vm, params)
                vm.apply_pending()
                vm.status, vm.started_at = "running", time.time()
                spec = self._spec(vm)
            self.save()
            task.say(f"start VM {vmid}: UPID {task.upid}")
            self._boot(vm, spec)

        return self._spawn(node, "qmstart", str(vmid), user, work, lock_vmid=vmid).upid

    def _check_startable(self, vm: Vm, params: dict[str, Any]) -> None:
        if "lock" in vm.config and not _truthy(params.get("skiplock")):
            raise TaskError(f"VM is locked ({vm.config['lock']})")
        if vm.is_template:
            raise TaskError("you can't start a vm if it's a template")
        if vm.running:
            raise TaskError(f"VM {vm.vmid} already running")

    def _boot(self, vm: Vm, spec: GuestSpec) -> None:
        try:
            self.backend.start(spec)
        except Exception as exc:
            with self.lock:
                vm.status, vm.started_at = "stopped", None
            self.save()
            raise TaskError(f"start failed: {exc}") from exc

    def stop(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST status/stop: stopping a stopped VM is OK. Not simulated: keepActive."""
        self.node(node)

        def work(task: Task) -> None:
            with self.lock:
                vm = self.vm(node, vmid)
                if "lock" in vm.config and not _truthy(params.get("skiplock")):
                    raise TaskError(f"VM is locked ({vm.config['lock']})")
                was_running = vm.running
            if was_running:
                self.backend.stop(vmid)
            self._mark_stopped(vm)

        return self._spawn(node, "qmstop", str(vmid), user, work, lock_vmid=vmid).upid

    def _mark_stopped(self, vm: Vm) -> None:
        with self.lock:
            vm.status, vm.started_at = "stopped", None
        self.save()

    def shutdown(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST status/shutdown: without forceStop a timeout is a task error; with it, the VM
        is stopped hard and the task ends OK. Shutting down a stopped VM is OK."""
        with self.lock:
            self.vm(node, vmid)
        timeout = float(params.get("timeout", 60))
        force = _truthy(params.get("forceStop"))

        def work(task: Task) -> None:
            with self.lock:
                vm = self.vm(node, vmid)
                if "lock" in vm.config and not _truthy(params.get("skiplock")):
                    raise TaskError(f"VM is locked ({vm.config['lock']})")
                running = vm.running
            if running:
                self._power_down(vm, timeout, force, task)
            self._mark_stopped(vm)

        return self._spawn(node, "qmshutdown", str(vmid), user, work, lock_vmid=vmid).upid

    def _power_down(self, vm: Vm, timeout: float, force: bool, task: Task) -> None:
        if vm.vmid in self.faults.ignore_shutdown:
            time.sleep(timeout)
            stopped = False
        else:
            stopped = self.backend.shutdown(vm.vmid, timeout)
        if stopped:
            return
        if not force:
            raise TaskError("VM quit/powerdown failed - got timeout")
        task.say("VM still running - terminating now with SIGTERM")
        self.backend.stop(vm.vmid)

    def reboot(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST status/reboot: 500 if the VM is not running; applies pending changes."""
        with self.lock:
            vm = self.vm(node, vmid)
            if not vm.running:
                raise PveError.internal(f"VM {vmid} not running")
        timeout = float(params.get("timeout", 60))

        def work(task: Task) -> None:
            with self.lock:
                current = self.vm(node, vmid)
                if "lock" in current.config:
                    raise TaskError(f"VM is locked ({current.config['lock']})")
            self._power_down(current, timeout, False, task)
            with self.lock:
                current.apply_pending()
                current.started_at = time.time()
                spec = self._spec(current)
            self.save()
            self._boot(current, spec)

        return self._spawn(node, "qmreboot", str(vmid), user, work, lock_vmid=vmid).upid

    def destroy(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """DELETE the VM: 500 if running or protected; the config disappears when the task ends.

        Not simulated: `purge` (no HA/backup/replication jobs exist), unreferenced disks.
        """
        with self.lock:
            vm = self.vm(node, vmid)
            if vm.running:
                raise PveError.internal(f"VM {vmid} is running - destroy failed")
            if vm.config.get("protection") == "1":
                raise PveError.internal(f"can't remove VM {vmid} - protection mode enabled")

        def work(task: Task) -> None:
            with self.lock:
                current = self.vm(node, vmid)
                if "lock" in current.config and not _truthy(params.get("skiplock")):
                    raise TaskError(f"VM is locked ({current.config['lock']})")
                if current.running:
                    raise TaskError(f"VM {vmid} is running - destroy failed")
                users = [v.vmid for v in self.vms.values() if v.linked_base == vmid]
                if users:
                    volid = next(
                        (
                            v
                            for k, v in vmconfig.drives(current.config)
                            if not vmconfig.is_cdrom(current.config[k])
                        ),
                        "",
                    )
                    raise TaskError(
                        f"base volume '{volid}' is still in use by linked cloned VM {users[0]}"
                    )
            self.backend.delete_disk(vmid)
            task.say(f"destroying VM {vmid}")

        def finish(task: Task) -> None:
            with self.lock:
                self.vms.pop(vmid, None)

        return self._spawn(node, "qmdestroy", str(vmid), user, work, finish, lock_vmid=vmid).upid

    # --- guest agent ---------------------------------------------------------------------------

    def agent(self, node: str, vmid: int, command: str, params: dict[str, Any]) -> Any:
        """Guest agent commands: the three PVE errors, then the QGA result.

        Supported: ping, network-get-interfaces, get-host-name, get-osinfo, info and file-read.
        """
        with self.lock:
            vm = self.vm(node, vmid)
            if "agent" not in vm.config:
                raise PveError.internal("No QEMU guest agent configured")
            if not vm.running:
                raise PveError.internal(f"VM {vmid} is not running")
            started_at = vm.started_at or time.time()
            name = vm.config.get("name", f"VM {vmid}")
            enabled = vm.agent_enabled
        up = (
            enabled
            and time.time() >= started_at + self.settings.agent_delay
            and not self.faults.agent_is_down(vmid)
            and self.backend.agent_ping(vmid)
        )
        if not up:
            time.sleep(self.settings.agent_timeout)
            raise PveError.internal("QEMU guest agent is not running")
        if command == "file-read":
            return self._file_read(vmid, params)
        results: dict[str, Callable[[], Any]] = {
            "ping": dict,
            "network-get-interfaces": lambda: self.backend.network_interfaces(vmid),
            "get-host-name": lambda: {"host-name": name},
            "get-osinfo": lambda: {
                "id": "ubuntu",
                "name": "Ubuntu",
                "version-id": "24.04",
                "pretty-name": "Ubuntu 24.04 LTS",
                "kernel-release": "6.8.0-31-generic",
                "machine": "x86_64",
            },
            "info": lambda: {"version": "8.2.2", "supported_commands": []},
        }
        return {"result": results[command]()}

    def _file_read(self, vmid: int, params: dict[str, Any]) -> dict[str, Any]:
        """GET agent/file-read: `{content, bytes-read[, truncated]}` (no `result` wrapper)."""
        import base64

        path = str(params["file"])
        try:
            data = self.backend.file_read(vmid, path)
        except FileNotFoundError:
            raise PveError.internal(
                f"Agent error: failed to open file '{path}': No such file or directory"
            ) from None
        offset = int(params.get("offset", 0))
        count = int(params.get("count", 16 * 1024 * 1024))
        chunk = data[offset : offset + count]
        decode = str(params.get("decode", "1")) in ("1", "True", "true")
        content = chunk.decode("utf-8", "replace") if decode else base64.b64encode(chunk).decode()
        result: dict[str, Any] = {"content": content, "bytes-read": len(chunk)}
        if offset + count < len(data):
            result["truncated"] = 1
        return result


@dataclass(frozen=True)
class ConfigChange:
    values: dict[str, str]
    deletes: dict[str, int]
    reverts: list[str]


SSH_KEY_LINE = re.compile(
    r"^(?:[\w,=\"-]+\s+)?(ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-nistp\d+|sk-\S+)\s+[A-Za-z0-9+/]+={0,3}"
    r"(?:\s.*)?$"
)


def _validate_ssh_keys(text: str) -> None:
    """`PVE::Tools::validate_ssh_public_keys` runs ssh-keygen; a syntax check stands in."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and not SSH_KEY_LINE.match(line):
            raise PveError.internal("SSH public key validation error")


def _without_stats(entry: dict[str, Any]) -> dict[str, Any]:
    """A node entry as a caller without Sys.Audit sees it (pve-manager API2Tools.pm:38-79)."""
    hidden = {"uptime", "cpu", "mem", "disk", "maxcpu", "maxmem", "maxdisk"}
    return {k: v for k, v in entry.items() if k not in hidden}


def _truthy(value: Any) -> bool:
    return value is not None and str(value) in ("1", "True", "true")
