"""What the simulator asks of its GuestBackend: shapes from the *current* config, decoded keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from provision.sim.guests.base import GuestSpec
from provision.sim.guests.null import NoGuestBackend
from provision.sim.server import SimServer
from tests.sim.conftest import FAST, token_api, wait

KEYS = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx/k+abc= me@laptop\nssh-rsa AAAAB3NzaC1yc2E= ops"


class RecordingBackend(NoGuestBackend):
    """A test double that records every call on top of NoGuestBackend's behaviour."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []

    def clone_disk(self, source_vmid: int | None, new_vmid: int, linked: bool) -> None:
        self.calls.append(("clone_disk", source_vmid, new_vmid, linked))

    def delete_disk(self, vmid: int) -> None:
        self.calls.append(("delete_disk", vmid))

    def start(self, spec: GuestSpec) -> None:
        self.calls.append(("start", spec))
        super().start(spec)

    def shutdown(self, vmid: int, timeout_s: float) -> bool:
        self.calls.append(("shutdown", vmid, timeout_s))
        return super().shutdown(vmid, timeout_s)

    def stop(self, vmid: int) -> None:
        self.calls.append(("stop", vmid))
        super().stop(vmid)

    def reshape(self, vmid: int, cores: int, memory_mib: int) -> None:
        self.calls.append(("reshape", vmid, cores, memory_mib))
        super().reshape(vmid, cores, memory_mib)


def test_the_backend_sees_clone_start_reshape_shutdown_and_delete(tmp_path: Path) -> None:
    backend = RecordingBackend()
    with SimServer(tmp_path, backend=backend, **FAST) as server:
        prox = token_api(server)
        vmid = int(prox.cluster.nextid.get())
        wait(prox, prox.nodes("pve").qemu(9000).clone.post(newid=vmid, name="gemma"))
        vm = prox.nodes("pve").qemu(vmid)
        vm.config.put(
            cores=3,
            memory=3072,
            ciuser="ops",
            sshkeys=quote(KEYS, safe=""),
            ipconfig0="ip=10.0.0.5/24,gw=10.0.0.1",
            hotplug="network,disk,cpu",
        )
        wait(prox, vm.status.start.post())
        vm.config.put(vcpus=2)
        wait(prox, vm.status.shutdown.post(timeout=7))
        wait(prox, vm.delete())

    names = [call[0] for call in backend.calls]
    assert names == ["clone_disk", "start", "reshape", "shutdown", "delete_disk"]
    assert backend.calls[0] == ("clone_disk", 9000, vmid, True)
    spec: GuestSpec = backend.calls[1][1]
    assert (spec.vmid, spec.name, spec.cores, spec.memory_mib) == (vmid, "gemma", 3, 3072)
    assert spec.sshkeys == tuple(KEYS.splitlines())
    assert (spec.ciuser, spec.ipconfig0) == ("ops", "ip=10.0.0.5/24,gw=10.0.0.1")
    assert spec.macaddr.startswith("bc:24:11:") and spec.macaddr == spec.macaddr.lower()
    assert backend.calls[2] == ("reshape", vmid, 2, 3072)
    assert backend.calls[3] == ("shutdown", vmid, 7.0)
    assert backend.calls[4] == ("delete_disk", vmid)
