"""The pure parts of labctl's view of a VM: the value types `up`, `ls` and `resize` return, and
the readers of the values PVE puts in a VM's config (memory, cpu, disks, tags, addresses)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from provision.errors import ConfigError
from provision.shape import DEFAULT_DISK_GIB, Shape, format_mib

LABCTL_TAG = "labctl"
# Written into the clone's description by the clone call itself, before the tag can be set:
# a VM interrupted between clone and configure is still recognised as ours by `up`.
CLONE_MARK = "Created by labctl"
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
    lease: str | None = None  # who holds it (provision/pve/lease.py), None when free

    @property
    def managed(self) -> bool:
        return LABCTL_TAG in self.tags

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "vmid": self.vmid,
            "node": self.node,
            "status": self.status,
            "cores": self.shape.cores,
            "memory_mib": self.shape.memory_mib,
            "cpu_type": self.shape.cpu_type,
            "disk_gib": self.shape.disk_gib,
            "ip": self.ip,
            "uptime_s": self.uptime_s,
            "tags": list(self.tags),
            "managed": self.managed,
            "pending": self.pending,
            "lease": self.lease,
        }
        if self.pending_shape is not None:
            data["pending_shape"] = {
                "cores": self.pending_shape.cores,
                "memory_mib": self.pending_shape.memory_mib,
                "cpu_type": self.pending_shape.cpu_type,
            }
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
            self.after.cores,
            self.after.memory_mib,
            self.after.cpu_type,
        )

    @property
    def reboot_needed(self) -> bool:
        return bool(self.pending_keys) and not self.rebooted

    def to_json(self) -> dict[str, Any]:
        def shape(s: Shape) -> dict[str, Any]:
            return {"cores": s.cores, "memory_mib": s.memory_mib, "cpu_type": s.cpu_type}

        return {
            "name": self.name,
            "vmid": self.vmid,
            "before": shape(self.before),
            "after": shape(self.after),
            "running": self.running,
            "changed": self.changed,
            "pending_keys": list(self.pending_keys),
            "rebooted": self.rebooted,
            "reboot_needed": self.reboot_needed,
        }


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
    return Shape(
        cores=cores,
        memory_mib=parse_memory_mib(config.get("memory")),
        cpu_type=parse_cpu_type(config.get("cpu")),
    )


def shape_params(shape: Shape) -> dict[str, Any]:
    """The config keys that give a VM `shape` (one socket, no ballooning)."""
    return {
        "cores": shape.cores,
        "sockets": 1,
        "memory": shape.memory_mib,
        "balloon": 0,
        "cpu": shape.cpu_type,
    }


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
        raise ConfigError(
            f"invalid static address {ip!r}: use CIDR like 192.168.1.50/24 or dhcp"
        ) from None
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
        "memory": parse_memory_mib,
        "cpu": parse_cpu_type,
        "cores": lambda v: int(v or 1),
        "sockets": lambda v: int(v or 1),
        "balloon": lambda v: None if v is None or v == "" else int(v),
    }
    changed: dict[str, Any] = {}
    for key, value in params.items():
        norm = normal.get(key, lambda v: None if v is None else str(v))
        if norm(config.get(key)) != norm(value):
            changed[key] = value
    return changed


def same_cpu_and_memory(a: Shape, b: Shape) -> bool:
    """Whether two shapes agree on what resize changes (the disk is `up`'s business)."""
    return (a.cores, a.memory_mib, a.cpu_type) == (b.cores, b.memory_mib, b.cpu_type)


def describe_shape_change(before: Shape, after: Shape) -> str:
    parts = []
    if before.cores != after.cores:
        parts.append(f"cores {before.cores} -> {after.cores}")
    if before.memory_mib != after.memory_mib:
        parts.append(f"RAM {format_mib(before.memory_mib)} -> {format_mib(after.memory_mib)}")
    if before.cpu_type != after.cpu_type:
        parts.append(f"cpu {before.cpu_type} -> {after.cpu_type}")
    return ", ".join(parts) or "no change"
