"""What every stage of the VM lifecycle shares: the API client, the lab file and progress, and
the reads and writes of VM entries they have in common. Proxmox is the source of truth: labctl's
VMs are found by name and the `labctl` tag, nothing is remembered locally."""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from provision.config import LabConfig
from provision.errors import NotLabctlVm, ProxmoxError, VmNotFound
from provision.progress import Reporter
from provision.pve.client import PveClient
from provision.pve.shapes import LABCTL_TAG, boot_disk, parse_tags, shape_of
from provision.pve.tasks import wait_task
from provision.shape import Shape


@dataclass(frozen=True)
class Resource:
    """A VM entry of /cluster/resources."""

    vmid: int
    node: str
    name: str
    status: str
    tags: tuple[str, ...]
    template: bool
    lock: str | None
    uptime_s: int
    maxdisk: int

    @classmethod
    def parse(cls, entry: Mapping[str, Any]) -> Resource:
        return cls(
            vmid=int(entry["vmid"]),
            node=str(entry.get("node", "")),
            name=str(entry.get("name", "")),
            status=str(entry.get("status", "unknown")),
            tags=parse_tags(entry.get("tags")),
            template=bool(int(entry.get("template", 0) or 0)),
            lock=entry.get("lock") or None,
            uptime_s=int(entry.get("uptime", 0) or 0),
            maxdisk=int(entry.get("maxdisk", 0) or 0),
        )

    @property
    def managed(self) -> bool:
        return LABCTL_TAG in self.tags

    @property
    def path(self) -> str:
        return f"nodes/{self.node}/qemu/{self.vmid}"


@dataclass
class UpContext:
    """What `up` knows about the VM it is bringing up (for error hints and rollback)."""

    name: str
    vmid: int | None = None
    node: str = ""
    created: bool = False
    tagged: bool = False
    clone_sent: bool = False  # a clone request left: the VM may exist before its answer came
    stage: str = "check"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"nodes/{self.node}/qemu/{self.vmid}"

    def resource(self, *, tags: tuple[str, ...]) -> Resource:
        """The VM being brought up as a running Resource (what the agent and destroy need)."""
        assert self.vmid is not None
        return Resource(
            vmid=self.vmid,
            node=self.node,
            name=self.name,
            status="running",
            tags=tags,
            template=False,
            lock=None,
            uptime_s=0,
            maxdisk=0,
        )


# (current shape, pending shape or None, current config, config with pending applied)
Pending = tuple[Shape, Shape | None, dict[str, Any], dict[str, Any]]


