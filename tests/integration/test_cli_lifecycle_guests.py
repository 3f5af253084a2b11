"""`labctl up -> ls -> resize -> down` end to end: real CLI, real proxmoxer over pinned HTTPS, and
simulator VMs that are real systemd guests answering real SSH (host key pinned via the agent).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from provision.errors import ExitCode
from provision.guest import GuestAddress, connect, pinned_hosts
from provision.sim.guests.container import ContainerBackend
from provision.sim.server import SimServer
from tests.support.lab import Lab, wait_stopped

pytestmark = pytest.mark.guests


def address(lab: Lab, name: str, ip: str, known_hosts: Path | None = None) -> GuestAddress:
    return GuestAddress(
        host=ip,
        user="labctl",
        key_path=lab.key,
        known_hosts=known_hosts or lab.state / "known_hosts",
        name=name,
    )


def test_up_ls_resize_down_happy_path(guest_lab: Lab) -> None:
    up = guest_lab.run("--json", "up", "happy", "--cores", "2", "--ram", "1G", "--no-deploy")
    assert up.code == 0, up
    vm = up.json["vm"]
    assert (vm["name"], vm["cores"], vm["memory_mib"], vm["cpu_type"]) == ("happy", 2, 1024, "host")
    ip = vm["ip"]
    assert ip.startswith("10.213.40.")
    # one progress line per stage, with elapsed time, on stderr; stdout is only the JSON
    for stage in ("check", "clone", "configure", "start", "agent", "host key", "ssh"):
        assert f"] {stage} ..." in up.stderr
    assert ip in pinned_hosts(guest_lab.state / "known_hosts")

    # The pinned key really is the guest's: paramiko with RejectPolicy logs in, and so does
    # OpenSSH with the command labctl prints (strict host key checking, labctl's known_hosts).
    with connect(address(guest_lab, "happy", ip)) as session:
        assert session.run("hostname", check=True).stdout.strip() == "happy"
    openssh = subprocess.run(
        [*shlex.split(vm["ssh"]), "-o", "BatchMode=yes", "hostname"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (openssh.returncode, openssh.stdout.strip()) == (0, "happy"), openssh.stderr

    listed = guest_lab.run("--json", "ls")
    assert listed.code == 0, listed
    (row,) = listed.json["vms"]
    assert (row["name"], row["status"], row["ip"], row["managed"]) == ("happy", "running", ip, True)
    table = guest_lab.run("ls")
    assert "happy" in table.stdout and ip in table.stdout and "1 GiB" in table.stdout

    pending = guest_lab.run("resize", "happy", "--cores", "1", "--ram", "2G")
    assert pending.code == 0, pending
    assert "pending until the next reboot" in pending.stdout
    applied = guest_lab.run("--json", "resize", "happy", "--cores", "1", "--ram", "2G", "--reboot")
    assert applied.code == 0, applied
    assert applied.json["rebooted"] is True and applied.json["after"]["cores"] == 1
    after = guest_lab.run("--json", "ls").json["vms"][0]
    assert (after["cores"], after["memory_mib"], after["pending"]) == (1, 2048, False)
    with connect(address(guest_lab, "happy", after["ip"])) as session:
        assert session.run("true").ok

    down = guest_lab.run("down", "happy", "--yes")
    assert down.code == 0, down
    assert guest_lab.vm_named("happy") is None
    assert ip not in pinned_hosts(guest_lab.state / "known_hosts")


def test_up_again_reconciles_instead_of_cloning_a_duplicate(guest_lab: Lab) -> None:
    first = guest_lab.run("--json", "up", "again", "--cores", "1", "--ram", "1G", "--no-deploy")
    assert first.code == 0, first
    vmid = first.json["vm"]["vmid"]
    same = guest_lab.run("--json", "up", "again", "--no-deploy")
    assert same.code == 0, same
    assert same.json["vm"]["vmid"] == vmid
    assert "exists" in same.stderr and "clone ..." not in same.stderr
    assert same.json["vm"]["cores"] == 1  # no flags: the running shape is kept

    # stopped behind labctl's back: `up` starts it again
    guest_lab.api("POST", f"/nodes/pve/qemu/{vmid}/status/stop")
    wait_stopped(guest_lab, f"/nodes/pve/qemu/{vmid}")  # the stop task ran: labctl sees it stopped
    restarted = guest_lab.run("--json", "up", "again", "--cores", "2", "--no-deploy")
    assert restarted.code == 0, restarted
    assert restarted.json["vm"]["vmid"] == vmid and restarted.json["vm"]["cores"] == 2
    assert "start ..." in restarted.stderr
    assert [v["name"] for v in guest_lab.vms()] == ["again"]


def test_two_parallel_ups_both_succeed(
    guest_sim: SimServer, guest_lab: Lab, make_lab: Callable[[SimServer, str], Lab]
) -> None:
    # Separate state dirs: no shared local lock, so both really race for the same VMID on PVE.
    one, two = make_lab(guest_sim, "one"), make_lab(guest_sim, "two")
    procs = [
        lab.start("--json", "up", name, "--cores", "1", "--ram", "1G", "--no-deploy")
        for lab, name in ((one, "par-a"), (two, "par-b"))
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    a, b = one.vm_named("par-a"), one.vm_named("par-b")
    assert a is not None and b is not None and a["vmid"] != b["vmid"]
    for lab, name in ((one, "par-a"), (two, "par-b")):
        assert lab.run("down", name, "--yes").code == 0


def test_transient_server_errors_during_waits_are_retried(guest_lab: Lab) -> None:
    guest_lab.fault(
        kind="http",
        status=500,
        message="proxy loop detected",
        times=3,
        method="GET",
        path="/tasks/.*/status",
    )
    guest_lab.fault(
        kind="http",
        status=596,
        message="Broken pipe",
        times=1,
        method="GET",
        path="/cluster/resources",
    )
    result = guest_lab.run("--json", "up", "flaky", "--cores", "1", "--ram", "1G", "--no-deploy")
    assert result.code == 0, result
    assert result.json["api"]["retries"] >= 4
    assert guest_lab.api("GET", "/_sim/faults")["http"] == []  # every fault was met
    assert guest_lab.run("down", "flaky", "--yes").code == 0


def test_up_without_name_brings_every_declared_vm_to_its_shape(guest_lab: Lab) -> None:
    guest_lab.write(vm={"decl-a": {"cores": 1, "ram": "1G"}, "decl-b": {"cores": 2, "ram": "1G"}})
    config = guest_lab.config.read_text().replace(
        '[vm]\ndecl-a = {"cores": 1, "ram": "1G"}\ndecl-b = {"cores": 2, "ram": "1G"}', ""
    )
    config += '\n[vm.decl-a]\ncores = 1\nram = "1G"\n\n[vm.decl-b]\ncores = 2\nram = "1G"\n'
    guest_lab.config.write_text(config)
    result = guest_lab.run("--json", "up", "--no-deploy")
    assert result.code == 0, result
    shapes = {v["name"]: v["cores"] for v in result.json["vms"]}
    assert shapes == {"decl-a": 1, "decl-b": 2}
    assert guest_lab.run("down", "--all", "--yes").code == 0
    assert guest_lab.vms() == []


def interrupt_up_once_the_vm_appears(lab: Lab, name: str) -> tuple[int, str]:
    """Start `labctl up NAME`, send Ctrl-C's SIGINT as soon as PVE lists the VM: (exit, stderr)."""
    proc = lab.start("up", name, "--no-deploy")
    deadline = time.monotonic() + 30
    while lab.vm_named(name) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_ctrl_c_while_the_clone_request_is_unanswered_still_names_the_vm_it_made(
    guest_lab: Lab,
) -> None:
    # PVE made the VM, but its answer to the clone request is late: Ctrl-C lands while labctl
    # still waits for it, so labctl cannot know the VMID from the answer. It must not say
    # "nothing was created".
    guest_lab.api(
        "POST",
        "/_sim/faults",
        json={"kind": "slow", "seconds": 3.0, "method": "POST", "path": "/clone$"},
    )
    try:
        code, err = interrupt_up_once_the_vm_appears(guest_lab, "unanswered")
    finally:
        guest_lab.api("DELETE", "/_sim/faults")
    assert code == 130, err
    vm = guest_lab.vm_named("unanswered")
    assert vm is not None
    assert "error: interrupted during clone" in err
    assert f"VM unanswered (vmid {vm['vmid']}) was left in place" in err
    assert "nothing was created" not in err
    finished = guest_lab.run("down", "unanswered", "--yes")
    assert finished.code != 0  # untagged: labctl never destroys what it cannot prove is its own
    assert guest_lab.run("up", "unanswered", "--no-deploy").code == 0
    assert guest_lab.run("down", "unanswered", "--yes").code == 0


