"""Pure parts of the guest backend: addresses, shapes, paths, mirror lookup (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provision.sim.guests.container import ContainerBackend, resolve_in_root
from provision.sim.guests.errors import GuestBackendError
from provision.sim.guests.netns import Leases, static_ip
from provision.sim.guests.template import host_mirror, template_key


def test_static_ip_is_taken_from_the_ipconfig_string() -> None:
    assert static_ip("ip=10.213.20.50/24,gw=10.213.20.1") == "10.213.20.50"
    assert static_ip("gw=10.0.0.1,ip=10.0.0.9/8") == "10.0.0.9"
    assert static_ip("ip=dhcp") is None
    assert static_ip(None) is None


def test_leases_honour_static_addresses_inside_the_subnet_only(tmp_path: Path) -> None:
    leases = Leases("10.213.20.0/24", tmp_path / "leases.json")
    assert leases.host_cidr == "10.213.20.1/24"
    assert leases.assign(100, "ip=10.213.20.50/24", {}) == "10.213.20.50"
    assert leases.assign(101, "ip=192.168.1.5/24", {}) == "10.213.20.2"  # outside: leased
    assert leases.assign(102, "ip=10.213.20.1/24", {}) == "10.213.20.3"  # the host's: leased
    with pytest.raises(GuestBackendError, match="already used"):
        leases.assign(103, "ip=10.213.20.50/24", {100: "10.213.20.50"})


def test_dhcp_leases_are_remembered_per_vm_across_restarts(tmp_path: Path) -> None:
    first = Leases("10.213.20.0/24", tmp_path / "leases.json")
    a = first.assign(100, "ip=dhcp", {})
    b = first.assign(101, None, {})
    again = Leases("10.213.20.0/24", tmp_path / "leases.json")
    assert (again.assign(101, None, {}), again.assign(100, None, {})) == (b, a)
    again.release(100)
    assert again.assign(102, None, {}) == a


def test_leases_run_out_with_a_clear_error(tmp_path: Path) -> None:
    leases = Leases("10.213.20.0/30", tmp_path / "l.json")  # host .1, one guest .2
    leases.assign(100, None, {})
    with pytest.raises(GuestBackendError, match="no free address"):
        leases.assign(101, None, {})


def _shaper(cpu_scale: float = 1.0, mem_scale: float = 0.125) -> ContainerBackend:
    backend = ContainerBackend.__new__(ContainerBackend)  # only the shape arithmetic is used
    backend.cpu_scale, backend.mem_scale = cpu_scale, mem_scale
    return backend


def test_cores_are_capped_at_the_host_and_memory_is_scaled() -> None:
    host = len(os.sched_getaffinity(0))
    cpus, quota = _shaper().cpu_limits(100, 12)
    assert len(cpus) == host and quota == host * 100_000
    cpus, quota = _shaper().cpu_limits(101, 1)
    assert len(cpus) == 1 and quota == 100_000
    assert _shaper(cpu_scale=0.5).cpu_limits(100, 1)[1] == 50_000
    assert _shaper().memory_limit(32 * 1024) == 4 * 2**30  # a "32G" VM gets 4 GiB
    assert _shaper().memory_limit(128) == 64 * 2**20  # floor: systemd + sshd must boot


def test_one_core_guests_are_spread_over_the_host_cpus() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 host CPUs")
    assert _shaper().cpu_limits(100, 1)[0] != _shaper().cpu_limits(101, 1)[0]


def test_guest_paths_resolve_symlinks_inside_the_guest_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("vm\n")
    (root / "abs").symlink_to("/etc/hostname")  # absolute: must stay inside root
    (root / "etc/rel").symlink_to("../etc/hostname")
    (root / "escape").symlink_to("../../../../../../etc/passwd")
    assert resolve_in_root(root, "/abs") == root / "etc/hostname"
    assert resolve_in_root(root, "etc/rel") == root / "etc/hostname"
    with pytest.raises(FileNotFoundError):
        resolve_in_root(root, "/escape")  # /etc/passwd of the guest root, which has none
    with pytest.raises(IsADirectoryError):
        resolve_in_root(root, "/etc")


def test_mirror_is_read_from_both_apt_source_formats(tmp_path: Path) -> None:
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://mirror.example/debian bookworm main\n"
    )
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://deb.example.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://deb.example.org/debian-security\n"
        "Suites: bookworm-security\n"
    )
    assert host_mirror((one_line,)) == "http://mirror.example/debian"
    assert host_mirror((deb822,)) == "http://deb.example.org/debian"
    assert host_mirror((tmp_path / "missing",)) == "http://deb.debian.org/debian"


def test_template_key_changes_with_the_package_list() -> None:
    assert template_key(("a", "b")) == template_key(("b", "a"))
    assert template_key(("a", "b")) != template_key(("a", "b", "c"))