class Cluster:
    """One PVE cluster as the lifecycle stages use it; the client is made on first use."""

    def __init__(
        self, config: LabConfig, reporter: Reporter, *, client: PveClient | None = None
    ) -> None:
        self.config = config
        self.reporter = reporter
        self._client = client

    @property
    def client(self) -> PveClient:
        if self._client is None:
            self._client = PveClient.from_config(self.config)
            settings = self._client.settings
            if not settings.fingerprint and not settings.ca_bundle and not settings.verify:
                self.reporter.warn(
                    "TLS verification is off (proxmox.verify = false): anyone on "
                    "the path can pose as your Proxmox; pin its certificate with "
                    "proxmox.fingerprint instead"
                )
        return self._client

    def seconds(self, key: str) -> float:
        """A timeout from the lab file (timeouts.*), in seconds."""
        return float(self.config.get(key))

    def wait(self, upid: str, what: str, *, timeout_s: float | None = None) -> None:
        """Wait for a task; its own timeout, else timeouts.task."""
        limit = timeout_s if timeout_s is not None else self.seconds("timeouts.task")
        wait_task(self.client, upid, timeout_s=limit, what=what, reporter=self.reporter)

    # -- finding VMs -------------------------------------------------------------------

    def resources(self) -> list[Resource]:
        entries = self.client.get("cluster/resources", type="vm") or []
        return [Resource.parse(e) for e in entries if e.get("type", "qemu") == "qemu"]

    def named(self, resources: list[Resource], name: str) -> Resource | None:
        """The VM (not template) called `name`, labctl's own first."""
        matches = [r for r in resources if r.name == name and not r.template]
        if not matches:
            return None
        managed = [r for r in matches if r.managed]
        if len(managed) > 1:
            ids = ", ".join(str(r.vmid) for r in managed)
            raise ProxmoxError(
                f"several labctl VMs are named {name} (vmids {ids})",
                hint="remove the extra ones in the PVE UI",
            )
        return managed[0] if managed else matches[0]

    def require_managed(self, name: str) -> Resource:
        """labctl's VM `name`; refused when it exists but is not labctl's, apart from when it
        does not exist at all (the user may have mistyped, or picked someone else's VM)."""
        resources = self.resources()
        found = self.named(resources, name)
        if found is None:
            raise _not_found(resources, name)
        if not found.managed:
            raise NotLabctlVm(
                f"VM {name} exists (vmid {found.vmid} on {found.node}) but lacks the "
                f"'{LABCTL_TAG}' tag: labctl did not create it and will not touch it",
                hint="`labctl ls --all` lists every VM, labctl's or not",
            )
        return found

    def managed_names(self) -> list[str]:
        return sorted({r.name for r in self.resources() if r.managed and not r.template})

    # -- one VM ------------------------------------------------------------------------

    def live(self, res: Resource) -> Resource:
        """The VM with its status from status/current (cluster/resources lags up to ~10 s)."""
        status = self.client.get(f"{res.path}/status/current") or {}
        return replace(
            res,
            status=str(status.get("status", res.status)),
            lock=status.get("lock") or None,
            uptime_s=int(status.get("uptime", res.uptime_s) or 0),
        )

    def pending(self, res: Resource) -> Pending:
        """(current shape, pending shape or None, current config, config with pending applied)
        from one GET .../pending."""
        entries = self.client.get(f"{res.path}/pending") or []
        current = {e["key"]: e["value"] for e in entries if "value" in e}
        wanted = dict(current)
        pending = False
        for entry in entries:
            if "pending" in entry:
                wanted[entry["key"]] = entry["pending"]
                pending = pending or entry["key"] != "digest"
            if entry.get("delete"):
                wanted.pop(entry["key"], None)
                pending = True
        disk = boot_disk(current)
        now = replace(shape_of(current), disk_gib=disk[1] if disk else None)
        later = replace(shape_of(wanted), disk_gib=now.disk_gib) if pending else None
        return now, later, current, wanted

    def pending_keys(self, res: Resource) -> tuple[str, ...]:
        entries = self.client.get(f"{res.path}/pending") or []
        return tuple(
            sorted(
                str(e["key"])
                for e in entries
                if ("pending" in e or e.get("delete")) and e["key"] != "digest"
            )
        )

    def apply_config(self, res: Resource, params: dict[str, Any]) -> None:
        upid = self.client.post(f"{res.path}/config", **params)
        if upid:
            self.wait(upid, f"config update of {res.name}")


def _not_found(resources: list[Resource], name: str) -> ProxmoxError:
    """No VM called `name`: a template of that name is refused as not labctl's (it exists)."""
    template = next((r for r in resources if r.name == name and r.template), None)
    if template is not None:
        return NotLabctlVm(
            f"{name} (vmid {template.vmid} on {template.node}) is a template, not a "
            f"'{LABCTL_TAG}' VM: labctl will not touch it",
        )
    return VmNotFound(f"no VM named {name}", hint="`labctl ls` lists labctl's VMs")


SLOT_WAIT_S = 0.05  # how often a call waiting for a slot tries them again


class LocalLocks:
    """flocks in the state dir: serialise labctl processes on this machine (PVE reserves
    nothing, so two `up`s of one name, or two VMID allocations, must not overlap), or bound
    how many of them do one thing at once (`one_of`). The kernel drops a dead process's flocks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def one_of(self, name: str, count: int) -> Iterator[None]:
        """Hold one of `count` slots called `name` (any thread or process of this machine
        sharing the state dir), waiting while all are held."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        paths = [self.directory / f"{stem}.{slot}.lock" for slot in range(count)]
        while True:
            for path in paths:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    yield
                    return
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
            time.sleep(SLOT_WAIT_S)
