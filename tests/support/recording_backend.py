"""A guest backend that records every call the simulator makes on it (tests/sim)."""

from __future__ import annotations

from typing import Any

from provision.sim.guests.base import GuestSpec
from provision.sim.guests.null import NoGuestBackend


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
