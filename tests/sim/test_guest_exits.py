"""A guest that stops on its own is a VM that stopped; a boot that fails fails the start task.

API-only here (NoGuestBackend stands in for a guest that dies); tests/sim_guests does the same
with real container guests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.sim.guests.base import SYSTEMD_INOTIFY_FAILURE, GuestSpec
from provision.sim.guests.errors import HostCapacityError
from provision.sim.guests.null import NoGuestBackend
from provision.sim.server import SimServer
from tests.support.sim_api import FAST, Raw, token_api, wait

CAPACITY = (
    "cannot start VM {vmid}: 40 guests need ~320 inotify instances, "
    "fs.inotify.max_user_instances is 128 (run scripts/sim-host-setup.sh)"
)


class FullHostBackend(NoGuestBackend):
    """Refuses every start for capacity, as ContainerBackend does on a full host."""

    def start(self, spec: GuestSpec) -> None:
        raise HostCapacityError(CAPACITY.format(vmid=spec.vmid))


@pytest.fixture
def sim_and_backend(tmp_path: Path) -> Iterator[tuple[SimServer, NoGuestBackend]]:
    backend = NoGuestBackend()
    with SimServer(tmp_path / "state", backend=backend, **FAST) as server:
        yield server, backend


def _clone(prox: Any) -> int:
    vmid = int(prox.cluster.nextid.get())
    assert wait(prox, prox.nodes("pve").qemu(9000).clone.post(newid=vmid))["exitstatus"] == "OK"
    return vmid


def _task_log(prox: Any, upid: str) -> list[str]:
    return [line["t"] for line in prox.nodes("pve").tasks(upid).log.get(limit=0)]


def test_a_guest_that_dies_leaves_its_vm_stopped_without_uptime_or_agent(
    sim_and_backend: tuple[SimServer, NoGuestBackend],
) -> None:
    server, backend = sim_and_backend
    prox = token_api(server)
    vmid = _clone(prox)
    vm = prox.nodes("pve").qemu(vmid)
    assert wait(prox, vm.status.start.post())["exitstatus"] == "OK"
    assert vm.status.current.get()["status"] == "running"

    backend.crash(vmid, exit_code=1, console=("Container lgsim-101 terminated by signal KILL.",))

    status = vm.status.current.get()
    assert (status["status"], status["qmpstatus"], status["uptime"]) == ("stopped", "stopped", 0)
    assert "pid" not in status
    listed = [r for r in prox.cluster.resources.get(type="vm") if r["vmid"] == vmid]
    assert listed[0]["status"] == "stopped"
    with pytest.raises(Exception, match=f"VM {vmid} is not running"):
        vm.agent.ping.post()
    exits = Raw(server)("GET", "/_sim/guest-exits").json()["data"]
    assert exits[str(vmid)]["exit_code"] == 1
    assert exits[str(vmid)]["console_tail"] == ["Container lgsim-101 terminated by signal KILL."]
    # and the VM starts again like any stopped VM
    assert wait(prox, vm.status.start.post())["exitstatus"] == "OK"


def test_a_boot_failure_fails_the_start_task_with_the_console_in_its_log(
    sim_and_backend: tuple[SimServer, NoGuestBackend],
) -> None:
    server, _backend = sim_and_backend
    prox = token_api(server)
    vmid = _clone(prox)
    vm = prox.nodes("pve").qemu(vmid)
    raw = Raw(server)
    assert raw("POST", "/_sim/faults", json={"kind": "boot_failure", "vmid": vmid}).ok

    upid = vm.status.start.post()
    assert wait(prox, upid)["exitstatus"] == "start failed: QEMU exited with code 255"
    log = _task_log(prox, upid)
    assert log[-len(SYSTEMD_INOTIFY_FAILURE) - 1 : -1] == list(SYSTEMD_INOTIFY_FAILURE)
    assert log[-1] == "TASK ERROR: start failed: QEMU exited with code 255"
    assert vm.status.current.get()["status"] == "stopped"
    assert raw("GET", "/_sim/faults").json()["data"]["boot_failures"] == []  # used up
    assert wait(prox, vm.status.start.post())["exitstatus"] == "OK"


def test_a_boot_failure_fault_takes_its_own_console_lines_and_any_vm(tmp_path: Path) -> None:
    with SimServer(tmp_path / "state", **FAST) as server:
        prox = token_api(server)
        vmid = _clone(prox)
        fault = {"kind": "boot_failure", "console": ["Kernel panic - not syncing"], "times": 0}
        assert Raw(server)("POST", "/_sim/faults", json=fault).ok
        for _ in range(2):  # times 0: every boot
            upid = prox.nodes("pve").qemu(vmid).status.start.post()
            assert wait(prox, upid)["exitstatus"].startswith("start failed: QEMU exited")
            assert "Kernel panic - not syncing" in _task_log(prox, upid)
        bad = Raw(server)("POST", "/_sim/faults", json={"kind": "boot_failure", "console": "x"})
        assert bad.status_code == 400


def test_a_guest_that_dies_while_its_start_task_runs_fails_that_task(
    tmp_path: Path,
) -> None:
    backend = NoGuestBackend()
    slow_start = {**FAST, "task_durations": {**FAST["task_durations"], "qmstart": 3.0}}
    with SimServer(tmp_path / "state", backend=backend, **slow_start) as server:
        prox = token_api(server)
        vmid = _clone(prox)
        upid = prox.nodes("pve").qemu(vmid).status.start.post()
        deadline = time.monotonic() + 5
        while not backend.is_running(vmid):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        backend.crash(vmid, exit_code=1, console=("Out of memory: Killed process 1 (systemd)",))
        assert wait(prox, upid)["exitstatus"] == "start failed: QEMU exited with code 1"
        assert "Out of memory: Killed process 1 (systemd)" in _task_log(prox, upid)


def test_a_start_refused_for_capacity_fails_its_task_with_the_limit_named(
    tmp_path: Path,
) -> None:
    with SimServer(tmp_path / "state", backend=FullHostBackend(), **FAST) as server:
        prox = token_api(server)
        vmid = _clone(prox)
        vm = prox.nodes("pve").qemu(vmid)
        status = wait(prox, vm.status.start.post())
        assert status["exitstatus"] == CAPACITY.format(vmid=vmid)
        assert vm.status.current.get()["status"] == "stopped"
