"""Pure pieces of the lifecycle: reading PVE config values, picking the guest address, ipconfig."""

from __future__ import annotations

import pytest

from provision.errors import ConfigError
from provision.pve.shapes import (
    ShapeRequest,
    boot_disk,
    changed_params,
    grown_disk_gib,
    ipconfig,
    parse_cpu_type,
    parse_memory_mib,
    parse_tags,
    pick_address,
    shape_of,
)
from provision.shape import DEFAULT_DISK_GIB, Shape


@pytest.mark.parametrize(
    ("value", "mib"), [(2048, 2048), ("2048", 2048), ("current=4096", 4096), (None, 512)]
)
def test_memory_in_every_form_pve_returns(value: object, mib: int) -> None:
    assert parse_memory_mib(value) == mib


@pytest.mark.parametrize(
    ("value", "cpu"),
    [
        ("host", "host"),
        ("cputype=x86-64-v3,flags=+aes", "x86-64-v3"),
        ("x86-64-v2-AES,flags=+pcid", "x86-64-v2-AES"),
        (None, "kvm64"),
    ],
)
def test_cpu_type_from_the_cpu_property(value: object, cpu: str) -> None:
    assert parse_cpu_type(value) == cpu


def test_shape_counts_sockets_times_cores() -> None:
    assert shape_of({"cores": 4, "sockets": 2, "memory": "8192", "cpu": "host"}) == Shape(
        8, 8192, "host"
    )


def test_tags_split_on_pve_separators() -> None:
    assert parse_tags("labctl;prod web") == ("labctl", "prod", "web")
    assert parse_tags(None) == ()


def test_boot_disk_follows_boot_order_and_skips_cdroms() -> None:
    config = {
        "boot": "order=ide2;virtio0;net0",
        "ide2": "local:iso/x.iso,media=cdrom",
        "scsi0": "local-lvm:vm-1-disk-1,size=2G",
        "virtio0": "local-lvm:base-9000,size=3584M",
    }
    assert boot_disk(config) == ("virtio0", 3)
    assert boot_disk({"scsi0": "local-lvm:vm-1,size=10G"}) == ("scsi0", 10)
    assert boot_disk({"net0": "virtio=BC:24:11:00:00:01"}) is None


@pytest.mark.parametrize(
    ("asked", "template", "grown"),
    [
        (None, 3, 32),  # a stock Ubuntu 24.04 cloud image (3.5 GiB): room for Ollama + gemma2:2b
        (None, 32, None),
        (None, 40, None),  # a template already bigger stays as it is
        (10, 3, 10),  # --disk wins over the default, also when smaller than it
        (40, 40, None),
    ],
)
def test_a_new_vms_disk_grows_to_what_was_asked_else_the_default(
    asked: int | None, template: int, grown: int | None
) -> None:
    assert DEFAULT_DISK_GIB == 32
    assert grown_disk_gib(asked, template) == grown


def test_address_skips_loopback_and_link_local_and_prefers_ipv4() -> None:
    interfaces = [
        {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1"}, {"ip-address": "::1"}]},
        {
            "name": "eth0",
            "ip-addresses": [
                {"ip-address": "fe80::1%eth0"},
                {"ip-address": "2001:db8::5"},
                {"ip-address": "169.254.3.3"},
                {"ip-address": "10.0.0.5"},
            ],
        },
    ]
    assert pick_address(interfaces) == "10.0.0.5"
    assert (
        pick_address([{"name": "eth0", "ip-addresses": [{"ip-address": "2001:db8::5"}]}])
        == "2001:db8::5"
    )
    assert pick_address([{"name": "eth0"}]) is None


def test_ipconfig_for_dhcp_and_static() -> None:
    assert ipconfig("dhcp", "") == "ip=dhcp"
    assert ipconfig("192.168.1.50/24", "192.168.1.1") == "ip=192.168.1.50/24,gw=192.168.1.1"
    for bad in ("192.168.1.500/24", "192.168.1.50"):
        with pytest.raises(ConfigError):
            ipconfig(bad, "")
    with pytest.raises(ConfigError, match="dhcp"):
        ipconfig("dhcp", "192.168.1.1")


def test_changed_params_keeps_only_real_changes() -> None:
    config = {"cores": 2, "sockets": 1, "memory": "2048", "balloon": 0, "cpu": "host"}
    wanted = {"cores": 4, "sockets": 1, "memory": 2048, "balloon": 0, "cpu": "host"}
    assert changed_params(wanted, config) == {"cores": 4}


def test_shape_request_fills_only_what_was_not_asked() -> None:
    base = Shape(4, 8192, "host", 32)
    assert ShapeRequest(cores=2).over(base) == Shape(2, 8192, "host", 32)
    assert ShapeRequest().empty and not ShapeRequest(cpu_type="host").empty
