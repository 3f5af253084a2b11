"""labctl's agent polls against the simulator's pvedaemon pool (3 workers, real HTTPS): while
several VMs wait for agents that do not answer, labctl's other API calls are not starved."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.config import KEYS, LabConfig
from provision.errors import AgentTimeout, GuestError
from provision.guest.known_hosts import pin_host_key
from provision.progress import NullReporter
from provision.pve.agent import GuestAgent
from provision.pve.boot import Boot
from provision.pve.cluster import Cluster, LocalLocks, Resource, UpContext
from provision.pve.tasks import wait_task
from provision.sim.guests.null import fake_address
from provision.sim.server import SimServer
from tests.support.lab import FAST

KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA guest"
SILENT_AGENT_S = 1.0  # PVE answers "QEMU guest agent is not running" after this long


@pytest.fixture
def slow_agent_sim(tmp_path: Path) -> Iterator[SimServer]:
    settings = FAST | {"agent_delay": 0.0, "agent_timeout": SILENT_AGENT_S}
    with SimServer(tmp_path / "sim", **settings) as server:
        yield server


def agent_for(server: SimServer, state: Path, **values: Any) -> GuestAgent:
    creds = server.credentials
    config = LabConfig(
        values={k.path: k.default for k in KEYS}
        | {
            "proxmox.host": "127.0.0.1",
            "proxmox.port": server.port,
            "proxmox.token_id": creds["token_id"],
            "proxmox.token_secret": creds["token_secret"],
            "proxmox.fingerprint": server.fingerprint,
            "proxmox.timeout": 10,
        }
        | values
    )
    return GuestAgent(
        Cluster(config, NullReporter()), state / "known_hosts", LocalLocks(state / "locks")
    )


def labctl_vm(client: Any, name: str) -> int:
    """A started clone of the template, tagged as labctl's."""
    vmid = int(client.get("cluster/nextid"))
    clone = client.post("nodes/pve/qemu/9000/clone", newid=vmid, name=name)
    wait_task(client, clone, timeout_s=30, what="clone")
    client.post(f"nodes/pve/qemu/{vmid}/config", tags="labctl")
    wait_task(
        client, client.post(f"nodes/pve/qemu/{vmid}/status/start"), timeout_s=30, what="start"
    )
    return vmid


def test_waiting_for_silent_agents_leaves_pvedaemon_a_worker(
    slow_agent_sim: SimServer, tmp_path: Path
) -> None:
    guest_agent = agent_for(slow_agent_sim, tmp_path / "state", **{"timeouts.agent": 4})
    client = guest_agent.cluster.client
    resources = []
    for name in ("sweep-1", "sweep-2"):
        vmid = labctl_vm(client, name)
        resources.append(
            Resource(
                vmid=vmid,
                node="pve",
                name=name,
                status="running",
                tags=("labctl",),
                template=False,
                lock=None,
                uptime_s=0,
                maxdisk=0,
            )
        )
    assert slow_agent_sim.cluster is not None
    for res in resources:  # these agents never answer
        slow_agent_sim.cluster.faults.add({"kind": "agent", "vmid": res.vmid})
    timeouts: list[BaseException] = []

    def wait(res: Resource) -> None:
        try:
            guest_agent.wait_for_address(UpContext(name=res.name, vmid=res.vmid, node="pve"), res)
        except AgentTimeout as error:
            timeouts.append(error)

    threads = [threading.Thread(target=wait, args=(res,)) for res in resources]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    took: list[float] = []
    while any(t.is_alive() for t in threads):  # a sweep's other (protected) calls meanwhile
        started = time.monotonic()
        client.get(f"{resources[0].path}/status/current")
        took.append(time.monotonic() - started)
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    assert len(timeouts) == 2  # both waits ended with the agent timeout
    assert len(took) > 10
    assert max(took) < SILENT_AGENT_S / 2, f"status/current waited {max(took):.2f}s for a worker"


def test_a_vm_started_a_moment_ago_gets_time_for_its_agent_to_report_an_address(
    tmp_path: Path,
) -> None:
    # a sweep killed while the VM rebooted leaves it running with no agent yet; the next
    # command's first agent poll finds no address and must wait, not fail
    settings = FAST | {"agent_delay": 1.5}
    with SimServer(tmp_path / "sim", **settings) as server:
        guest_agent = agent_for(server, tmp_path / "state", **{"timeouts.agent": 20})
        vmid = labctl_vm(guest_agent.cluster.client, "fresh")
        ip = fake_address(vmid)
        pin_host_key(guest_agent.known_hosts, ip, KEY_LINE)  # no host key read needed
        started = time.monotonic()
        address = Boot(guest_agent.cluster, guest_agent).guest("fresh")
        assert address.host == ip
        assert time.monotonic() - started > 0.5  # it did wait for the agent


def test_a_vm_running_longer_than_the_agent_timeout_without_an_address_fails_at_once(
    tmp_path: Path,
) -> None:
    with SimServer(tmp_path / "sim", **FAST) as server:
        guest_agent = agent_for(server, tmp_path / "state", **{"timeouts.agent": 1})
        vmid = labctl_vm(guest_agent.cluster.client, "silent")
        assert server.cluster is not None
        server.cluster.faults.add({"kind": "agent", "vmid": vmid})
        while guest_agent.cluster.require_managed("silent").uptime_s < 2:  # whole seconds
            time.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(GuestError, match="the guest agent of silent reports no address"):
            Boot(guest_agent.cluster, guest_agent).guest("silent")
        assert time.monotonic() - started < 1
