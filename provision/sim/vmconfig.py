"""Rules about a VM's config that qemu-server encodes: pending changes, hotplug, clone, digest.

Config values are kept as the strings a `/etc/pve/qemu-server/<vmid>.conf` file would hold;
`typed()` turns them into the JSON types the API returns.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Iterable
from typing import Any

from provision.sim.schema import load_schema

CONFIG_PATH = "/nodes/{node}/qemu/{vmid}/config"

# QS.pm fast-plug list plus cloud-init options: applied at once even on a running VM.
FAST_PLUG = frozenset(
    {
        "name",
        "description",
        "onboot",
        "protection",
        "tags",
        "startup",
        "shares",
        "lock",
        "hookscript",
        "vmstatestorage",
        "migrate_downtime",
        "migrate_speed",
        "ciuser",
        "cipassword",
        "sshkeys",
        "nameserver",
        "searchdomain",
        "cicustom",
        "citype",
        "ciupgrade",
        "balloon",
        "cpulimit",
        "cpuunits",
    }
)
CLOUDINIT_INDEXED = re.compile(r"^ipconfig\d+$")
DRIVE_KEY = re.compile(r"^(ide|sata|scsi|virtio)\d+$|^(efidisk0|tpmstate0)$")
NET_KEY = re.compile(r"^net\d+$")
NOT_CLONED = re.compile(
    r"^(parent|snaptime|vmstate|snapstate|runningcpu|runningmachine|running-nets-host-mtu"
    r"|unused\d+|template|lock)$"
)
DEFAULT_HOTPLUG = ("network", "disk", "usb")
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
MASKED = "**********"


def hotplug_features(config: dict[str, str]) -> set[str]:
    value = config.get("hotplug", "1")
    if value == "1":
        return set(DEFAULT_HOTPLUG)
    if value == "0":
        return set()
    return {f for f in re.split(r"[,; ]+", value) if f}


def is_fast_plug(key: str) -> bool:
    return key in FAST_PLUG or bool(CLOUDINIT_INDEXED.match(key))


def hotplug_decision(key: str, config: dict[str, str]) -> str:
    """How a running VM takes a change of `key`: "apply", "pending" or an error message.

    Follows `vmconfig_hotplug_pending` (QS.pm): cores/sockets/cpu/numa/machine/... never
    hotplug; vcpus needs `hotplug` cpu; memory needs `hotplug` memory *and* numa=1. `config`
    is the running (current) config.
    """
    features = hotplug_features(config)
    if is_fast_plug(key):
        return "apply"
    if key == "hotplug":  # changes live, unless memory hotplug is active
        return "pending" if "memory" in features else "apply"
    if key == "vcpus":
        return "apply" if "cpu" in features else "pending"
    if key == "memory":
        if "memory" not in features:
            return "pending"
        if config.get("numa") != "1":
            return "hotplug problem - NUMA needs to be enabled for memory hotplug"
        return "apply"
    if NET_KEY.match(key):
        return "apply" if "network" in features else "pending"
    if DRIVE_KEY.match(key):
        return "apply" if "disk" in features else "pending"
    return "pending"


def memory_mib(config: dict[str, str]) -> int:
    value = config.get("memory", "512")
    return int(value.split("=", 1)[-1].split(",")[0])


def vcpus(config: dict[str, str], host_cpus: int) -> int:
    """status/current `cpus`: vcpus if set, else sockets*cores capped at the host's CPUs."""
    if "vcpus" in config:
        return int(config["vcpus"])
    total = int(config.get("sockets", "1")) * int(config.get("cores", "1"))
    return min(total, host_cpus)


def digest(config: dict[str, str], pending: dict[str, str], pending_delete: dict[str, int]) -> str:
    """SHA1 of the serialised config file (current section plus [PENDING])."""
    return hashlib.sha1(serialise(config, pending, pending_delete).encode()).hexdigest()


def serialise(
    config: dict[str, str], pending: dict[str, str], pending_delete: dict[str, int]
) -> str:
    lines = [f"#{line}" for line in config.get("description", "").splitlines()]
    lines += [f"{k}: {v}" for k, v in sorted(config.items()) if k != "description"]
    if pending or pending_delete:
        lines.append("")
        lines.append("[PENDING]")
        lines += [f"{k}: {v}" for k, v in sorted(pending.items())]
        if pending_delete:
            deletes = ",".join(("!" if force else "") + k for k, force in pending_delete.items())
            lines.append(f"delete: {deletes}")
    return "\n".join(lines) + "\n"


def typed(config: dict[str, str]) -> dict[str, Any]:
    """Config as the API returns it: integer/boolean/number keys as JSON numbers, rest strings."""
    schema = load_schema()
    result: dict[str, Any] = {}
    for key, value in config.items():
        prop = schema.property(CONFIG_PATH, "POST", key) or {}
        kind = prop.get("type")
        if key == "cipassword":
            result[key] = MASKED
        elif kind in ("integer", "boolean") and re.match(r"^[+-]?\d+$", value):
            result[key] = int(value)
        elif kind == "number" and re.match(r"^[+-]?\d+(\.\d+)?$", value):
            result[key] = float(value)
        else:
            result[key] = value
    return result