def test_ctrl_c_during_the_clone_leaves_a_vm_the_next_up_finishes(guest_lab: Lab) -> None:
    guest_lab.api("POST", "/_sim/settings", json={"task_durations": {"qmclone": 4.0}})
    try:
        code, err = interrupt_up_once_the_vm_appears(guest_lab, "interrupted")
    finally:
        guest_lab.api("POST", "/_sim/settings", json={"task_durations": {"qmclone": 0.4}})
    assert code == 130, err
    assert "`labctl up interrupted` finishes it" in err
    vm = guest_lab.vm_named("interrupted")
    assert vm is not None and "labctl" not in (vm.get("tags") or "")  # cloned, not yet tagged
    finished = guest_lab.run("--json", "up", "interrupted", "--no-deploy")
    assert finished.code == 0, finished
    assert finished.json["vm"]["vmid"] == vm["vmid"]
    assert "left by an interrupted `up`" in finished.stderr
    assert "labctl" in (guest_lab.vm_named("interrupted") or {}).get("tags", "")


def test_up_fails_at_once_naming_the_vm_when_its_guest_dies_while_up_waits(
    guest_sim: SimServer, guest_lab: Lab
) -> None:
    guest_lab.api("POST", "/_sim/settings", json={"agent_delay": 120})  # up waits on the agent
    backend = guest_sim.backend
    assert isinstance(backend, ContainerBackend)
    child = guest_lab.start("up", "dies", "--cores", "1", "--ram", "1G", "--no-deploy")
    try:
        deadline = time.monotonic() + 60
        vm = guest_lab.vm_named("dies")
        while vm is None or vm.get("status") != "running" or not backend.init_pid(vm["vmid"]):
            assert time.monotonic() < deadline and child.poll() is None, child.communicate()
            time.sleep(0.2)
            vm = guest_lab.vm_named("dies")
        os.kill(backend.init_pid(vm["vmid"]) or 0, signal.SIGKILL)  # the guest dies
        _, stderr = child.communicate(timeout=120)
    finally:
        guest_lab.api("POST", "/_sim/settings", json={"agent_delay": 0.5})
        if child.poll() is None:
            child.kill()
    assert child.returncode == ExitCode.GUEST, stderr
    # not "gave no IP address within 30s": the stop is noticed, not waited out
    assert "VM dies stopped while labctl waited for its guest agent" in stderr
    assert guest_lab.run("down", "dies", "--yes").code == 0
