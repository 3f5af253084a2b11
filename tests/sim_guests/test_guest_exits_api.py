"""Real container guests that die: the VM is `stopped` through the API, the console tail kept;
a failed boot fails its start task; a start the host cannot hold is refused, naming the limit."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.sim.guests.base import SYSTEMD_INOTIFY_FAILURE
from provision.sim.guests.capacity import HostReader, HostUsage
from provision.sim.guests.container import ContainerBackend, ssh_banner
from provision.sim.guests.errors import GuestsUnavailable
from provision.sim.server import SimServer
from tests.support.guests import guests_skip_reason
from tests.support.sim_api import FAST, Raw, token_api, wait

pytestmark = pytest.mark.guests

BRIDGE, SUBNET, PREFIX = "lgbr22", "10.213.22.0/24", "lg22"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    reason = guests_skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("exits")
    try:
        backend = ContainerBackend(
            base / "guests", bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX, mem_scale=0.125
        )
    except GuestsUnavailable as exc:
        pytest.skip(f"guests unavailable: {exc}")
    with SimServer(base / "sim", backend=backend, **FAST) as server:
        yield server


@pytest.fixture
def backend(sim: SimServer) -> ContainerBackend:
    assert isinstance(sim.backend, ContainerBackend)
    return sim.backend


@pytest.fixture
def prox(sim: SimServer) -> Iterator[Any]:
    api = token_api(sim)
    yield api
    Raw(sim)("DELETE", "/_sim/faults")
    for vm in api.nodes("pve").qemu.get():
        if vm.get("template"):
            continue
        if vm["status"] == "running":
            wait(api, api.nodes("pve").qemu(vm["vmid"]).status.stop.post())
        wait(api, api.nodes("pve").qemu(vm["vmid"]).delete())


def clone(prox: Any) -> int:
    vmid = int(prox.cluster.nextid.get())
    upid = prox.nodes("pve").qemu(9000).clone.post(newid=vmid, name=f"exit{vmid}")
    assert wait(prox, upid)["exitstatus"] == "OK"
    prox.nodes("pve").qemu(vmid).config.put(cores=1, memory=1024)
    return vmid


def task_log(prox: Any, upid: str) -> list[str]:
    return [line["t"] for line in prox.nodes("pve").tasks(upid).log.get(limit=0)]


def test_killing_a_guests_init_stops_its_vm_within_seconds_and_keeps_its_console(
    prox: Any, sim: SimServer, backend: ContainerBackend
) -> None:
    vmid = clone(prox)
    vm = prox.nodes("pve").qemu(vmid)
    assert wait(prox, vm.status.start.post())["exitstatus"] == "OK"
    backend.wait_ready(vmid, timeout_s=60)
    leader = backend.init_pid(vmid)
    assert leader is not None and vm.status.current.get()["status"] == "running"

    os.kill(leader, signal.SIGKILL)
    killed = time.monotonic()
    while vm.status.current.get()["status"] != "stopped":
        assert time.monotonic() - killed < 5, "the VM still runs 5 s after its guest died"
        time.sleep(0.1)
    status = vm.status.current.get()
    assert (status["qmpstatus"], status["uptime"]) == ("stopped", 0)
    assert not backend.is_running(vmid)

    kept = Raw(sim)("GET", "/_sim/guest-exits").json()["data"][str(vmid)]
    assert kept["console_tail"], kept
    assert any("Reached target" in line for line in kept["console_tail"])  # the boot's output
    assert f"Container {PREFIX}-{vmid} terminated by signal KILL." in kept["console_tail"]
    console = Path(kept["console_log"])
    assert console == backend.state_dir / "guests" / str(vmid) / "console.log"
    assert kept["console_tail"][-1] in console.read_text(errors="replace")
    # a VM whose guest died starts again like any stopped VM
    assert wait(prox, vm.status.start.post())["exitstatus"] == "OK"
    backend.wait_ready(vmid, timeout_s=60)


def test_a_guest_that_powers_itself_off_is_a_stopped_vm(
    prox: Any, sim: SimServer, backend: ContainerBackend
) -> None:
    vmid = clone(prox)
    vm = prox.nodes("pve").qemu(vmid)
    assert wait(prox, vm.status.start.post())["exitstatus"] == "OK"
    backend.wait_ready(vmid, timeout_s=60)
    leader = backend.init_pid(vmid)
    assert leader is not None
    os.kill(leader, signal.SIGRTMIN + 4)  # what `systemctl poweroff` asks of systemd

    asked = time.monotonic()
    while vm.status.current.get()["status"] != "stopped":
        assert time.monotonic() - asked < 30, "the VM still runs 30 s after its poweroff"
        time.sleep(0.1)
    kept = Raw(sim)("GET", "/_sim/guest-exits").json()["data"][str(vmid)]
    assert kept["exit_code"] == 0
    assert kept["console_tail"][-1] == "Powering off.", kept["console_tail"]


def test_a_guest_whose_init_exits_at_boot_fails_its_start_task_with_the_console_tail(
    prox: Any, sim: SimServer, backend: ContainerBackend
) -> None:
    vmid = clone(prox)
    vm = prox.nodes("pve").qemu(vmid)
    assert Raw(sim)("POST", "/_sim/faults", json={"kind": "boot_failure", "vmid": vmid}).ok

    upid = vm.status.start.post()
    assert wait(prox, upid)["exitstatus"] == "start failed: QEMU exited with code 255"
    log = task_log(prox, upid)
    assert [line for line in log if line in SYSTEMD_INOTIFY_FAILURE] == list(
        SYSTEMD_INOTIFY_FAILURE
    )
    assert vm.status.current.get()["status"] == "stopped"
    assert not backend.is_running(vmid)
    assert not Path(f"/run/netns/{PREFIX}-{vmid}").exists()  # its run was torn down

    assert wait(prox, vm.status.start.post())["exitstatus"] == "OK"  # the fault was one boot
    backend.wait_ready(vmid, timeout_s=60)
    ip = backend.guest_ip(vmid)
    assert ip is not None and ssh_banner(ip) is not None


class InotifyNearlyUsedUp(HostReader):
    """The host as the 20th guest saw it: root's inotify instances almost all in use."""

    def usage(self, guest_pids: Iterable[int] = ()) -> tuple[HostUsage, tuple[int, int]]:
        usage, held = super().usage(guest_pids)
        room = usage.inotify_instances_used + 4  # a guest needs 8
        return dataclasses.replace(usage, inotify_instances_max=room), held


def test_a_start_the_host_cannot_hold_fails_with_the_limit_and_the_fix(
    prox: Any, backend: ContainerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    vmid = clone(prox)
    monkeypatch.setattr(backend, "host_reader", InotifyNearlyUsedUp())

    status = wait(prox, prox.nodes("pve").qemu(vmid).status.start.post())
    assert re.fullmatch(
        rf"cannot start VM {vmid}: 1 guest needs ~8 inotify instances( besides the \d+ the host"
        r" uses)?, fs.inotify.max_user_instances is \d+ \(run scripts/sim-host-setup.sh\)",
        status["exitstatus"],
    ), status["exitstatus"]
    assert prox.nodes("pve").qemu(vmid).status.current.get()["status"] == "stopped"
    assert not backend.is_running(vmid)