def as_config_text(value: Any) -> str:
    """A validated parameter as the config file stores it (JSON true -> "1")."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def random_mac() -> str:
    """A MAC in Proxmox's OUI (BC:24:11), as PVE generates for new NICs."""
    tail = secrets.token_bytes(3)
    return "BC:24:11:" + ":".join(f"{b:02X}" for b in tail)


def with_new_mac(net_value: str) -> str:
    parts = net_value.split(",")
    models = ("virtio", "e1000", "e1000e", "rtl8139", "vmxnet3", "ne2k_pci", "pcnet", "i82551")
    result = []
    replaced = False
    for part in parts:
        key, _, value = part.partition("=")
        if key in models and value:
            result.append(f"{key}={random_mac()}")
            replaced = True
        elif key == "macaddr":
            result.append(f"macaddr={random_mac()}")
            replaced = True
        else:
            result.append(part)
    if not replaced:
        result[0] = f"{result[0]}={random_mac()}" if result[0] in models else result[0]
    return ",".join(result)


def with_new_uuid(smbios1: str) -> str:
    parts = [p for p in smbios1.split(",") if p and not p.startswith("uuid=")]
    return ",".join([f"uuid={uuid.uuid4()}", *parts])


def drives(config: dict[str, str]) -> Iterable[tuple[str, str]]:
    """(key, volid) for every drive that has a volume (CD-ROMs with media=cdrom included)."""
    for key, value in sorted(config.items()):
        if DRIVE_KEY.match(key):
            volid = value.split(",", 1)[0]
            if volid not in ("none", "cdrom") and ":" in volid:
                yield key, volid


def is_cdrom(value: str) -> bool:
    return "media=cdrom" in value.split(",")


def is_cloudinit(value: str) -> bool:
    return "cloudinit" in value.split(",", 1)[0]


def drive_option(value: str, option: str) -> str | None:
    for part in value.split(",")[1:]:
        key, _, val = part.partition("=")
        if key == option:
            return val
    return None


def with_drive_option(value: str, option: str, new: str) -> str:
    head, *rest = value.split(",")
    rest = [p for p in rest if not p.startswith(f"{option}=")]
    return ",".join([head, *rest, f"{option}={new}"])


def parse_size(text: str) -> int:
    """`3584M`, `+10G`, `10737418240` -> bytes (binary units, no unit = bytes)."""
    match = re.fullmatch(r"\+?(\d+(?:\.\d+)?)([KMGT]?)", text)
    if not match:
        raise ValueError(f"unable to parse size '{text}'")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def format_size(size: int) -> str:
    """Bytes as qemu-server writes them: the largest unit that divides evenly."""
    for unit in ("T", "G", "M", "K"):
        if size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return str(size)


def clone_config(
    source: dict[str, str],
    source_vmid: int,
    new_vmid: int,
    name: str | None,
    description: str | None,
    linked: bool,
    storage: str | None,
) -> dict[str, str]:
    """The new VM's config: what `clone_vm` copies and regenerates (Qemu.pm:4510-4620)."""
    config = {k: v for k, v in source.items() if not NOT_CLONED.match(k)}
    for key, value in list(config.items()):
        if NET_KEY.match(key):
            config[key] = with_new_mac(value)
        elif DRIVE_KEY.match(key):
            config[key] = _cloned_drive(value, source_vmid, new_vmid, linked, storage)
    if "smbios1" in config:
        config["smbios1"] = with_new_uuid(config["smbios1"])
    if "vmgenid" in config:
        config["vmgenid"] = str(uuid.uuid4())
    config["name"] = name or f"Copy-of-VM-{source.get('name', source_vmid)}"
    if description is not None:
        config["description"] = description
    return config


def _cloned_drive(
    value: str, source_vmid: int, new_vmid: int, linked: bool, storage: str | None
) -> str:
    volid, _, options = value.partition(",")
    if volid in ("none", "cdrom") or ":" not in volid:
        return value
    if is_cdrom(value) and not is_cloudinit(value):
        return value  # CD-ROMs are copied verbatim
    store, volname = volid.split(":", 1)
    if is_cloudinit(value):
        new_volid = f"{storage or store}:vm-{new_vmid}-cloudinit"
    else:
        disk = re.search(r"disk-(\d+)", volname)
        index = disk.group(1) if disk else "0"
        new_name = f"vm-{new_vmid}-disk-{index}"
        if linked:
            base = volname.split("/", 1)[0]
            new_volid = f"{store}:{base}/{new_name}"
        else:
            new_volid = f"{storage or store}:{new_name}"
    return f"{new_volid},{options}" if options else new_volid
