"""pvedaemon's worker pool: protected calls (agent endpoints included) share 3 workers per node,
so agent calls to VMs whose agent does not answer make the other protected calls wait; and the
cloud-init inputs (ciupgrade, timings) the guest backend gets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.sim.guests.base import GuestSpec
from provision.sim.server import SimServer
from tests.support.recording_backend import RecordingBackend
from tests.support.sim_api import FAST, Raw, token_api, wait

SILENT_AGENT_S = 1.0  # how long PVE holds a worker for an agent that does not answer


@pytest.fixture
def pool_sim(tmp_path: Path) -> Iterator[SimServer]:
    settings = FAST | {"agent_delay": 0.0, "agent_timeout": SILENT_AGENT_S}
    with SimServer(tmp_path / "state", **settings) as server:
        yield server


def running_vms(prox: Any, count: int) -> list[int]:
    vmids = []
    for _ in range(count):
        vmid = int(prox.cluster.nextid.get())
        wait(prox, prox.nodes("pve").qemu(9000).clone.post(newid=vmid))
        wait(prox, prox.nodes("pve").qemu(vmid).status.start.post())
        vmids.append(vmid)
    return vmids


def start_vms(server: SimServer, count: int) -> list[int]:
    """`count` running VMs whose agents never answer."""
    vmids = running_vms(token_api(server), count)
    raw = Raw(server)
    for vmid in vmids:  # their agents never answer: each call holds a worker SILENT_AGENT_S
        assert raw("POST", "/_sim/faults", json={"kind": "agent", "vmid": vmid}).ok
    return vmids


def latency_while_polling(server: SimServer, polls: list[int], path: str) -> float:
    """How long one `path` call takes while an agent call per entry of `polls` is running."""
    raw = Raw(server)
    threads = [
        threading.Thread(target=raw, args=("GET", f"/nodes/pve/qemu/{vmid}/agent/info"))
        for vmid in polls
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # the agent calls have their workers now
    started = time.monotonic()
    response = raw("GET", path)
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    for thread in threads:
        thread.join()
    return took


def test_two_agent_polls_per_vm_starve_the_other_protected_calls(pool_sim: SimServer) -> None:
    a, b = start_vms(pool_sim, 2)
    status = f"/nodes/pve/qemu/{a}/status/current"
    # one poll per VM: a worker stays free, status/current answers at once
    assert latency_while_polling(pool_sim, [a, b], status) < 0.4
    # two polls per VM (what labctl did): all 3 workers wait on silent agents
    assert latency_while_polling(pool_sim, [a, a, b, b], status) > 0.5
    # pveproxy's own calls (not protected) never wait for pvedaemon
    assert latency_while_polling(pool_sim, [a, a, b, b], "/cluster/resources") < 0.4
    assert pool_sim.app is not None and pool_sim.app.daemon.peak("pve") == 3


def test_the_number_of_workers_is_a_setting(pool_sim: SimServer) -> None:
    a, b = start_vms(pool_sim, 2)
    raw = Raw(pool_sim)
    assert raw("POST", "/_sim/settings", json={"daemon_workers": 5}).ok
    status = f"/nodes/pve/qemu/{a}/status/current"
    assert latency_while_polling(pool_sim, [a, a, b, b], status) < 0.4
    assert raw("POST", "/_sim/settings", json={"daemon_workers": 0}).status_code == 400


def spec_of(backend: RecordingBackend) -> GuestSpec:
    spec: GuestSpec = [c for c in backend.calls if c[0] == "start"][-1][1]
    return spec


def test_ciupgrade_reaches_the_guest_as_package_upgrade(tmp_path: Path) -> None:
    backend = RecordingBackend()
    settings: dict[str, Any] = FAST | {"cloudinit_ssh_delay": 1.5, "cloudinit_upgrade_seconds": 4}
    with SimServer(tmp_path, backend=backend, **settings) as server:
        prox = token_api(server)
        seen = []
        for value in (None, 1, 0):
            vmid = int(prox.cluster.nextid.get())
            wait(prox, prox.nodes("pve").qemu(9000).clone.post(newid=vmid))
            vm = prox.nodes("pve").qemu(vmid)
            if value is not None:
                vm.config.put(ciupgrade=value)
            wait(prox, vm.status.start.post())
            seen.append(spec_of(backend).package_upgrade)
        spec = spec_of(backend)
    # PVE's default is 1: `package_upgrade: true` unless ciupgrade=0 (Cloudinit.pm:186)
    assert seen == [True, True, False]
    assert (spec.ssh_keys_delay, spec.upgrade_seconds) == (1.5, 4.0)


def test_a_running_task_holds_no_worker(tmp_path: Path) -> None:
    # pvedaemon forks the task and returns its UPID (RESTEnvironment.pm fork_worker): a long
    # shutdown or destroy must not keep one of the 3 workers from the other calls
    settings = FAST | {"daemon_workers": 1, "task_durations": {"qmshutdown": 30.0}}
    with SimServer(tmp_path / "state", **settings) as server:
        prox = token_api(server)
        (vmid,) = running_vms(prox, 1)
        upid = prox.nodes("pve").qemu(vmid).status.shutdown.post()
        task = prox.nodes("pve").tasks(upid).status.get()
        assert task["status"] == "running"
        assert server.app is not None and server.app.daemon.busy("pve") == 0
        assert prox.nodes("pve").qemu(vmid).status.current.get()["vmid"] == vmid
        assert prox.nodes("pve").tasks(upid).status.get()["status"] == "running"
