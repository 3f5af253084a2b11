"""The VM lifecycle on Proxmox VE: up (clone -> shape -> boot -> IP -> pinned key -> SSH), ls,
resize, down. Proxmox is the source of truth: labctl's VMs are found by name and the `labctl` tag.

`up` on an existing labctl VM reconciles it (reshape, start) instead of cloning again. A step that
fails after the clone leaves the VM in place (tagged, so `labctl down NAME` removes it) unless
`rollback` is asked for. Two `up`s at once are safe: a local lock serialises VMID allocation and
the clone request, and a lost race on the VMID (PVE reserves nothing) is retried with a new id.
"""

from __future__ import annotations

import fcntl
import importlib
import ipaddress
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from provision.config import LabConfig, validate_vm_name
from provision.errors import (
    AgentTimeout,
    CommandFailed,
    ConfigError,
    GuestError,
    HostKeyMismatch,
    Interrupted,
    LabctlError,
    NotLabctlVm,
    ProxmoxAPIError,
    ProxmoxError,
    TaskFailed,
    UsageError,
    VmNotFound,
)
from provision.guest.known_hosts import forget_host_key, parse_public_key, pin_host_key
from provision.guest.types import GuestAddress
from provision.progress import Reporter, Stopwatch
from provision.pve.client import PveClient
from provision.pve.tasks import wait_task
from provision.shape import DEFAULT_DISK_GIB, NodeCapacity, Shape, check_fits, format_mib

LABCTL_TAG = "labctl"
# Written into the clone's description by the clone call itself, before the tag can be set:
# a VM interrupted between clone and configure is still recognised as ours by `up`.
CLONE_MARK = "Created by labctl"
HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key.pub"
AGENT_NOT_UP = ("QEMU guest agent is not running", "guest agent is not running")
NOTE_EVERY_S = 5.0
# Every agent endpoint runs in pvedaemon (3 workers per node, pve-manager
# PVE/Service/pvedaemon.pm:18) and holds its worker up to 3 s while no agent answers
# (qemu-server src/PVE/QemuServer/Agent.pm:82-89). So: one agent call per VM at a time, at most
# AGENT_CALLS_IN_FLIGHT per labctl process (a worker stays free for everything else), and a
# growing pause between the polls of one VM.
AGENT_CALLS_IN_FLIGHT = 2
AGENT_BACKOFF_S = (0.25, 1.5, 2.0)  # first pause, growth factor, longest pause
# The host key read through the agent: cloud-init may not have written it yet (file-read 500)
# or may be about to replace it, so labctl pins it only once two reads this far apart agree.
KEY_SETTLE_S = 0.5
VMID_ATTEMPTS = 8
_BOOT_DISK_RE = re.compile(r"^(scsi|virtio|sata|ide)\d+$")
_SIZE_RE = re.compile(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)")


@dataclass(frozen=True)
class ShapeRequest:
    """A shape where None means 'not asked for': keep the VM's value (or use the default)."""

    cores: int | None = None
    memory_mib: int | None = None
    cpu_type: str | None = None
    disk_gib: int | None = None

    @classmethod
    def exactly(cls, shape: Shape) -> ShapeRequest:
        return cls(shape.cores, shape.memory_mib, shape.cpu_type, shape.disk_gib)

    def over(self, base: Shape) -> Shape:
        return Shape(
            cores=self.cores if self.cores is not None else base.cores,
            memory_mib=self.memory_mib if self.memory_mib is not None else base.memory_mib,
            cpu_type=self.cpu_type if self.cpu_type is not None else base.cpu_type,
            disk_gib=self.disk_gib if self.disk_gib is not None else base.disk_gib,
        )

    @property
    def empty(self) -> bool:
        return self == ShapeRequest()


@dataclass(frozen=True)
class VmInfo:
    """One VM as labctl shows it (`ls`, `up`'s result)."""

    name: str
    vmid: int
    node: str
    status: str
    shape: Shape
    ip: str | None
    uptime_s: int
    tags: tuple[str, ...]
    pending: bool
    pending_shape: Shape | None = None
    lock: str | None = None

    @property
    def managed(self) -> bool:
        return LABCTL_TAG in self.tags

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "vmid": self.vmid, "node": self.node, "status": self.status,
            "cores": self.shape.cores, "memory_mib": self.shape.memory_mib,
            "cpu_type": self.shape.cpu_type, "disk_gib": self.shape.disk_gib, "ip": self.ip,
            "uptime_s": self.uptime_s, "tags": list(self.tags), "managed": self.managed,
            "pending": self.pending,
        }
        if self.pending_shape is not None:
            data["pending_shape"] = {"cores": self.pending_shape.cores,
                                     "memory_mib": self.pending_shape.memory_mib,
                                     "cpu_type": self.pending_shape.cpu_type}
        if self.lock:
            data["lock"] = self.lock
        return data


@dataclass(frozen=True)
class ResizeResult:
    name: str
    vmid: int
    before: Shape
    after: Shape
    running: bool
    pending_keys: tuple[str, ...] = ()
    rebooted: bool = False

    @property
    def changed(self) -> bool:
        return (self.before.cores, self.before.memory_mib, self.before.cpu_type) != (
            self.after.cores, self.after.memory_mib, self.after.cpu_type)

    @property
    def reboot_needed(self) -> bool:
        return bool(self.pending_keys) and not self.rebooted

    def to_json(self) -> dict[str, Any]:
        def shape(s: Shape) -> dict[str, Any]:
            return {"cores": s.cores, "memory_mib": s.memory_mib, "cpu_type": s.cpu_type}

        return {"name": self.name, "vmid": self.vmid, "before": shape(self.before),
                "after": shape(self.after), "running": self.running, "changed": self.changed,
                "pending_keys": list(self.pending_keys), "rebooted": self.rebooted,
                "reboot_needed": self.reboot_needed}


