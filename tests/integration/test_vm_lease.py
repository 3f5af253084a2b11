"""The VM lease in the VM's Notes, through the real client and the simulator's digest checks."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from provision.errors import LeaseHeld, UsageError
from provision.pve.client import PveClient
from provision.pve.lease import Lease, UnreadableLease, VmLease, parse_wait, read_lease
from provision.pve.tasks import wait_task
from provision.sim.server import SimServer
from tests.support.lab import Lab
from tests.support.pve import client_for

USER_NOTES = "Kept for the GPU tests.\nDo not resize on Fridays.\n"


class Seen:
    """What a user would have read on stderr: progress steps and warnings."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.warnings: list[str] = []

    def stage(self, name: str) -> None:
        self.steps.append(name)

    def step(self, message: str) -> None:
        self.steps.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


@pytest.fixture
def leased_vm(api_lab: Lab, api_sim: SimServer) -> Iterator[tuple[PveClient, str]]:
    client = client_for(api_sim)
    vmid = int(client.get("cluster/nextid"))
    wait_task(
        client,
        client.post("nodes/pve/qemu/9000/clone", newid=vmid, name="leased"),
        timeout_s=30,
        what="clone",
    )
    path = f"nodes/pve/qemu/{vmid}"
    client.put(f"{path}/config", description=USER_NOTES, tags="labctl")
    yield client, path


def lease(client: PveClient, path: str, command: str = "sweep leased", **kw: Any) -> VmLease:
    return VmLease(client, path, "leased", command, Seen(), **kw)


def notes(client: PveClient, path: str) -> str:
    return str(client.get(f"{path}/config").get("description") or "")


def test_a_held_lease_refuses_a_second_caller_with_who_and_since(
    leased_vm: tuple[PveClient, str],
) -> None:
    client, path = leased_vm
    with lease(client, path, "sweep leased"):
        held = read_lease(notes(client, path))
        assert isinstance(held, Lease) and held.command == "sweep leased"
        assert notes(client, path).endswith(USER_NOTES)  # the user's own text is kept
        with pytest.raises(
            LeaseHeld,
            match=r"leased is held by `labctl sweep leased` on .* "
            r"since .* UTC",
        ):
            lease(client, path, "probe leased").acquire()
    assert notes(client, path) == USER_NOTES  # released: the Notes are as the user left them


def test_two_controllers_racing_for_one_vm_never_both_win(leased_vm: tuple[PveClient, str]) -> None:
    client, path = leased_vm
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def contend(index: int) -> None:
        contender = lease(client, path, f"sweep #{index}")
        start.wait()
        try:
            contender.acquire()
            outcomes.append(f"won {index}")
        except LeaseHeld:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes)[:3] == ["refused"] * 3 and outcomes.count("refused") == 3
    winner = read_lease(notes(client, path))
    assert isinstance(winner, Lease) and f"won {winner.command[-1]}" in outcomes


def test_a_stale_lease_whose_holder_stopped_renewing_is_taken_over_and_said_so(
    leased_vm: tuple[PveClient, str],
) -> None:
    client, path = leased_vm
    crashed = lease(client, path, "sweep leased", ttl_s=0.5)
    crashed.acquire()  # taken and never renewed nor released: a holder killed with -9
    taker = lease(client, path, "probe leased")
    with pytest.raises(LeaseHeld):
        taker.acquire()
    time.sleep(0.6)
    taker.acquire()
    held = read_lease(notes(client, path))
    assert isinstance(held, Lease) and held.token == taker.token
    assert isinstance(taker.reporter, Seen)
    assert any(
        "taking over the expired lease of `labctl sweep leased`" in w
        for w in taker.reporter.warnings
    )


def test_the_holder_renews_so_a_long_run_keeps_its_lease(leased_vm: tuple[PveClient, str]) -> None:
    client, path = leased_vm
    with lease(client, path, ttl_s=0.6) as held:
        time.sleep(1.5)  # more than two TTLs: only renewals keep it
        with pytest.raises(LeaseHeld):
            lease(client, path, "probe leased").acquire()
        assert held.lost is None


def test_waiting_caller_gets_the_vm_when_the_holder_lets_go(
    leased_vm: tuple[PveClient, str],
) -> None:
    client, path = leased_vm
    first = lease(client, path)
    first.acquire()
    threading.Timer(1.0, first.release).start()
    second = lease(client, path, "probe leased", wait_s=20)
    second.acquire()
    held = read_lease(notes(client, path))
    assert isinstance(held, Lease) and held.token == second.token
    assert isinstance(second.reporter, Seen)
    assert any("waiting for leased" in s for s in second.reporter.steps)


def test_an_unreadable_lease_is_held_with_a_warning_naming_the_text(
    leased_vm: tuple[PveClient, str],
) -> None:
    client, path = leased_vm
    client.put(f"{path}/config", description="<!-- labctl-lease {oops -->\n" + USER_NOTES)
    assert isinstance(read_lease(notes(client, path)), UnreadableLease)
    taker = lease(client, path, "probe leased", ttl_s=0.5)
    with pytest.raises(LeaseHeld, match="cannot read"):
        taker.acquire()
    assert isinstance(taker.reporter, Seen)
    assert any("labctl-lease {oops" in w for w in taker.reporter.warnings)
    time.sleep(0.6)  # unreadable leases expire after a TTL from when first seen
    taker.acquire()
    assert notes(client, path).endswith(USER_NOTES)


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_bad_wait_values_are_usage_errors(value: str) -> None:
    with pytest.raises(UsageError):
        parse_wait(value)


