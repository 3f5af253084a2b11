"""What the simulator asks of its GuestBackend: shapes from the *current* config, decoded keys."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from provision.sim.guests.base import GuestSpec
from provision.sim.server import SimServer
from tests.support.recording_backend import RecordingBackend
from tests.support.sim_api import FAST, token_api, wait

KEYS = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx/k+abc= me@laptop\nssh-rsa AAAAB3NzaC1yc2E= ops"


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
