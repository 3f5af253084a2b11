"""`labctl up` and a clone's first boot on simulator guests that run cloud-init's stand-in:
host keys written a while after the agent answers, PVE's first-boot package upgrade (ciupgrade)
and `cloud-init status --wait` before `up` hands the VM over."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from provision.guest import GuestAddress, connect
from tests.support.lab import Lab

pytestmark = pytest.mark.guests

APT_INSTALL = "sudo -n apt-get install -y --no-download zstd 2>&1; echo rc=$?"


@pytest.fixture
def first_boot(guest_lab: Lab) -> Iterator[Lab]:
    """The guest_lab with the guests' cloud-init timings restored after the test."""
    before = guest_lab.api("GET", "/_sim/settings")
    yield guest_lab
    guest_lab.api(
        "POST",
        "/_sim/settings",
        json={k: before[k] for k in ("cloudinit_ssh_delay", "cloudinit_upgrade_seconds")},
    )


def in_guest(lab: Lab, vm: dict[str, Any], command: str) -> str:
    address = GuestAddress(
        host=vm["ip"],
        user="labctl",
        key_path=lab.key,
        known_hosts=lab.state / "known_hosts",
        name=vm["name"],
    )
    with connect(address) as session:
        return session.run(command, timeout=60).stdout


def config_of(lab: Lab, vm: dict[str, Any]) -> dict[str, Any]:
    return lab.api("GET", f"/nodes/{vm['node']}/qemu/{vm['vmid']}/config")


def test_up_turns_the_first_boot_upgrade_off_and_hands_over_an_idle_guest(first_boot: Lab) -> None:
    # A PVE default clone would now upgrade packages for 8 s after SSH answers (dpkg lock held).
    first_boot.api("POST", "/_sim/settings", json={"cloudinit_upgrade_seconds": 8})
    up = first_boot.run("--json", "up", "quiet", "--cores", "1", "--ram", "1G", "--no-deploy")
    assert up.code == 0, up
    vm = up.json["vm"]
    out = in_guest(
        first_boot,
        vm,
        "cloud-init status; grep -c simulated /var/log/cloud-init-output.log; " + APT_INSTALL,
    )
    assert "rc=0" in out, out  # no dpkg lock held: a deploy can install at once
    assert out.startswith("status: done\n0\n"), out  # and no upgrade burnt CPU meanwhile
    assert config_of(first_boot, vm)["ciupgrade"] == 0
    assert "] cloud-init ..." in up.stderr and "cloud-init done after" in up.stderr


def test_ciupgrade_on_makes_up_wait_until_the_upgrade_is_over(first_boot: Lab) -> None:
    first_boot.api("POST", "/_sim/settings", json={"cloudinit_upgrade_seconds": 4})
    first_boot.write(template={"ciupgrade": True})
    up = first_boot.run("--json", "up", "upgraded", "--cores", "1", "--ram", "1G", "--no-deploy")
    assert up.code == 0, up
    vm = up.json["vm"]
    assert config_of(first_boot, vm)["ciupgrade"] == 1
    waited = float(up.stderr.split("cloud-init done after ")[1].split("s")[0])
    assert waited > 1.5, up.stderr
    out = in_guest(
        first_boot, vm, "cloud-init status; tail -1 /var/log/cloud-init-output.log; " + APT_INSTALL
    )
    assert out.startswith("status: done\n") and "(simulated) upgrade done" in out, out
    assert "rc=0" in out, out


def test_up_waits_for_a_host_key_cloud_init_writes_late(first_boot: Lab) -> None:
    # The agent answers 0.5 s after start; cloud-init's ssh module writes keys 5 s into boot.
    first_boot.api("POST", "/_sim/settings", json={"cloudinit_ssh_delay": 5})
    started = time.monotonic()
    up = first_boot.run("--json", "up", "latekey", "--cores", "1", "--ram", "1G", "--no-deploy")
    assert up.code == 0, up
    assert time.monotonic() - started > 5
    vm = up.json["vm"]
    # the pinned key is the one sshd serves: connect() uses RejectPolicy with labctl's pins
    assert in_guest(first_boot, vm, "hostname").strip() == "latekey"
    assert "host key changed" not in up.stderr
    pinned = (first_boot.state / "known_hosts").read_text()
    assert len([line for line in pinned.splitlines() if line.startswith(vm["ip"])]) == 1
