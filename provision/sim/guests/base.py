"""The seam between the simulated Proxmox VE and the machines that back its VMs.

The simulator's models call a GuestBackend; the backend makes (or fakes) the guest.
`ContainerBackend` (systemd-nspawn containers) is the real one; `NoGuestBackend` runs the
simulator API-only when guests cannot be booted on this host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# What systemd printed when the 20th of 20 guests could not get an inotify instance (the
# default init_failure of the simulator's boot_failure fault): PID 1 gives up, and in a container
# it exits instead of freezing, so the container ends.
SYSTEMD_INOTIFY_FAILURE = (
    "Failed to create control group inotify object: Too many open files",
    "Failed to allocate manager object: Too many open files",
    "[!!!!!!] Failed to allocate manager object.",
    "Exiting PID 1...",
)


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
    # fault injection: the guest's init prints these lines on its console and exits at boot
    init_failure: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GuestExit:
    """A guest that stopped on its own: its init exited, crashed or was killed (not a stop,
    shutdown or close asked of the backend). For the simulator, the VM's QEMU process ended."""

    vmid: int
    exit_code: int  # of the guest's container manager (systemd-nspawn), 0 after a poweroff
    console_tail: tuple[str, ...]  # the last lines its console printed in this boot
    console_log: str = ""  # where the whole console is kept ("" when nothing is kept)
    at: float = 0.0  # time.time() of the exit

    def to_json(self) -> dict[str, Any]:
        return {
            "vmid": self.vmid,
            "exit_code": self.exit_code,
            "console_tail": list(self.console_tail),
            "console_log": self.console_log,
            "time": self.at,
        }


ExitListener = Callable[[GuestExit], None]


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
        """Boot the guest with that shape; returns once its init runs (the boot is not finished).

        Raises HostCapacityError when the host cannot hold one more guest, GuestExited when the
        guest's init exited before it was up (like QEMU exiting during `vm_start`).
        """
        ...

    def watch_exits(self, listener: ExitListener) -> None:
        """Call listener(GuestExit) each time a guest stops on its own (not asked to).

        The listener runs in the backend's thread that saw the exit, before the guest's
        resources are free for a new start of the same VM; it must be quick and must not call
        back into the backend.
        """
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
