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
from provision.errors import AgentTimeout
from provision.progress import NullReporter
from provision.pve.agent import GuestAgent
from provision.pve.cluster import Cluster, Resource, UpContext
from provision.pve.tasks import wait_task
from provision.sim.server import SimServer
from tests.support.lab import FAST

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
    return GuestAgent(Cluster(config, NullReporter()), state / "known_hosts")


def test_waiting_for_silent_agents_leaves_pvedaemon_a_worker(
    slow_agent_sim: SimServer, tmp_path: Path
) -> None:
    guest_agent = agent_for(slow_agent_sim, tmp_path / "state", **{"timeouts.agent": 4})
    client = guest_agent.cluster.client
    resources = []
    for name in ("sweep-1", "sweep-2"):
        vmid = int(client.get("cluster/nextid"))
        wait_task(
            client,
            client.post("nodes/pve/qemu/9000/clone", newid=vmid, name=name),
            timeout_s=30,
            what="clone",
        )
        wait_task(
            client, client.post(f"nodes/pve/qemu/{vmid}/status/start"), timeout_s=30, what="start"
        )
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
