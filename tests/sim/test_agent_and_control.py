"""Guest agent errors and results, fault injection and settings through the control API."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import proxmoxer
import pytest

from provision.sim.guests.null import NoGuestBackend
from provision.sim.server import SimServer
from tests.support.sim_api import FAST, Raw, changed_settings, token_api, wait

NewVm = Callable[..., int]


def agent_error(call: Callable[[], Any]) -> str:
    with pytest.raises(proxmoxer.ResourceException) as caught:
        call()
    assert caught.value.status_code == 500
    return str(caught.value.content)


def wait_for_agent(vm: Any) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            vm.agent.ping.post()
            return
        except proxmoxer.ResourceException:
            assert time.monotonic() < deadline, "agent never came up"
            time.sleep(0.05)


def test_without_an_agent_key_the_agent_is_not_configured(prox: Any, new_vm: NewVm) -> None:
    vm = prox.nodes("pve").qemu(new_vm())
    vm.config.put(delete="agent")
    wait(prox, vm.status.start.post())
    assert agent_error(lambda: vm.agent.ping.post()) == "No QEMU guest agent configured"


def test_a_stopped_vm_has_no_agent(prox: Any, new_vm: NewVm) -> None:
    vmid = new_vm()
    vm = prox.nodes("pve").qemu(vmid)
    assert agent_error(lambda: vm.agent("network-get-interfaces").get()) == (
        f"VM {vmid} is not running"
    )


def test_the_agent_answers_only_some_time_after_start(prox: Any, raw: Raw, new_vm: NewVm) -> None:
    vm = prox.nodes("pve").qemu(new_vm())
    with changed_settings(raw, agent_delay=1.5):
        wait(prox, vm.status.start.post())
        assert agent_error(lambda: vm.agent.ping.post()) == "QEMU guest agent is not running"
    wait_for_agent(vm)
    assert vm.agent.ping.post() == {"result": {}}


def test_network_interfaces_have_the_qga_shape(prox: Any, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    wait_for_agent(vm)
    interfaces = vm.agent("network-get-interfaces").get()["result"]
    eth0 = next(i for i in interfaces if i["name"] == "eth0")
    mac = vm.config.get()["net0"].split(",")[0].split("=")[1].lower()
    assert eth0["hardware-address"] == mac
    assert {
        "ip-address": "192.0.2." + str(running_vm % 250 + 1),
        "ip-address-type": "ipv4",
        "prefix": 24,
    } in eth0["ip-addresses"]


def test_file_read_of_a_missing_file_is_an_agent_error(prox: Any, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    wait_for_agent(vm)
    message = agent_error(lambda: vm.agent("file-read").get(file="/etc/nothing"))
    assert message == "Agent error: failed to open file '/etc/nothing': No such file or directory"


def test_an_agent_fault_keeps_the_agent_silent(prox: Any, raw: Raw, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    wait_for_agent(vm)
    raw("POST", "/_sim/faults", json={"kind": "agent", "vmid": running_vm})
    assert agent_error(lambda: vm.agent.ping.post()) == "QEMU guest agent is not running"


class FileBackend(NoGuestBackend):
    """A test double that has one file inside every guest."""

    def file_read(self, vmid: int, path: str) -> bytes:
        if path == "/etc/ssh/ssh_host_ed25519_key.pub":
            return f"ssh-ed25519 AAAAC3Nz vm{vmid}\n".encode()
        raise FileNotFoundError(path)


def test_file_read_returns_content_and_bytes_read(tmp_path: Path) -> None:
    with SimServer(tmp_path, backend=FileBackend(), **(FAST | {"agent_delay": 0.0})) as server:
        prox = token_api(server)
        vmid = int(prox.cluster.nextid.get())
        wait(prox, prox.nodes("pve").qemu(9000).clone.post(newid=vmid))
        vm = prox.nodes("pve").qemu(vmid)
        wait(prox, vm.status.start.post())
        result = vm.agent("file-read").get(file="/etc/ssh/ssh_host_ed25519_key.pub")
        expected = f"ssh-ed25519 AAAAC3Nz vm{vmid}\n"
        assert result == {"content": expected, "bytes-read": len(expected)}


# --- control API ----------------------------------------------------------------------------


def test_http_faults_answer_the_next_matching_calls(prox: Any, raw: Raw) -> None:
    fault = {
        "kind": "http",
        "status": 596,
        "message": "Connection timed out",
        "times": 2,
        "method": "GET",
        "path": "^/cluster/nextid$",
    }
    assert raw("POST", "/_sim/faults", json=fault).status_code == 200
    for _ in range(2):
        with pytest.raises(proxmoxer.ResourceException) as caught:
            prox.cluster.nextid.get()
        assert (caught.value.status_code, caught.value.content) == (596, "Connection timed out")
    assert int(prox.cluster.nextid.get()) >= 100


def test_task_faults_fail_the_next_task_of_that_type(prox: Any, raw: Raw) -> None:
    raw(
        "POST",
        "/_sim/faults",
        json={"kind": "task", "type": "qmclone", "message": "clone failed: disk full"},
    )
    vmid = int(prox.cluster.nextid.get())
    status = wait(prox, prox.nodes("pve").qemu(9000).clone.post(newid=vmid))
    assert status["exitstatus"] == "clone failed: disk full"
    assert vmid not in [v["vmid"] for v in prox.nodes("pve").qemu.get()]


def test_settings_can_be_read_and_changed(raw: Raw) -> None:
    before = raw("GET", "/_sim/settings").json()["data"]
    changed = raw("POST", "/_sim/settings", json={"task_durations": {"qmstop": 0.07}})
    assert changed.json()["data"]["task_durations"]["qmstop"] == 0.07
    assert changed.json()["data"]["agent_delay"] == before["agent_delay"]
    refused = raw("POST", "/_sim/settings", json={"agent_dealy": 1})
    assert (refused.status_code, refused.reason) == (400, "unknown settings: agent_dealy")


def test_the_control_api_needs_authentication(sim: SimServer) -> None:
    response = Raw(sim, authenticated=False)("GET", "/_sim/faults")
    assert (response.status_code, response.reason) == (401, "No ticket")
