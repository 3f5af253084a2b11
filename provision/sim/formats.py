"""PVE's registered string formats (`PVE::JSONSchema::register_format` and qemu-server's).

Each checker raises `FormatError(message)` with the text PVE dies with. Formats the simulator does
not know are "not checked" (accepted), as pve-api.md section 12 asks; `KNOWN_FORMATS` lists the
checked ones. Named formats that are property strings (`pve-qm-ipconfig`, `pve-qm-cicustom`) are
returned by `named_property_format` and parsed by the validator like inline ones.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

DNS_NAME = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9])\.)*"
    r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9\-]*[A-Za-z0-9])$"
)
NODE_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9\-]*[a-zA-Z0-9])?$")
CONFIG_ID = re.compile(r"^[a-z][a-z0-9_-]+$")
STORAGE_ID = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$")
POOL_ID = re.compile(r"^[A-Za-z0-9_\-]+(?:/[A-Za-z0-9_\-]+){0,2}$")
URLENCODED = re.compile(r"^[-%a-zA-Z0-9_.!~*'()]*$")
BRIDGE_ID = re.compile(r"^[-_.\w\d]+$")
TAG = re.compile(r"^(?i:[a-z0-9_][a-z0-9_\-+.]*)$")
DISK_SIZE = re.compile(r"^(\d+(\.\d+)?)([KMGT])?$")
VOLUME_ID = re.compile(r"^(?:[a-z][a-z0-9\-_.]*[a-z0-9]):(.+)$")
MAC = re.compile(r"^[a-fA-F0-9]{2}(?::[a-fA-F0-9]{2}){5}$")
IFACE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{1,20}([:.]\d+)?$")
USERID = re.compile(r"^[^\s:/]+@[A-Za-z][A-Za-z0-9.\-_]+$")
REALM = re.compile(r"^[A-Za-z][A-Za-z0-9.\-_]+$")
HOTPLUG_FEATURES = ("network", "disk", "cpu", "memory", "usb", "cloudinit")
LIST_SEPARATORS = re.compile(r"[,; \t\n\0]+")


class FormatError(ValueError):
    """The value does not satisfy a registered format; str() is PVE's message."""


