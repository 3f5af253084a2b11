"""The lab file's [vm.NAME] tables: one VM each, its keys declared and checked like the others.

A key a table leaves out takes the lab-wide value it stands in for (`ram` -> `defaults.ram`),
so an error in that value names the lab-wide key, not the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from provision.config_values import check_value, describe
from provision.errors import ConfigError, UsageError
from provision.shape import Shape, parse_cores, parse_disk_gib, parse_ram


@dataclass(frozen=True)
class VmKey:
    """One key of a [vm.NAME] table: its type, help, and what a table without it gets."""

    name: str
    type: type
    help: str
    default_from: str = ""  # the lab-wide key a table leaving this one out takes its value from
    default: Any = None  # used when default_from is empty


VM_KEYS: tuple[VmKey, ...] = (
    VmKey("cores", int, "vCPUs", "defaults.cores"),
    VmKey("ram", str, "RAM, e.g. 16G", "defaults.ram"),
    VmKey("cpu_type", str, "Proxmox cpu type", "defaults.cpu_type"),
    VmKey("disk", str, "boot disk size (grow only)", "defaults.disk"),
    VmKey("node", str, "node to place the VM on", default=""),
    VmKey("full", bool, "full clone instead of linked", default=False),
    VmKey("ip", str, "ipconfig0 address override (dhcp or CIDR)", "network.ip"),
    VmKey("gateway", str, "gateway override", "network.gateway"),
    VmKey("models", list, "models for this VM", "deploy.models"),
)

_KNOWN = {key.name for key in VM_KEYS}


@dataclass(frozen=True)
class VmSpec:
    """One VM of the lab: its name and wanted shape, where to place it and how to clone it."""

    name: str
    shape: Shape
    node: str = ""
    full: bool = False
    ip: str = "dhcp"
    gateway: str = ""
    models: tuple[str, ...] = ()


def parse_vms(tables: Any, values: Mapping[str, Any], where: str) -> dict[str, VmSpec]:
    """The VMs declared in the file's `vm` table; `values` are the checked lab-wide keys."""
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: vm must hold [vm.NAME] tables, got {describe(tables)}")
    return {name: _parse_vm(name, table, values, where) for name, table in tables.items()}


def _parse_vm(name: str, table: Any, values: Mapping[str, Any], where: str) -> VmSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: vm.{name} must be a table, got {describe(table)}")
    try:
        validate_vm_name(name)
    except UsageError as error:
        raise ConfigError(f"{where}: vm.{name}: {error}") from None
    for key_name in table:
        if key_name not in _KNOWN:
            raise ConfigError(f"{where}: unknown key vm.{name}.{key_name}")
    settings = {key.name: _setting(key, name, table, values, where) for key in VM_KEYS}

    def parsed(key_name: str, parse: Callable[[Any], int]) -> int:
        value, origin = settings[key_name]
        try:
            return parse(value)
        except UsageError as error:
            raise ConfigError(f"{where}: {origin}: {error}") from None

    disk = settings["disk"][0]
    shape = Shape(
        cores=parsed("cores", parse_cores),
        memory_mib=parsed("ram", parse_ram),
        cpu_type=settings["cpu_type"][0],
        disk_gib=parsed("disk", parse_disk_gib) if disk else None,
    )
    return VmSpec(
        name=name,
        shape=shape,
        node=settings["node"][0],
        full=settings["full"][0],
        ip=settings["ip"][0],
        gateway=settings["gateway"][0],
        models=tuple(settings["models"][0]),
    )


def _setting(
    key: VmKey, vm: str, table: Mapping[str, Any], values: Mapping[str, Any], where: str
) -> tuple[Any, str]:
    """(value, the key path it came from): the table's own, checked, or the lab-wide one."""
    if key.name in table:
        path = f"vm.{vm}.{key.name}"
        return check_value(where, path, key.type, table[key.name]), path
    if key.default_from:
        return values[key.default_from], key.default_from
    return key.default, f"vm.{vm}.{key.name}"


def validate_vm_name(name: str) -> None:
    """PVE VM names are DNS names: letters, digits, '-' and '.', no '_' (pve-api.md)."""
    if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", name):
        raise UsageError(
            f"invalid VM name {name!r}: use letters, digits and '-', start and end with a "
            "letter or digit (it becomes the hostname)"
        )
