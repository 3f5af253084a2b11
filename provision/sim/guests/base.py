"""The seam between the simulated Proxmox VE and the machines that back its VMs.

The simulator's models call a GuestBackend; the backend makes (or fakes) the guest.
`ContainerBackend` (systemd-nspawn containers) is the real one; `NoGuestBackend` runs the
simulator API-only when guests cannot be booted on this host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GuestSpec:
    """What the backend needs to boot a VM's guest, taken from the VM's *current* config."""

    vmid: int
    name: str  # becomes the guest hostname
    cores: int  # sockets * cores (or vcpus)
    memory_mib: int
    ciuser: str | None = None
    sshkeys: tuple[str, ...] = ()  # decoded public key lines (the VM config stores them urlencoded)
    ipconfig0: str | None = None  # raw PVE property string, e.g. "ip=dhcp"
    macaddr: str = "bc:24:11:00:00:00"
    # cloud-init user-data's `package_upgrade: true`, which PVE writes unless ciupgrade=0
    # (the simulator's models set it from the config; off here so tests of the backend alone
    # do not pay for the simulated upgrade)
    package_upgrade: bool = False
    # seconds from a clone's first boot until cloud-init's ssh module has written host keys
    ssh_keys_delay: float = 0.0
    # seconds the simulated package upgrade works (CPU, dpkg lock) when package_upgrade is set
    upgrade_seconds: float = 6.0
    extra: dict[str, Any] = field(default_factory=dict)


class GuestBackend(Protocol):
    """Disk + power + guest-agent operations for the VMs of one simulator instance."""

    def describe(self) -> str:
        """One line for the simulator's startup banner (what guests are, or why there are none)."""
        ...

    def clone_disk(self, source_vmid: int | None, new_vmid: int, linked: bool) -> None:
        """Give new_vmid a root filesystem: overlay of the source (linked) or a copy (full).

        source_vmid None (or a template without a disk of its own) means the base template rootfs.
        """
        ...

    def delete_disk(self, vmid: int) -> None: ...

    def start(self, spec: GuestSpec) -> None:
        """Boot the guest with that shape; returns once the boot is launched (not finished)."""
        ...

    def shutdown(self, vmid: int, timeout_s: float) -> bool:
        """Graceful power-off; True if the guest stopped within timeout_s."""
        ...

    def stop(self, vmid: int) -> None:
        """Hard stop (like pulling the plug)."""
        ...

    def reshape(self, vmid: int, cores: int, memory_mib: int) -> None:
        """Apply a new shape to a running guest (what PVE hot-plugs)."""
        ...

    def is_running(self, vmid: int) -> bool: ...

    def agent_ping(self, vmid: int) -> bool:
        """True once the guest is up far enough that a qemu-guest-agent would answer (early in
        boot: not necessarily with sshd up or cloud-init's host keys written yet)."""
        ...

    def network_interfaces(self, vmid: int) -> list[dict[str, Any]]:
        """QGA `guest-network-get-interfaces` result (lo + eth0 with the guest's address)."""
        ...

    def file_read(self, vmid: int, path: str) -> bytes:
        """QGA `guest-file-read`: the file's bytes inside the guest (raises FileNotFoundError)."""
        ...

    def usage(self, vmid: int) -> tuple[float, int]:
        """(cpu fraction 0..cores, memory bytes in use) for status/current."""
        ...

    def close(self) -> None:
        """Stop every guest this backend started; free netns, mounts, cgroups."""
        ...
