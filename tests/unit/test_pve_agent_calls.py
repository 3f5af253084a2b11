"""How labctl uses the guest agent: one poll per VM at a time with a pause in between, at most
two agent calls per process (pvedaemon has 3 workers), the host key pinned only once it exists
and two reads agree, ciupgrade off by default; and how `cloud-init status --wait` is read."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from provision.config import KEYS, LabConfig
from provision.errors import GuestError, ProxmoxAPIError
from provision.guest.cloudinit import parse_status
from provision.guest.known_hosts import pinned_hosts
from provision.guest.types import CommandResult
from provision.pve import agent
from provision.pve.agent import GuestAgent
from provision.pve.clone import Cloner
from provision.pve.cluster import Cluster, LocalLocks, Resource, UpContext
from provision.shape import Shape
from tests.support.reporting import RecordingReporter

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIqDEymXa6Vv5Rkr4g0+Jb8YB8u1FzY8nvY3W3wzBoX9 root@a"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2z6Sx2m1rUuXh5A2rk1P9yZ3m6iHnW8n3b4Q4o2kKq root@b"
NOT_RUNNING = ProxmoxAPIError(
    "Proxmox: QEMU guest agent is not running [GET /x, HTTP 500]", status=500
)
NO_FILE = ProxmoxAPIError(
    "Proxmox: Agent error: failed to open file '/etc/ssh/ssh_host_ed25519_key.pub': No such "
    "file or directory [GET /x, HTTP 500]",
    status=500,
)
INTERFACES = {
    "result": [
        {
            "name": "eth0",
            "ip-addresses": [{"ip-address": "10.0.0.5", "ip-address-type": "ipv4", "prefix": 24}],
        }
    ]
}


class AgentClient:
    """A PVE client whose agent endpoints answer from scripts and record concurrency."""

    def __init__(self, answer: Callable[[str, int], Any], hold_s: float = 0.0) -> None:
        self.answer = answer
        self.hold_s = hold_s
        self.lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.peak_per_vm: dict[str, int] = {}
        self.total = 0
        self.peak_total = 0
        self.calls: list[tuple[str, float, float]] = []  # (path, start, end)
        self.params: list[tuple[str, dict[str, Any]]] = []
        self.settings = SimpleNamespace(host="pve.example", port=8006)

    def get(self, path: str, *, poll: bool = False, retry: bool = True, **params: Any) -> Any:
        vm = path.split("/agent/")[0]
        with self.lock:
            self.in_flight[vm] = self.in_flight.get(vm, 0) + 1
            self.peak_per_vm[vm] = max(self.peak_per_vm.get(vm, 0), self.in_flight[vm])
            self.total += 1
            self.peak_total = max(self.peak_total, self.total)
            n = sum(1 for p, _s, _e in self.calls if p == path)
        started = time.monotonic()
        try:
            time.sleep(self.hold_s)  # PVE's guest-ping wait while no agent answers
            result = self.answer(path, n)
            if isinstance(result, Exception):
                raise result
            return result
        finally:
            with self.lock:
                self.in_flight[vm] -= 1
                self.total -= 1
                self.calls.append((path, started, time.monotonic()))

    def put(self, path: str, **params: Any) -> Any:
        self.params.append((path, params))
        return None


def make_cluster(client: Any, **values: Any) -> Cluster:
    config = LabConfig(values={k.path: k.default for k in KEYS} | values)
    return Cluster(config, RecordingReporter(), client=client)


def make_agent(tmp_path: Path, client: Any, **values: Any) -> GuestAgent:
    locks = LocalLocks(tmp_path / "locks")
    return GuestAgent(make_cluster(client, **values), tmp_path / "known_hosts", locks)


def resource(vmid: int) -> Resource:
    return Resource(
        vmid=vmid,
        node="pve",
        name=f"vm{vmid}",
        status="running",
        tags=("labctl",),
        template=False,
        lock=None,
        uptime_s=0,
        maxdisk=0,
    )


def test_one_agent_poll_per_vm_at_a_time_with_growing_pauses(tmp_path: Path) -> None:
    client = AgentClient(lambda _p, n: NOT_RUNNING if n < 4 else INTERFACES, hold_s=0.15)
    guest_agent = make_agent(tmp_path, client, **{"timeouts.agent": 30})
    ip = guest_agent.wait_for_address(UpContext(name="vm101", vmid=101), resource(101))
    assert ip == "10.0.0.5"
    assert client.peak_per_vm == {"nodes/pve/qemu/101": 1}
    calls = sorted(client.calls, key=lambda c: c[1])
    gaps = [b[1] - a[2] for a, b in itertools.pairwise(calls)]
    assert len(gaps) == 4 and all(g >= 0.2 for g in gaps), gaps
    assert gaps[-1] > gaps[0]  # the pause grows while the agent stays silent


def test_parallel_waits_keep_at_most_two_agent_calls_in_flight(tmp_path: Path) -> None:
    client = AgentClient(lambda _p, n: NOT_RUNNING if n < 2 else INTERFACES, hold_s=0.15)
    guest_agent = make_agent(tmp_path, client, **{"timeouts.agent": 30})
    found: list[str] = []
    threads = [
        threading.Thread(
            target=lambda v=v: found.append(
                guest_agent.wait_for_address(UpContext(name=f"vm{v}", vmid=v), resource(v))
            )
        )
        for v in range(101, 106)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert found == ["10.0.0.5"] * 5
    assert client.peak_total == agent.AGENT_CALLS_IN_FLIGHT == 2
    assert set(client.peak_per_vm.values()) == {1}


def test_labctl_processes_sharing_a_state_dir_keep_two_agent_calls_in_flight_together(
    tmp_path: Path,
) -> None:
    # each GuestAgent stands for one `labctl up` process: its own client, cluster and locks
    client = AgentClient(lambda _p, n: NOT_RUNNING if n < 2 else INTERFACES, hold_s=0.15)
    agents = [make_agent(tmp_path, client, **{"timeouts.agent": 30}) for _ in range(4)]
    found: list[str] = []
    threads = [
        threading.Thread(
            target=lambda a=a, v=v: found.append(
                a.wait_for_address(UpContext(name=f"vm{v}", vmid=v), resource(v))
            )
        )
        for a, v in zip(agents, range(101, 105), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert found == ["10.0.0.5"] * 4
    assert client.peak_total == 2


def test_agent_calls_to_two_nodes_have_two_slots_each(tmp_path: Path) -> None:
    client = AgentClient(lambda _p, _n: INTERFACES, hold_s=0.3)
    agents = [make_agent(tmp_path, client) for _ in range(4)]
    nodes = ["pve", "pve", "pve2", "pve2"]
    threads = [
        threading.Thread(target=a.address, args=(replace(resource(100 + i), node=node),))
        for i, (a, node) in enumerate(zip(agents, nodes, strict=True))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert client.peak_total == 4


def test_listing_many_vms_keeps_at_most_two_agent_calls_in_flight(tmp_path: Path) -> None:
    client = AgentClient(lambda _p, _n: NOT_RUNNING, hold_s=0.2)
    guest_agent = make_agent(tmp_path, client)
    threads = [
        threading.Thread(target=guest_agent.address, args=(resource(v),)) for v in range(101, 107)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert client.peak_total == 2 and len(client.calls) == 6


def test_host_key_is_pinned_once_it_exists_and_two_reads_agree(tmp_path: Path) -> None:
    # cloud-init has not written the key yet, then the image's key is replaced by the new one
    script = [
        NO_FILE,
        NO_FILE,
        {"content": KEY_A + "\n"},
        {"content": KEY_B + "\n"},
        {"content": KEY_B + "\n"},
    ]
    client = AgentClient(lambda _p, n: script[min(n, len(script) - 1)])
    guest_agent = make_agent(tmp_path, client)
    entry = guest_agent.pin_host_key(resource(101), "10.0.0.5")
    assert entry.split()[1:3] == KEY_B.split()[:2]
    assert "10.0.0.5" in pinned_hosts(guest_agent.known_hosts)
    assert KEY_A.split()[1] not in guest_agent.known_hosts.read_text()
    assert len(client.calls) == 5
    starts = sorted(c[1] for c in client.calls)
    assert starts[-1] - starts[-2] >= agent.KEY_SETTLE_S * 0.9


def test_a_host_key_that_never_appears_fails_within_the_agent_timeout(tmp_path: Path) -> None:
    client = AgentClient(lambda _p, _n: NO_FILE)
    guest_agent = make_agent(tmp_path, client, **{"timeouts.agent": 2})
    started = time.monotonic()
    with pytest.raises(GuestError, match=r"no stable key within 2s \(.*failed to open file"):
        guest_agent.pin_host_key(resource(101), "10.0.0.5")
    assert 1.9 < time.monotonic() - started < 4


@pytest.mark.parametrize("message", ["No QEMU guest agent configured", "VM 101 is not running"])
def test_key_read_errors_that_retries_cannot_fix_fail_at_once(tmp_path: Path, message: str) -> None:
    client = AgentClient(lambda _p, _n: ProxmoxAPIError(f"Proxmox: {message}", status=500))
    guest_agent = make_agent(tmp_path, client)
    with pytest.raises(GuestError, match=message):
        guest_agent.pin_host_key(resource(101), "10.0.0.5")
    assert len(client.calls) == 1


def test_new_vms_get_ciupgrade_off_unless_the_lab_file_turns_it_on(tmp_path: Path) -> None:
    class ConfigClient(AgentClient):
        def get(self, path: str, **params: Any) -> Any:
            return {"digest": "d", "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0"}

    for values, expected in (({}, 0), ({"template.ciupgrade": True}, 1)):
        client = ConfigClient(lambda _p, _n: None)
        cloner = Cloner(make_cluster(client, **values), LocalLocks(tmp_path / "locks"))
        ctx = UpContext(name="vm101", vmid=101, node="pve")
        cloner.configure_new(ctx, Shape(cores=2, memory_mib=2048), KEY_A, "ip=dhcp", None)
        (path, params), *_ = client.params
        assert path == "nodes/pve/qemu/101/config"
        assert int(params["ciupgrade"]) == expected


def result(code: int, out: str, err: str = "") -> CommandResult:
    return CommandResult("cloud-init status --wait --long", code, out, err, 3.5)


def test_cloud_init_status_is_read_like_its_exit_codes() -> None:
    done = parse_status(
        result(
            0,
            "....status: done\nextended_status: done\n"
            "boot_status_code: enabled-by-generator\n"
            "detail: DataSourceNoCloud\nerrors: []\n"
            "recoverable_errors: {}\n",
        )
    )
    assert (done.state, done.finished_cleanly, done.waited_s) == ("done", True, 3.5)
    degraded = parse_status(
        result(
            2,
            "status: done\nextended_status: degraded done\n"
            "errors: []\nrecoverable_errors:\nWARNING:\n"
            "\t- Package upgrade failed\n",
        )
    )
    assert (degraded.state, degraded.detail) == ("degraded", "Package upgrade failed")
    error = parse_status(
        result(
            1,
            "..status: error\nextended_status: error - done\nerrors:\n"
            "\t- boom\nrecoverable_errors: {}\n",
        )
    )
    assert (error.state, error.detail, error.finished_cleanly) == ("error", "boom", False)
    absent = parse_status(result(127, "", "bash: line 1: cloud-init: command not found"))
    assert (absent.state, absent.finished_cleanly) == ("absent", True)
    assert parse_status(result(0, "status: disabled\n")).state == "disabled"
    assert parse_status(result(255, "", "Traceback ...\nKeyError: 'v1'")).state == "unknown"
