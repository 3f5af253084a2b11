"""The VM lease in the VM's Notes, through the real client and the simulator's digest checks."""

from __future__ import annotations

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
    wait_task(client, client.post("nodes/pve/qemu/9000/clone", newid=vmid, name="leased"),
              timeout_s=30, what="clone")
    path = f"nodes/pve/qemu/{vmid}"
    client.put(f"{path}/config", description=USER_NOTES)
    yield client, path


def lease(client: PveClient, path: str, command: str = "sweep leased", **kw: Any) -> VmLease:
    return VmLease(client, path, "leased", command, Seen(), **kw)


def notes(client: PveClient, path: str) -> str:
    return str(client.get(f"{path}/config").get("description") or "")


def test_a_held_lease_refuses_a_second_caller_with_who_and_since(
        leased_vm: tuple[PveClient, str]) -> None:
    client, path = leased_vm
    with lease(client, path, "sweep leased"):
        held = read_lease(notes(client, path))
        assert isinstance(held, Lease) and held.command == "sweep leased"
        assert notes(client, path).endswith(USER_NOTES)  # the user's own text is kept
        with pytest.raises(LeaseHeld, match=r"leased is held by `labctl sweep leased` on .* "
                                            r"since .* UTC"):
            lease(client, path, "probe leased").acquire()
    assert notes(client, path) == USER_NOTES  # released: the Notes are as the user left them


def test_two_controllers_racing_for_one_vm_never_both_win(
        leased_vm: tuple[PveClient, str]) -> None:
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
        leased_vm: tuple[PveClient, str]) -> None:
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
    assert any("taking over the expired lease of `labctl sweep leased`" in w
               for w in taker.reporter.warnings)


def test_the_holder_renews_so_a_long_run_keeps_its_lease(
        leased_vm: tuple[PveClient, str]) -> None:
    client, path = leased_vm
    with lease(client, path, ttl_s=0.6) as held:
        time.sleep(1.5)  # more than two TTLs: only renewals keep it
        with pytest.raises(LeaseHeld):
            lease(client, path, "probe leased").acquire()
        assert held.lost is None


def test_waiting_caller_gets_the_vm_when_the_holder_lets_go(
        leased_vm: tuple[PveClient, str]) -> None:
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
        leased_vm: tuple[PveClient, str]) -> None:
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
