"""labctl with README's least-privilege token, through the real CLI against the simulator.

README's `pveum` commands are replayed on the simulator as they stand (tests/unit/readme_pveum.py).
With them, every Proxmox call of `up`, `ls`, `resize` and `down` goes through; without any one
of the role's privileges, `up` stops with one error line naming it (exit code 4), and what it
leaves behind is said in that line. So README's role is enough, and none of it is surplus.

API-only guests: the agent reads an SSH host key, but nothing answers SSH, so a full `up` ends
at the SSH wait (exit 5), past every Proxmox call it makes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.sim.guests.null import NoGuestBackend
from provision.sim.server import SimServer
from tests.support.cli import one_error_line
from tests.support.lab import FAST, Lab, use_readme_token
from tests.support.readme_pveum import role_privileges

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"


class KeyBackend(NoGuestBackend):
    """API-only guests whose agent can read an SSH host key (nothing answers SSH)."""

    def file_read(self, vmid: int, path: str) -> bytes:
        if path == HOST_KEY:
            return b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0dGVzdGtleWZvcmxhYmN0bHByaXZz guest\n"
        raise FileNotFoundError(path)


@pytest.fixture(scope="module")
def key_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    settings = FAST | {"agent_delay": 0.1}
    with SimServer(tmp_path_factory.mktemp("priv-sim"), backend=KeyBackend(), **settings) as sim:
        yield sim


@pytest.fixture
def lab(key_sim: SimServer, tmp_path: Path, ssh_key: Path) -> Iterator[Lab]:
    lab = Lab(key_sim, tmp_path, ssh_key)
    lab.write()
    yield lab
    lab.api("DELETE", "/_sim/access")
    lab.empty()  # with root's token


def test_readme_role_is_enough_for_up_ls_resize_and_down(lab: Lab) -> None:
    token = use_readme_token(lab)
    up = lab.run("up", "least", "--no-deploy", "--disk", "8G")
    # Every Proxmox call went through: clone, config, resize, start, agent IP and file-read;
    # what is left is SSH, which nothing answers on API-only guests.
    assert up.code == 5, up
    line = one_error_line(up.stderr)
    assert "lacks" not in line and "Permission" not in line
    assert "pinned" in up.stderr and "grown" in up.stderr
    vm = lab.vm_named("least")
    assert vm is not None and vm["status"] == "running" and "labctl" in vm["tags"]
    listed = lab.run("--json", "ls")
    assert listed.code == 0, listed
    assert listed.json["vms"][0]["ip"]  # agent/network-get-interfaces with the token
    resized = lab.run("resize", "least", "--cores", "2", "--ram", "1G")
    assert resized.code == 0, resized
    lab.fault(kind="ignore_shutdown", vmid=vm["vmid"])  # so `down` needs the hard stop too
    down = lab.run("down", "least", "--yes")
    assert down.code == 0, down
    assert "stopped in" in down.stderr and lab.vm_named("least") is None
    tasks = lab.api("GET", "/nodes/pve/tasks", params={"source": "all", "vmid": vm["vmid"]})
    assert {t["type"] for t in tasks} >= {"resize", "qmstart", "qmconfig", "qmstop", "qmdestroy"}
    assert all(t["user"] == token.split("!")[0] for t in tasks)  # all made by README's token


@pytest.mark.parametrize("missing", role_privileges())
def test_up_without_one_privilege_of_readme_role_names_it(lab: Lab, missing: str) -> None:
    use_readme_token(lab, without=missing)
    result = lab.run("up", "short", "--no-deploy", "--disk", "8G")
    assert result.code == 4, result
    line = one_error_line(result.stderr)
    assert re.search(rf"\b{re.escape(missing)}\b", line), line
    vm = lab.vm_named("short")
    if vm is not None:  # a half-made VM is said, with what to do about it
        assert f"vmid {vm['vmid']}) was left in place" in line, line
        assert "`labctl up short`" in line
    else:
        assert "left in place" not in line