@dataclass(frozen=True)
class _Resource:
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
    def parse(cls, entry: Mapping[str, Any]) -> _Resource:
        return cls(
            vmid=int(entry["vmid"]), node=str(entry.get("node", "")),
            name=str(entry.get("name", "")), status=str(entry.get("status", "unknown")),
            tags=parse_tags(entry.get("tags")), template=bool(int(entry.get("template", 0) or 0)),
            lock=entry.get("lock") or None, uptime_s=int(entry.get("uptime", 0) or 0),
            maxdisk=int(entry.get("maxdisk", 0) or 0),
        )

    @property
    def managed(self) -> bool:
        return LABCTL_TAG in self.tags

    @property
    def path(self) -> str:
        return f"nodes/{self.node}/qemu/{self.vmid}"


@dataclass
class _UpContext:
    """What `up` knows about the VM it is bringing up (for error hints and rollback)."""

    name: str
    vmid: int | None = None
    node: str = ""
    created: bool = False
    tagged: bool = False
    clone_sent: bool = False  # a clone request left: the VM may exist before its answer came
    stage: str = "check"
    timings: dict[str, float] = field(default_factory=dict)


# -- pure helpers ------------------------------------------------------------------------------

def parse_tags(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(t for t in re.split(r"[;,\s]+", str(value)) if t)


def parse_memory_mib(value: Any) -> int:
    """PVE memory: 2048, "2048" or the 8.1+ property string "current=2048"; absent = 512."""
    if value is None or value == "":
        return 512
    text = str(value)
    for part in text.split(","):
        key, _, val = part.partition("=")
        if not _:
            return int(key)
        if key == "current":
            return int(val)
    return 512


def parse_cpu_type(value: Any) -> str:
    """'host' / 'cputype=host,flags=+aes' -> 'host'; absent = kvm64 (the API default)."""
    if not value:
        return "kvm64"
    for part in str(value).split(","):
        key, eq, val = part.partition("=")
        if not eq:
            return key
        if key == "cputype":
            return val
    return "kvm64"


def shape_of(config: Mapping[str, Any]) -> Shape:
    cores = int(config.get("cores", 1) or 1) * int(config.get("sockets", 1) or 1)
    if config.get("vcpus"):
        cores = int(config["vcpus"])
    return Shape(cores=cores, memory_mib=parse_memory_mib(config.get("memory")),
                 cpu_type=parse_cpu_type(config.get("cpu")))


def grown_disk_gib(wanted: int | None, current: int) -> int | None:
    """What a new VM's boot disk grows to (None: it stays): the size asked for, else
    DEFAULT_DISK_GIB. Disks only grow, so a template disk already as big stays as it is."""
    target = wanted if wanted is not None else DEFAULT_DISK_GIB
    return target if target > current else None


def boot_disk(config: Mapping[str, Any]) -> tuple[str, int] | None:
    """(disk key, size in GiB) of the boot disk, from `boot: order=...` or the first disk."""
    order: list[str] = []
    boot = str(config.get("boot", ""))
    if boot.startswith("order="):
        order = [k for k in boot.removeprefix("order=").split(";") if k]
    candidates = order + sorted(k for k in config if _BOOT_DISK_RE.match(k))
    for key in candidates:
        drive = str(config.get(key, ""))
        if not drive or "media=cdrom" in drive or not _BOOT_DISK_RE.match(key):
            continue
        match = _SIZE_RE.search(drive)
        if not match:
            continue
        number, unit = float(match.group(1)), match.group(2)
        factor = {"": 1 / 1024**3, "K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024}[unit]
        return key, int(number * factor)
    return None


def pick_address(interfaces: Any) -> str | None:
    """The guest's address: skip lo, loopback and link-local; IPv4 first, else global IPv6."""
    v4: list[str] = []
    v6: list[str] = []
    for iface in interfaces or []:
        if str(iface.get("name", "")) == "lo":
            continue
        for entry in iface.get("ip-addresses") or []:
            try:
                address = ipaddress.ip_address(str(entry.get("ip-address", "")).split("%")[0])
            except ValueError:
                continue
            if address.is_loopback or address.is_link_local or address.is_unspecified:
                continue
            (v4 if address.version == 4 else v6).append(str(address))
    if v4:
        return v4[0]
    return v6[0] if v6 else None


def ipconfig(ip: str, gateway: str) -> str:
    """ipconfig0 for cloud-init: 'ip=dhcp' or 'ip=CIDR[,gw=GW]' (checked before use)."""
    if not ip or ip == "dhcp":
        if gateway:
            raise ConfigError("a gateway is set but the address is dhcp; drop the gateway")
        return "ip=dhcp"
    try:
        ipaddress.ip_interface(ip)
    except ValueError:
        raise ConfigError(f"invalid static address {ip!r}: use CIDR like 192.168.1.50/24 or "
                          "dhcp") from None
    if "/" not in ip:
        raise ConfigError(f"static address {ip!r} needs a prefix length, e.g. {ip}/24")
    value = f"ip={ip}"
    if gateway:
        try:
            ipaddress.ip_address(gateway)
        except ValueError:
            raise ConfigError(f"invalid gateway {gateway!r}") from None
        value += f",gw={gateway}"
    return value


def changed_params(params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Only the keys whose value differs from the VM's config (an unchanged key sent to a
    running VM would only add noise to its pending list)."""
    normal: dict[str, Callable[[Any], Any]] = {
        "memory": parse_memory_mib, "cpu": parse_cpu_type,
        "cores": lambda v: int(v or 1), "sockets": lambda v: int(v or 1),
        "balloon": lambda v: None if v is None or v == "" else int(v),
    }
    changed: dict[str, Any] = {}
    for key, value in params.items():
        norm = normal.get(key, lambda v: None if v is None else str(v))
        if norm(config.get(key)) != norm(value):
            changed[key] = value
    return changed


def _is_race(error: LabctlError) -> bool:
    text = str(error).lower()
    return "already exists" in text


# -- the lab -----------------------------------------------------------------------------------

class Lab:
    """labctl's VMs on one Proxmox VE cluster."""

    def __init__(self, config: LabConfig, state_dir: Path, reporter: Reporter, *,
                 client: PveClient | None = None) -> None:
        self.config = config
        self.state_dir = state_dir
        self.reporter = reporter
        self._client = client
        self.known_hosts = state_dir / "known_hosts"
        self._locks = state_dir / "locks"
        self._agent_calls = threading.BoundedSemaphore(AGENT_CALLS_IN_FLIGHT)

    @property
    def client(self) -> PveClient:
        if self._client is None:
            self._client = PveClient.from_config(self.config)
            settings = self._client.settings
            if not settings.fingerprint and not settings.ca_bundle and not settings.verify:
                self.reporter.warn("TLS verification is off (proxmox.verify = false): anyone on "
                                   "the path can pose as your Proxmox; pin its certificate with "
                                   "proxmox.fingerprint instead")
        return self._client

    # -- reading -------------------------------------------------------------------------

    def _resources(self) -> list[_Resource]:
        entries = self.client.get("cluster/resources", type="vm") or []
        return [_Resource.parse(e) for e in entries if e.get("type", "qemu") == "qemu"]

    def _named(self, resources: list[_Resource], name: str) -> _Resource | None:
        matches = [r for r in resources if r.name == name and not r.template]
        if not matches:
            return None
        managed = [r for r in matches if r.managed]
        if len(managed) > 1:
            ids = ", ".join(str(r.vmid) for r in managed)
            raise ProxmoxError(f"several labctl VMs are named {name} (vmids {ids})",
                               hint="remove the extra ones in the PVE UI")
        return managed[0] if managed else matches[0]

    def _require_managed(self, name: str) -> _Resource:
        found = self._named(self._resources(), name)
        if found is None:
            raise VmNotFound(f"no VM named {name}", hint="`labctl ls` lists labctl's VMs")
        if not found.managed:
            raise NotLabctlVm(
                f"VM {name} (vmid {found.vmid}) lacks the '{LABCTL_TAG}' tag: labctl did not "
                "create it and will not touch it",
            )
        return found

    def _live(self, res: _Resource) -> _Resource:
        """The VM with its status from status/current (cluster/resources lags up to ~10 s)."""
        status = self.client.get(f"{res.path}/status/current") or {}
        return replace(res, status=str(status.get("status", res.status)),
                       lock=status.get("lock") or None,
                       uptime_s=int(status.get("uptime", res.uptime_s) or 0))

    def node_capacity(self, node: str) -> NodeCapacity:
        status = self.client.get(f"nodes/{node}/status")
        memory = status.get("memory") or {}
        total = int(memory.get("total", 0))
        free = int(memory.get("available", memory.get("free", 0)) or memory.get("free", 0))
        cpus = int((status.get("cpuinfo") or {}).get("cpus", 0))
        return NodeCapacity(node=node, cpus=cpus, memory_total_mib=total // 2**20,
                            memory_free_mib=free // 2**20)

    def choose_node(self, wanted: str = "") -> str:
        """The configured node, else the online node with most free memory."""
        nodes = self.client.get("nodes") or []
        online = {str(n["node"]): n for n in nodes if n.get("status") == "online"}
        if wanted:
            if wanted not in online:
                known = ", ".join(sorted(str(n["node"]) for n in nodes)) or "none"
                raise UsageError(f"node {wanted!r} is not an online node of this cluster "
                                 f"(nodes: {known})")
            return wanted
        if not online:
            raise ProxmoxError("no online node in the cluster")
        return max(online, key=lambda n: int(online[n].get("maxmem", 0))
                   - int(online[n].get("mem", 0)))

    def _pending(self, res: _Resource) -> tuple[Shape, Shape | None, dict[str, Any],
                                                dict[str, Any]]:
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

    def _agent_get(self, path: str, *, poll: bool = False, **params: Any) -> Any:
        """One agent call, never retried here, and at most AGENT_CALLS_IN_FLIGHT at once."""
        with self._agent_calls:
            return self.client.get(path, poll=poll, retry=False, **params)

    def _agent_ip(self, res: _Resource) -> str | None:
        try:
            data = self._agent_get(f"{res.path}/agent/network-get-interfaces")
        except LabctlError as error:
            if isinstance(error, ProxmoxAPIError) and error.status == 403:
                raise  # a missing privilege is not "no address yet"
            return None
        return pick_address((data or {}).get("result"))

    def _info(self, res: _Resource, *, with_ip: bool) -> VmInfo:
        shape, later, _, _ = self._pending(res)
        ip = self._agent_ip(res) if with_ip and res.status == "running" else None
        return VmInfo(name=res.name, vmid=res.vmid, node=res.node, status=res.status,
                      shape=shape, ip=ip, uptime_s=res.uptime_s, tags=res.tags,
                      pending=later is not None, pending_shape=later, lock=res.lock)

    def find(self, name: str) -> VmInfo:
        return self._info(self._require_managed(name), with_ip=True)

    def guest(self, name: str) -> GuestAddress:
        """SSH address of a running labctl VM, its host key pinned (re-pinned via the agent)."""
        res = self._require_managed(name)
        if res.status != "running":
            raise GuestError(f"VM {name} is {res.status}", hint=f"run `labctl up {name}`")
        ip = self._agent_ip(res)
        if ip is None:
            raise GuestError(f"the guest agent of {name} reports no address",
                             hint="is qemu-guest-agent running in the VM?")
        address = self._address(name, ip)
        if not self._is_pinned(ip):
            self._pin_key(res, ip)
        return address

    def _address(self, name: str, ip: str) -> GuestAddress:
        return GuestAddress(host=ip, user=str(self.config.get("ssh.user")),
                            key_path=Path(str(self.config.get("ssh.key"))).expanduser(),
                            known_hosts=self.known_hosts, name=name)

    def _is_pinned(self, ip: str) -> bool:
        from provision.guest.known_hosts import pinned_hosts

        return self.known_hosts.exists() and ip in pinned_hosts(self.known_hosts)

    # -- up ------------------------------------------------------------------------------

    def up(self, name: str, shape: Shape | ShapeRequest | None = None, *, node: str = "",
           full: bool = False, allow_overcommit: bool = False, rollback: bool = False,
           ip: str | None = None, gateway: str | None = None) -> VmInfo:
        """Bring VM `name` to `shape` and SSH-ready: create it, or reconcile the existing one."""
        validate_vm_name(name)
        request = ShapeRequest.exactly(shape) if isinstance(shape, Shape) else (
            shape or ShapeRequest())
        ctx = _UpContext(name=name)
        with self._lock(f"vm-{name}"):
            try:
                return self._up(ctx, request, node=node, full=full,
                                allow_overcommit=allow_overcommit, ip=ip, gateway=gateway)
            except KeyboardInterrupt:
                raise self._after_failure(ctx, Interrupted(f"interrupted during {ctx.stage}"),
                                          rollback) from None
            except LabctlError as error:
                raise self._after_failure(ctx, error, rollback) from error

    def _up(self, ctx: _UpContext, request: ShapeRequest, *, node: str, full: bool,
            allow_overcommit: bool, ip: str | None, gateway: str | None) -> VmInfo:
        self.reporter.stage("check")
        resources = self._resources()
        existing = self._named(resources, ctx.name)
        pubkey = self._public_key()
        net = ipconfig(ip if ip is not None else str(self.config.get("network.ip")),
                       gateway if gateway is not None else str(self.config.get("network.gateway")))
        if existing is not None:
            ctx.vmid, ctx.node, ctx.tagged = existing.vmid, existing.node, existing.managed
            if node and node != existing.node:
                self.reporter.warn(f"{ctx.name} already runs on {existing.node}; labctl does "
                                   f"not migrate VMs, so --node {node} is ignored")
            return self._reconcile(ctx, existing, request, allow_overcommit, pubkey, net)
        shape = request.over(self.config.default_shape())
        template = self._template(resources, full)
        wanted_node = node or str(self.config.get("proxmox.node"))
        target = self.choose_node(wanted_node)
        check_fits(shape, self.node_capacity(target), allow_overcommit=allow_overcommit)
        template_disk = self._check_disk_request(template, shape)
        self.reporter.step(f"{shape.label} on node {target}; template {template.name} "
                           f"(vmid {template.vmid})")
        try:
            self._clone(ctx, template, target, full)
        except ProxmoxAPIError as error:
            if "local storage" not in error.message or target == template.node:
                raise
            if wanted_node:
                error.hint = (f"template {template.name} lives on local storage of "
                              f"{template.node}: use --node {template.node}, or a template on "
                              "shared storage")
                raise
            # The node was our choice, not the user's: fall back to the template's own node.
            self.reporter.warn(f"template {template.name} is on local storage of "
                               f"{template.node}; creating {ctx.name} there instead of {target}")
            target = template.node
            check_fits(shape, self.node_capacity(target), allow_overcommit=allow_overcommit)
            self._clone(ctx, template, target, full)
        disk_gib = self._configure_new(ctx, shape, pubkey, net, template_disk)
        return self._boot_and_reach(ctx, replace(shape, disk_gib=disk_gib))

    def _public_key(self) -> str:
        key = Path(str(self.config.get("ssh.key"))).expanduser()
        pub = key.with_name(key.name + ".pub")
        if pub.is_file():
            text = pub.read_text(encoding="utf-8").strip()
            parse_public_key(text)
            return text
        if not key.is_file():
            raise ConfigError(f"SSH key {key} does not exist",
                              hint=f"create one: ssh-keygen -t ed25519 -f {key} -N ''")
        raise ConfigError(f"{pub} is missing (labctl gives it to cloud-init)",
                          hint=f"ssh-keygen -y -f {key} > {pub}")

    def _template(self, resources: list[_Resource], full: bool) -> _Resource:
        wanted = str(self.config.get("template.name")).strip()
        if wanted.isdigit():
            found = [r for r in resources if r.vmid == int(wanted)]
        else:
            found = [r for r in resources if r.name == wanted and r.template] or [
                r for r in resources if r.name == wanted]
        if not found:
            raise ProxmoxError(f"template {wanted!r} not found on the cluster",
                               hint="set template.name to the template's name or VMID; an API "
                                    "token sees only the VMs it has VM.Audit on")
        if len(found) > 1:
            ids = ", ".join(str(r.vmid) for r in found)
            raise ProxmoxError(f"several VMs are named {wanted!r} (vmids {ids})",
                               hint="set template.name to the template's VMID")
        template = found[0]
        if not template.template and not full:
            raise UsageError(f"VM {wanted} ({template.vmid}) is not a template: a linked clone "
                             "needs one; convert it to a template or use --full")
        return template

    def _check_disk_request(self, template: _Resource, shape: Shape) -> tuple[str, int] | None:
        """Refuse a --disk smaller than the template's boot disk before cloning."""
        if shape.disk_gib is None:
            return None
        config = self.client.get(f"{template.path}/config")
        disk = boot_disk(config)
        if disk is None:
            raise ProxmoxError(f"template {template.name} has no boot disk to grow")
        if shape.disk_gib < disk[1]:
            raise UsageError(f"--disk {shape.disk_gib}G is smaller than the template's "
                             f"{disk[0]} ({disk[1]}G): disks only grow")
        return disk

    def _clone(self, ctx: _UpContext, template: _Resource, target: str, full: bool) -> None:
        ctx.stage = "clone"
        self.reporter.stage("clone")
        watch = Stopwatch()
        params: dict[str, Any] = {"name": ctx.name, "description": f"{CLONE_MARK} (labctl up)",
                                  "full": full}
        if full:
            params["storage"] = str(self.config.get("template.storage")) or None
        if target != template.node:
            params["target"] = target
        for _attempt in range(VMID_ATTEMPTS):
            with self._lock("nextid"):
                vmid = int(self.client.get("cluster/nextid"))
                ctx.clone_sent = True
                try:
                    upid = self.client.post(f"{template.path}/clone", newid=vmid, **params)
                except ProxmoxAPIError as error:
                    if _is_race(error):
                        continue
                    raise
            ctx.vmid, ctx.node, ctx.created = vmid, target, True
            try:
                wait_task(self.client, upid, timeout_s=float(self.config.get("timeouts.clone")),
                          what=f"clone of {template.name} to {ctx.name} (vmid {vmid})",
                          reporter=self.reporter)
            except TaskFailed as error:
                ctx.created = False  # PVE removes the half-made VM when the clone task fails
                if _is_race(error):
                    continue
                raise
            kind = "full" if full else "linked"
            self.reporter.step(f"vmid {vmid} on {target} ({kind} clone) in {watch.elapsed:.1f}s")
            ctx.timings["clone"] = watch.elapsed
            return
        raise ProxmoxError(f"could not allocate a VMID after {VMID_ATTEMPTS} attempts "
                           "(other clients keep taking them)")

    def _configure_new(self, ctx: _UpContext, shape: Shape, pubkey: str, net: str,
                       template_disk: tuple[str, int] | None) -> int | None:
        """Shape, tag and cloud-init in one call, then grow the boot disk; returns its size."""
        ctx.stage = "configure"
        self.reporter.stage("configure")
        path = f"nodes/{ctx.node}/qemu/{ctx.vmid}"
        current = self.client.get(f"{path}/config")
        params = self._shape_params(shape)
        params.update({
            "tags": LABCTL_TAG, "agent": "enabled=1", "ciuser": str(self.config.get("ssh.user")),
            "sshkeys": quote(pubkey + "\n", safe=""), "ipconfig0": net,
            # PVE's default (1) has cloud-init upgrade every package at first boot, while labctl
            # deploys and measures (qemu-server src/PVE/QemuServer/Cloudinit.pm:186)
            "ciupgrade": bool(self.config.get("template.ciupgrade")),
            "digest": current.get("digest"),
        })
        nameserver = str(self.config.get("network.nameserver")).strip()
        if nameserver:
            params["nameserver"] = nameserver
        net0 = self._net0_with_bridge(str(current.get("net0", "")))
        if net0:
            params["net0"] = net0
        self.client.put(f"{path}/config", **params)
        ctx.tagged = True
        self.reporter.step(f"{shape.label}, tag {LABCTL_TAG}, agent on, cloud-init "
                           f"user {params['ciuser']}, {net}")
        disk = boot_disk(current) or template_disk
        if disk is None:
            return shape.disk_gib
        grow_to = grown_disk_gib(shape.disk_gib, disk[1])
        if grow_to is not None:
            self._grow_disk(ctx, disk[0], disk[1], grow_to)
        return grow_to or disk[1]

    def _shape_params(self, shape: Shape) -> dict[str, Any]:
        return {"cores": shape.cores, "sockets": 1, "memory": shape.memory_mib, "balloon": 0,
                "cpu": shape.cpu_type}

    def _net0_with_bridge(self, net0: str) -> str | None:
        bridge = str(self.config.get("template.bridge")).strip()
        if not net0 or not bridge:
            return None
        parts = net0.split(",")
        if f"bridge={bridge}" in parts:
            return None
        parts = [p for p in parts if not p.startswith("bridge=")] + [f"bridge={bridge}"]
        return ",".join(parts)

    def _grow_disk(self, ctx: _UpContext, disk: str, old_gib: int, new_gib: int) -> None:
        self.reporter.stage("disk")
        upid = self.client.put(f"nodes/{ctx.node}/qemu/{ctx.vmid}/resize", disk=disk,
                               size=f"{new_gib}G")
        if upid:
            wait_task(self.client, upid, timeout_s=float(self.config.get("timeouts.task")),
                      what=f"resize of {disk}", reporter=self.reporter)
        self.reporter.step(f"{disk} grown from {old_gib}G to {new_gib}G")

    def _boot_and_reach(self, ctx: _UpContext, shape: Shape, *, start: bool = True) -> VmInfo:
        path = f"nodes/{ctx.node}/qemu/{ctx.vmid}"
        assert ctx.vmid is not None
        # paramiko takes a few hundred ms to import: do it while the VM boots, not after.
        threading.Thread(target=importlib.import_module, args=("provision.guest.ssh",),
                         daemon=True).start()
        if start:
            ctx.stage = "start"
            self.reporter.stage("start")
            watch = Stopwatch()
            upid = self.client.post(f"{path}/status/start")
            wait_task(self.client, upid, timeout_s=float(self.config.get("timeouts.task")),
                      what=f"start of {ctx.name}", reporter=self.reporter)
            self.reporter.step(f"started in {watch.elapsed:.1f}s")
        res = _Resource(vmid=ctx.vmid, node=ctx.node, name=ctx.name, status="running",
                        tags=(LABCTL_TAG,), template=False, lock=None, uptime_s=0, maxdisk=0)
        ip = self._wait_agent(ctx, res)
        self._reach(ctx, res, ip)
        return VmInfo(name=ctx.name, vmid=ctx.vmid, node=ctx.node, status="running",
                      shape=shape, ip=ip, uptime_s=0, tags=(LABCTL_TAG,), pending=False)

    def _wait_agent(self, ctx: _UpContext, res: _Resource) -> str:
        """Poll agent/network-get-interfaces until it reports a usable address.

        One poll at a time, with a growing pause in between: while the agent is not up, PVE
        answers "QEMU guest agent is not running" only after its 3 s guest-ping timeout, and
        that poll holds one of pvedaemon's 3 workers meanwhile; two polls per VM (or a poll
        right after the last) would leave nothing for the other API calls of a parallel sweep.
        """
        ctx.stage = "agent"
        self.reporter.stage("agent")
        timeout = float(self.config.get("timeouts.agent"))
        watch = Stopwatch()
        next_note = NOTE_EVERY_S
        first, growth, longest = AGENT_BACKOFF_S
        pause = first
        last = "no answer yet"
        v6_since: float | None = None
        path = f"{res.path}/agent/network-get-interfaces"
        while True:
            try:
                data = self._agent_get(path, poll=True)
            except ProxmoxAPIError as error:
                last = self._agent_wait_error(ctx, error)
            except LabctlError as error:  # connection trouble: a transient failure of this poll
                last = error.message
            else:
                ip = pick_address((data or {}).get("result") or [])
                if ip and ":" in ip and v6_since is None:
                    v6_since = watch.elapsed  # give DHCPv4 a moment before taking IPv6
                if ip and (":" not in ip or watch.elapsed - (v6_since or 0.0) > 10):
                    self.reporter.step(f"address {ip} after {watch.elapsed:.1f}s")
                    return ip
                last = "the agent answers but reports no usable address yet"
            if watch.elapsed >= timeout:
                raise AgentTimeout(
                    f"the guest agent of {ctx.name} (vmid {ctx.vmid}) gave no IP address "
                    f"within {timeout:g}s ({last})",
                    hint="check that qemu-guest-agent is installed and enabled in the "
                         "template and that the VM's agent option is on (Options > QEMU "
                         "Guest Agent)",
                )
            if watch.elapsed >= next_note:
                self.reporter.step(f"waiting for the guest agent "
                                   f"({timeout - watch.elapsed:.0f}s left: {last})")
                next_note += NOTE_EVERY_S
            time.sleep(min(pause, max(0.0, timeout - watch.elapsed)))
            pause = min(longest, pause * growth)

    def _agent_wait_error(self, ctx: _UpContext, error: ProxmoxAPIError) -> str:
        """Which agent errors mean 'keep waiting' (returned as text) and which end the wait."""
        if error.status == 500 and any(m in error.message for m in AGENT_NOT_UP):
            return "QEMU guest agent is not running"
        if "No QEMU guest agent configured" in error.message:
            raise AgentTimeout(f"VM {ctx.name} has no guest agent configured",
                               hint="labctl sets agent=1; was the config changed?")
        if re.search(r"VM \d+ is not running", error.message):
            raise GuestError(f"VM {ctx.name} stopped while labctl waited for its guest agent",
                             hint="see the VM's console / task log in the PVE UI")
        if error.status >= 500:
            return error.message  # transient; keep waiting
        raise error

    def _pin_key(self, res: _Resource, ip: str) -> str:
        """Read the guest's ed25519 host key through the agent (not over SSH) and pin it.

        The agent can report an address before cloud-init's ssh module has run: the key is not
        there yet (file-read answers 500 "failed to open file ...") or is the image's, about to
        be deleted and regenerated (canonical/cloud-init cloudinit/config/cc_ssh.py:99-104,
        155-182). So the read is repeated until the key exists and two reads KEY_SETTLE_S apart
        agree, within timeouts.agent.
        """
        timeout = float(self.config.get("timeouts.agent"))
        watch = Stopwatch()
        path = f"{res.path}/agent/file-read"
        previous: str | None = None
        last = "no answer yet"
        while True:
            try:
                content: str | None = _file_content(self._agent_get(path, file=HOST_KEY_PATH))
            except ProxmoxAPIError as error:
                if error.status == 403:
                    raise  # Proxmox refused (a privilege), not the guest
                if error.status < 500 or "No QEMU guest agent configured" in error.message \
                        or re.search(r"VM \d+ is not running", error.message):
                    raise self._key_error(res, error.message) from error  # reads cannot fix it
                content, last = None, error.message
            except LabctlError as error:  # connection trouble: try again
                content, last = None, error.message
            if content is not None and content == previous:
                line = _decode_key_content(content)
                return pin_host_key(self.known_hosts, ip, line, aliases=[res.name])
            if content is not None and previous is not None:
                last = "the key changed between two reads"
            previous = content
            if watch.elapsed >= timeout:
                raise self._key_error(res, f"no stable key within {timeout:g}s ({last})")
            # one call at a time: a missing file answers at once, a silent agent after 3 s
            time.sleep(min(KEY_SETTLE_S, max(0.0, timeout - watch.elapsed)))

    def _key_error(self, res: _Resource, why: str) -> GuestError:
        return GuestError(
            f"cannot read {HOST_KEY_PATH} of {res.name} through the guest agent: {why}",
            hint="labctl pins SSH host keys from the agent; the template needs an ed25519 host "
                 "key (cloud-init makes one) and an agent that allows file-read",
        )

    def _reach(self, ctx: _UpContext, res: _Resource, ip: str) -> None:
        from provision.guest.ssh import wait_for_ssh

        ctx.stage = "host key"
        self.reporter.stage("host key")
        entry = self._pin_key(res, ip)
        self.reporter.step(f"pinned {entry.split()[1]} key of {ip} from the guest agent "
                           f"into {self.known_hosts}")
        ctx.stage = "ssh"
        self.reporter.stage("ssh")
        watch = Stopwatch()
        timeout = float(self.config.get("timeouts.ssh"))
        address = self._address(ctx.name, ip)
        for _ in range(3):
            try:
                wait_for_ssh(address, max(5.0, timeout - watch.elapsed), self.reporter)
                break
            except HostKeyMismatch:
                # cloud-init regenerates host keys on first boot: the agent may have shown the
                # template's. Read it again through the agent (still no trust on first use).
                self.reporter.step("host key changed during first boot; re-reading it")
                self._pin_key(res, ip)
        else:
            raise GuestError(f"the SSH host key of {ctx.name} keeps changing",
                             hint="check the guest's /etc/ssh/ssh_host_ed25519_key")
        self.reporter.step(f"{address.user}@{ip} answers (key auth) after {watch.elapsed:.1f}s")
        self._wait_cloud_init(ctx, address, timeout)

    def _wait_cloud_init(self, ctx: _UpContext, address: GuestAddress, timeout: float) -> None:
        """`cloud-init status --wait` before anything is deployed or measured: cloud-init's
        final stage (a first-boot package upgrade, for one) runs after SSH answers."""
        from provision.guest.cloudinit import wait_for_cloud_init

        ctx.stage = "cloud-init"
        self.reporter.stage("cloud-init")
        try:
            status = wait_for_cloud_init(address, timeout)
        except CommandFailed as error:
            raise GuestError(
                f"cloud-init of {ctx.name} has not finished within {timeout:g}s",
                hint="see `cloud-init status --long` and /var/log/cloud-init-output.log in the "
                     "VM; timeouts.ssh sets the wait; template.ciupgrade = false (the "
                     "default) skips the first-boot package upgrade",
            ) from error
        if status.state == "absent":
            self.reporter.step("no cloud-init in the guest: nothing to wait for")
        elif status.finished_cleanly:
            self.reporter.step(f"cloud-init {status.state} after {status.waited_s:.1f}s")
        else:
            self.reporter.warn(f"cloud-init of {ctx.name} finished {status.state} "
                               f"(exit {status.exit_code}): {status.detail}")

    # -- reconcile -----------------------------------------------------------------------

    def _reconcile(self, ctx: _UpContext, res: _Resource, request: ShapeRequest,
                   allow_overcommit: bool, pubkey: str, net: str) -> VmInfo:
        if res.lock == "clone":
            res = self._wait_unlocked(res)
        res = self._live(res)
        current_shape, _, config, merged = self._pending(res)
        adopting = not res.managed
        if adopting:
            if CLONE_MARK not in str(config.get("description", "")):
                raise NotLabctlVm(
                    f"a VM named {res.name} (vmid {res.vmid}) exists but labctl did not create "
                    f"it (no '{LABCTL_TAG}' tag); choose another name")
            self.reporter.step(f"finishing VM {res.name} (vmid {res.vmid}) left by an "
                               "interrupted `up`")
            shape = request.over(self.config.default_shape())
        else:
            shape = request.over(current_shape)
            self.reporter.step(f"VM {res.name} exists (vmid {res.vmid} on {res.node}, "
                               f"{res.status}): reconciling")
        ctx.created = True
        if shape.disk_gib is not None and current_shape.disk_gib is not None \
                and shape.disk_gib < current_shape.disk_gib:
            raise UsageError(f"--disk {shape.disk_gib}G is smaller than the VM's disk "
                             f"({current_shape.disk_gib}G): disks only grow")
        reshape = (shape.cores, shape.memory_mib, shape.cpu_type) != (
            current_shape.cores, current_shape.memory_mib, current_shape.cpu_type)
        if reshape or adopting:
            reserved = current_shape.memory_mib if res.status == "running" else 0
            check_fits(shape, self.node_capacity(res.node), allow_overcommit=allow_overcommit,
                       already_reserved_mib=reserved)
        if adopting:
            shape = replace(shape, disk_gib=self._configure_new(ctx, shape, pubkey, net, None))
        elif reshape:
            ctx.stage = "reshape"
            self.reporter.stage("reshape")
            self._apply_config(res, changed_params(self._shape_params(shape), merged))
            self.reporter.step(f"{current_shape.label} -> {shape.label}")
            if res.status == "running" and self._pending_keys(res):
                self._reboot(res)
        if not adopting and shape.disk_gib is not None and current_shape.disk_gib is not None \
                and shape.disk_gib > current_shape.disk_gib:
            disk = boot_disk(config)
            if disk:
                self._grow_disk(ctx, disk[0], disk[1], shape.disk_gib)
        return self._boot_and_reach(ctx, shape, start=res.status != "running")

    def _wait_unlocked(self, res: _Resource) -> _Resource:
        self.reporter.step(f"VM {res.name} is being cloned (lock: clone); waiting")
        deadline = time.monotonic() + float(self.config.get("timeouts.clone"))
        delay = 0.2
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)
            found = self._named(self._resources(), res.name)
            if found is None:
                raise ProxmoxError(f"the clone that was creating {res.name} failed; run "
                                   f"`labctl up {res.name}` again")
            if found.lock != "clone":
                return found
        raise ProxmoxError(f"VM {res.name} stays locked (clone)",
                           hint="see the clone task in the PVE task log")

    def _apply_config(self, res: _Resource, params: dict[str, Any]) -> None:
        upid = self.client.post(f"{res.path}/config", **params)
        if upid:
            wait_task(self.client, upid, timeout_s=float(self.config.get("timeouts.task")),
                      what=f"config update of {res.name}", reporter=self.reporter)

    def _pending_keys(self, res: _Resource) -> tuple[str, ...]:
        entries = self.client.get(f"{res.path}/pending") or []
        return tuple(sorted(str(e["key"]) for e in entries
                            if ("pending" in e or e.get("delete")) and e["key"] != "digest"))

    def _reboot(self, res: _Resource) -> None:
        self.reporter.stage("reboot")
        watch = Stopwatch()
        upid = self.client.post(f"{res.path}/status/reboot")
        wait_task(self.client, upid, timeout_s=float(self.config.get("timeouts.shutdown"))
                  + float(self.config.get("timeouts.task")),
                  what=f"reboot of {res.name}", reporter=self.reporter)
        self.reporter.step(f"rebooted (pending changes applied) in {watch.elapsed:.1f}s")

    def _after_failure(self, ctx: _UpContext, error: LabctlError, rollback: bool) -> LabctlError:
        """Say what was left behind, or remove it with --rollback."""
        if ctx.clone_sent and not ctx.created:
            self._find_unanswered_clone(ctx)
        if not ctx.created or ctx.vmid is None:
            if isinstance(error, Interrupted):
                error.hint = "nothing was created"
            return error
        where = f"VM {ctx.name} (vmid {ctx.vmid})"
        if rollback:
            try:
                self._destroy(_Resource(vmid=ctx.vmid, node=ctx.node, name=ctx.name,
                                        status="running", tags=(), template=False, lock=None,
                                        uptime_s=0, maxdisk=0))
                forget_host_key(self.known_hosts, ctx.name)
                note = f"rolled back: {where} was destroyed"
            except (LabctlError, KeyboardInterrupt) as cleanup:
                note = f"rollback of {where} failed too: {cleanup}"
        elif ctx.tagged:
            note = (f"{where} was left in place; `labctl up {ctx.name}` retries, "
                    f"`labctl down {ctx.name}` removes it")
        else:
            note = (f"{where} was left in place, not yet tagged; `labctl up {ctx.name}` "
                    f"finishes it (then `labctl down {ctx.name}` can remove it)")
        error.hint = "; ".join(h for h in (error.hint, note) if h)
        return error

    def _find_unanswered_clone(self, ctx: _UpContext) -> None:
        """Interrupted while the clone request was in flight: PVE may have made the VM before
        its answer arrived; if a VM by that name exists now, it is ours to report."""
        try:
            found = self._named(self._resources(), ctx.name)
        except (LabctlError, KeyboardInterrupt):
            return
        if found is not None:
            ctx.vmid, ctx.node, ctx.created = found.vmid, found.node, True

    # -- resize --------------------------------------------------------------------------

    def resize(self, name: str, shape: Shape | ShapeRequest, reboot: bool = False, *,
               allow_overcommit: bool = False) -> ResizeResult:
        """Change cores/RAM/cpu type; a running VM keeps what PVE cannot hot-plug pending."""
        if isinstance(shape, Shape):  # a whole Shape (e.g. from find()): its disk is not asked
            request = ShapeRequest(shape.cores, shape.memory_mib, shape.cpu_type, None)
        else:
            request = shape
        if request.disk_gib is not None:
            raise UsageError("resize changes cores, RAM and cpu type; grow the disk with "
                             "`labctl up NAME --disk SIZE`")
        with self._lock(f"vm-{name}"):
            res = self._live(self._require_managed(name))
            before, pending_before, _, merged = self._pending(res)
            base = pending_before or before
            want = request.over(base)
            running = res.status == "running"
            if (want.cores, want.memory_mib, want.cpu_type) != (
                    base.cores, base.memory_mib, base.cpu_type):
                check_fits(want, self.node_capacity(res.node), allow_overcommit=allow_overcommit,
                           already_reserved_mib=before.memory_mib if running else 0)
                self.reporter.stage("resize")
                self._apply_config(res, changed_params(self._shape_params(want), merged))
                self.reporter.step(describe_shape_change(base, want))
            pending = self._pending_keys(res) if running else ()
            rebooted = False
            if running and pending and reboot:
                self._reboot(res)
                ctx = _UpContext(name=name, vmid=res.vmid, node=res.node)
                self._reach(ctx, res, self._wait_agent(ctx, res))
                rebooted, pending = True, ()
            return ResizeResult(name=name, vmid=res.vmid, before=before, after=want,
                                running=running, pending_keys=pending, rebooted=rebooted)

    # -- down ----------------------------------------------------------------------------

    def down(self, name: str) -> VmInfo:
        """Shut down (graceful, then hard), destroy with purge, forget the pinned key."""
        with self._lock(f"vm-{name}"):
            res = self._require_managed(name)
            info = VmInfo(name=res.name, vmid=res.vmid, node=res.node, status=res.status,
                          shape=Shape(1, 512), ip=None, uptime_s=res.uptime_s, tags=res.tags,
                          pending=False)
            self._destroy(res)
            forget_host_key(self.known_hosts, name)
            return info

    def managed_names(self) -> list[str]:
        return sorted({r.name for r in self._resources() if r.managed and not r.template})

    def _destroy(self, res: _Resource) -> None:
        status = self.client.get(f"{res.path}/status/current")
        if status.get("status") == "running":
            self._shutdown(res)
        self.reporter.stage("destroy")
        upid = self.client.delete(res.path, purge=True, **{"destroy-unreferenced-disks": True})
        wait_task(self.client, upid, timeout_s=float(self.config.get("timeouts.task")),
                  what=f"destroy of {res.name} (vmid {res.vmid})", reporter=self.reporter)
        self.reporter.step(f"VM {res.name} (vmid {res.vmid}) destroyed")

    def _shutdown(self, res: _Resource) -> None:
        self.reporter.stage("shutdown")
        timeout = int(self.config.get("timeouts.shutdown"))
        watch = Stopwatch()
        upid = self.client.post(f"{res.path}/status/shutdown", timeout=timeout)
        try:
            wait_task(self.client, upid, timeout_s=timeout + 30.0,
                      what=f"shutdown of {res.name}", reporter=self.reporter)
            self.reporter.step(f"shut down in {watch.elapsed:.1f}s")
            return
        except (TaskFailed, ProxmoxError) as error:
            self.reporter.step(f"graceful shutdown failed ({error.message}); stopping")
        upid = self.client.post(f"{res.path}/status/stop")
        wait_task(self.client, upid, timeout_s=float(self.config.get("timeouts.task")),
                  what=f"stop of {res.name}", reporter=self.reporter)
        self.reporter.step(f"stopped in {watch.elapsed:.1f}s")

    # -- local locks ---------------------------------------------------------------------

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """An flock in the state dir: serialises labctl processes on this machine."""
        self._locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self._locks / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # last in the class: a method named `list` would shadow the builtin in annotations
    def list(self, *, include_unmanaged: bool = False) -> list[VmInfo]:
        """labctl's VMs (with `include_unmanaged`, every non-template VM), sorted by name."""
        chosen = [r for r in self._resources()
                  if not r.template and (r.managed or include_unmanaged)]
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(chosen)))) as pool:
            infos = list(pool.map(lambda r: self._info(r, with_ip=r.managed), chosen))
        return sorted(infos, key=lambda i: (i.name, i.vmid))


def _file_content(data: Any) -> str:
    """agent/file-read's `content` (PVE returns it bare; `result.content` is accepted too)."""
    content = (data or {}).get("content") if isinstance(data, dict) else None
    if content is None and isinstance(data, dict):
        content = (data.get("result") or {}).get("content")
    return str(content or "")


def _decode_key_content(content: str) -> str:
    """file-read gives the text (PVE decodes QGA's base64); accept base64 too, to be safe."""
    try:
        parse_public_key(content)
        return content
    except GuestError:
        pass
    import base64
    import binascii

    try:
        decoded = base64.b64decode(content, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise GuestError(f"{HOST_KEY_PATH} read through the agent is not an SSH public key"
                         ) from None
    parse_public_key(decoded)
    return decoded


def describe_shape_change(before: Shape, after: Shape) -> str:
    parts = []
    if before.cores != after.cores:
        parts.append(f"cores {before.cores} -> {after.cores}")
    if before.memory_mib != after.memory_mib:
        parts.append(f"RAM {format_mib(before.memory_mib)} -> {format_mib(after.memory_mib)}")
    if before.cpu_type != after.cpu_type:
        parts.append(f"cpu {before.cpu_type} -> {after.cpu_type}")
    return ", ".join(parts) or "no change"