def _regex(pattern: re.Pattern[str], message: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not pattern.match(value):
            raise FormatError(message.format(value=value))

    return check


def _vmid(value: str) -> None:
    if not re.match(r"^[1-9][0-9]{2,8}$", value):
        raise FormatError("value does not look like a valid VM ID")


def _ip(value: str, versions: tuple[int, ...], message: str) -> None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise FormatError(message) from None
    if address.version not in versions:
        raise FormatError(message)


def _cidr(value: str, versions: tuple[int, ...]) -> None:
    if "/" not in value:
        raise FormatError("value does not look like a valid CIDR network")
    try:
        network = ipaddress.ip_interface(value)
    except ValueError:
        raise FormatError("value does not look like a valid CIDR network") from None
    if network.version not in versions:
        raise FormatError("value does not look like a valid CIDR network")


def _address(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not DNS_NAME.match(value):
            raise FormatError(f"value does not look like a valid address: {value}") from None


def _mac(value: str) -> None:
    if not MAC.match(value) or int(value[:2], 16) & 1:
        raise FormatError("value does not look like a valid unicast MAC address")


def _hotplug(value: str) -> None:
    if value in ("0", "1"):
        return
    for feature in LIST_SEPARATORS.split(value):
        if feature and feature not in HOTPLUG_FEATURES:
            raise FormatError(f"invalid hotplug feature '{feature}'")


def _tag_list(value: str) -> None:
    for tag in re.split(r"[;, ]+", value):
        if tag and not TAG.match(tag):
            raise FormatError(f"invalid tag '{tag}'")


def _urlencoded(value: str) -> None:
    if not URLENCODED.match(value):
        raise FormatError(f"invalid urlencoded string: {value}")


def _volume_or_path(value: str) -> None:
    if value in ("none", "cdrom") or value.startswith("/") or VOLUME_ID.match(value):
        return
    raise FormatError(f"unable to parse volume ID '{value}'")


def _ipv4_config(value: str) -> None:
    if value in ("dhcp", "manual"):
        return
    try:
        _cidr(value, (4,))
    except FormatError:
        raise FormatError(f"invalid IPv4 configuration: {value}") from None


def _ipv6_config(value: str) -> None:
    if value in ("dhcp", "auto", "manual"):
        return
    try:
        _cidr(value, (6,))
    except FormatError:
        raise FormatError(f"invalid IPv6 configuration: {value}") from None


CHECKERS: dict[str, Callable[[str], None]] = {
    "pve-vmid": _vmid,
    "pve-node": _regex(NODE_NAME, "value does not look like a valid node name"),
    "dns-name": _regex(DNS_NAME, "value does not look like a valid DNS name"),
    "pve-configid": _regex(CONFIG_ID, "invalid configuration ID '{value}'"),
    "pve-storage-id": _regex(STORAGE_ID, "storage ID '{value}' contains illegal characters"),
    "pve-poolid": _regex(POOL_ID, "invalid pool ID '{value}'"),
    "pve-bridge-id": _regex(BRIDGE_ID, "invalid bridge ID '{value}'"),
    "pve-iface": _regex(IFACE, "invalid network interface name '{value}'"),
    "pve-userid": _regex(USERID, "value '{value}' does not look like a valid user name"),
    "pve-realm": _regex(REALM, "value does not look like a valid realm name"),
    "disk-size": _regex(DISK_SIZE, "unable to parse size '{value}'"),
    "pve-volume-id": _regex(VOLUME_ID, "unable to parse volume ID '{value}'"),
    "pve-volume-id-or-qm-path": _volume_or_path,
    "urlencoded": _urlencoded,
    "address": _address,
    "ip": lambda v: _ip(v, (4, 6), "value does not look like a valid IP address"),
    "ipv4": lambda v: _ip(v, (4,), "value does not look like a valid IPv4 address"),
    "ipv6": lambda v: _ip(v, (6,), "value does not look like a valid IPv6 address"),
    "CIDR": lambda v: _cidr(v, (4, 6)),
    "CIDRv4": lambda v: _cidr(v, (4,)),
    "CIDRv6": lambda v: _cidr(v, (6,)),
    "mac-addr": _mac,
    "pve-hotplug-features": _hotplug,
    "pve-tag-list": _tag_list,
    "pve-ipv4-config": _ipv4_config,
    "pve-ipv6-config": _ipv6_config,
}

KNOWN_FORMATS = frozenset(CHECKERS)

# qemu-server property-string formats whose keys the schema capture leaves out.
_VOLID = {"type": "string", "format": "pve-volume-id", "optional": 1}
NAMED_PROPERTY_FORMATS: dict[str, dict[str, Any]] = {
    "pve-qm-ipconfig": {
        "ip": {"type": "string", "format": "pve-ipv4-config", "optional": 1},
        "gw": {"type": "string", "format": "ipv4", "optional": 1, "requires": "ip"},
        "ip6": {"type": "string", "format": "pve-ipv6-config", "optional": 1},
        "gw6": {"type": "string", "format": "ipv6", "optional": 1, "requires": "ip6"},
    },
    "pve-qm-cicustom": {"user": _VOLID, "network": _VOLID, "meta": _VOLID, "vendor": _VOLID},
}


def named_property_format(name: str) -> dict[str, Any] | None:
    return NAMED_PROPERTY_FORMATS.get(name)


def check_named(name: str, value: str) -> None:
    """Check `value` against the registered format `name` (a `-list` / `-opt` suffix applies).

    Raises FormatError; returns silently for formats the simulator does not check.
    """
    if name.endswith("-opt"):
        if value == "":
            return
        name = name[: -len("-opt")]
    checker = CHECKERS.get(name)
    if checker is not None:
        checker(value)
        return
    if name.endswith("-list"):
        element_checker = CHECKERS.get(name[: -len("-list")])
        if element_checker is None:
            return
        for element in LIST_SEPARATORS.split(value):
            if element:
                element_checker(element)


def parse_boolean(text: str) -> int | None:
    """`PVE::JSONSchema::parse_boolean`: 1/on/yes/true and 0/off/no/false, else None."""
    lowered = text.lower()
    if lowered in ("1", "on", "yes", "true"):
        return 1
    if lowered in ("0", "off", "no", "false"):
        return 0
    return None
