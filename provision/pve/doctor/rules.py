"""The pure rules: property strings, drives, volumes, linked clones, AVX2."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from provision.pve.doctor.base import _DRIVE_KEY, FILE_STORAGE_TYPES, HIDES_AVX2, LINKED_CLONE_TYPES
from provision.pve.shapes import boot_disk, parse_cpu_type


def parse_property_string(text: str, default_key: str) -> dict[str, str]:
    """PVE's `key=value,...` with an optional leading bare value for `default_key`:
    `enabled=1,fstrim_cloned_disks=1`, `1`, `local-lvm:base-9000-disk-0,size=3584M`."""
    result: dict[str, str] = {}
    for index, part in enumerate(p for p in str(text).split(",") if p):
        key, eq, value = part.partition("=")
        if eq and not (index == 0 and ":" in key):
            result[key.strip()] = value.strip()
        elif index == 0:
            result[default_key] = part.strip()
    return result


def agent_enabled(value: str | None) -> bool:
    """The `agent` option (`1`, `enabled=1,type=virtio`) turns the guest agent on."""
    enabled = parse_property_string(value or "", "enabled").get("enabled", "0")
    return enabled.lower() in ("1", "on", "yes", "true")


def cloudinit_drive(config: Mapping[str, Any]) -> str | None:
    """The key of the template's cloud-init drive (`ide2: local-lvm:vm-9000-cloudinit,...`)."""
    for key in sorted(config):
        if _DRIVE_KEY.match(key) and "cloudinit" in str(config[key]).split(",", 1)[0]:
            return key
    return None


@dataclass(frozen=True)
class Volume:
    key: str  # scsi0
    storage: str  # local-lvm
    name: str  # base-9000-disk-0
    size_gib: int


def boot_volume(config: Mapping[str, Any]) -> Volume | None:
    """The boot disk's storage and volume name, from `scsi0: local-lvm:base-9000-disk-0,...`."""
    found = boot_disk(config)
    if found is None:
        return None
    key, size_gib = found
    volume_id = parse_property_string(str(config[key]), "file").get("file", "")
    storage, sep, name = volume_id.partition(":")
    return Volume(key, storage, name, size_gib) if sep else None


def supports_linked_clone(storage_type: str, volume_name: str) -> bool:
    """Whether a template's base volume there can be cloned linked (module docstring)."""
    if storage_type in LINKED_CLONE_TYPES:
        return True
    return storage_type in FILE_STORAGE_TYPES and volume_name.endswith(".qcow2")


def thin_provisioned(storage_type: str, volume_name: str) -> bool:
    """Space is taken as the guest writes, so a full disk size need not be free up front."""
    return supports_linked_clone(storage_type, volume_name)


def hides_avx2(cpu_type: str) -> bool:
    """A PVE cpu type (`host`, `cputype=kvm64,flags=...`) that keeps AVX2 from the guest."""
    return parse_cpu_type(cpu_type) in HIDES_AVX2


def has_avx2(flags: str) -> bool:
    """/proc/cpuinfo-style flags (the node's `cpuinfo.flags`) include avx2."""
    return "avx2" in str(flags).split()