def test_wait_values() -> None:
    assert parse_wait(None) is None and parse_wait("") == 600.0 and parse_wait("30") == 30.0


def test_a_lease_whose_holder_process_died_on_this_machine_is_taken_over_at_once(
    leased_vm: tuple[PveClient, str],
) -> None:
    client, path = leased_vm
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: a holder killed with -9
    killed = lease(client, path, "sweep leased")
    killed.holder = f"{socket.gethostname()}:{dead.pid}"
    killed.acquire()
    elsewhere = lease(client, path, "sweep leased")
    elsewhere.holder = f"other-controller:{dead.pid}"
    taker = lease(client, path, "sweep leased")
    taker.acquire()
    assert isinstance(taker.reporter, Seen)
    assert any("that process is gone from this machine" in w for w in taker.reporter.warnings)
    taker.release()
    elsewhere.acquire()  # a holder on another machine is not judged by this machine's pids
    with pytest.raises(LeaseHeld):
        lease(client, path, "probe leased").acquire()


def held_elsewhere(client: PveClient, path: str) -> VmLease:
    """A lease taken by a controller on another machine (what a second user's sweep writes)."""
    other = lease(client, path, "sweep leased")
    other.holder = "other-controller:4242"
    other.acquire()
    return other


def test_a_command_on_a_vm_another_controller_holds_is_refused_exit_4_naming_the_holder(
    api_lab: Lab, leased_vm: tuple[PveClient, str]
) -> None:
    client, path = leased_vm
    held_elsewhere(client, path)

    listing = api_lab.run("ls")
    resized = api_lab.run("resize", "leased", "--cores", "3")

    assert "leased is held by `labctl sweep leased` on other-controller:4242 since" in (
        listing.stdout
    )
    assert resized.code == 4, resized
    assert resized.stderr.strip().count("\n") == 0 and (
        "leased is held by `labctl sweep leased` on other-controller:4242 since"
    ) in (resized.stderr)
    assert int(client.get(f"{path}/config")["cores"]) != 3  # nothing changed


def test_wait_gets_the_vm_once_the_holder_releases_and_the_command_gives_it_back(
    api_lab: Lab, leased_vm: tuple[PveClient, str]
) -> None:
    client, path = leased_vm
    other = held_elsewhere(client, path)
    threading.Timer(2.0, other.release).start()

    resized = api_lab.run("resize", "leased", "--cores", "3", "--wait", "30")

    assert resized.code == 0, resized
    assert "waiting for leased: held by `labctl sweep leased`" in resized.stderr
    assert int(client.get(f"{path}/config")["cores"]) == 3
    assert notes(client, path) == USER_NOTES  # released, the user's text as it was


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_wait_is_one_line_exit_2_before_anything_is_touched(
    api_lab: Lab, leased_vm: tuple[PveClient, str], value: str
) -> None:
    client, path = leased_vm
    for command in (
        ("resize", "leased", "--cores", "2"),
        ("down", "leased", "--yes"),
        ("probe", "leased"),
    ):
        result = api_lab.run(*command, "--wait", value)
        assert result.code == 2, result
        assert len(result.stderr.strip().splitlines()) == 1 and "--wait" in result.stderr
    assert notes(client, path) == USER_NOTES


def test_down_all_removes_every_vm_it_may_and_lists_the_one_another_controller_holds(
    api_lab: Lab, leased_vm: tuple[PveClient, str]
) -> None:
    client, path = leased_vm
    for name in ("free-a", "free-b"):
        vmid = int(client.get("cluster/nextid"))
        wait_task(
            client,
            client.post("nodes/pve/qemu/9000/clone", newid=vmid, name=name),
            timeout_s=30,
            what="clone",
        )
        client.put(f"nodes/pve/qemu/{vmid}/config", tags="labctl")
    other = held_elsewhere(client, path)

    result = api_lab.run("--json", "down", "--all", "--yes", "--jobs", "3")

    assert result.code == 4, result
    assert sorted(v["name"] for v in result.json["destroyed"]) == ["free-a", "free-b"]
    assert [f["name"] for f in result.json["failed"]] == ["leased"]
    assert "leased (vmid" in result.stderr and "not destroyed: leased is held by" in (result.stderr)
    assert api_lab.vm_named("leased") is not None and api_lab.vm_named("free-a") is None
    other.release()


@pytest.mark.parametrize("jobs", ["0", "-1", "many"])
def test_a_bad_jobs_value_is_one_line_exit_2(api_lab: Lab, jobs: str) -> None:
    for command in (("down", "--all", "--yes"), ("up",)):
        result = api_lab.run(*command, "--jobs", jobs)
        assert result.code == 2, result
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert "--jobs" in result.stderr
