"""Errors of the container guest backend (kept apart from labctl's error tree: sim models PVE)."""

from __future__ import annotations

from provision.sim.guests.base import GuestExit


class GuestsUnavailable(RuntimeError):
    """This host cannot boot container guests; the simulator should run API-only.

    The message is one line saying why (not root, no systemd-nspawn, no overlayfs, ...).
    """


class GuestBackendError(RuntimeError):
    """An operation on one guest failed (the simulator turns it into a failed PVE task)."""


class HostCapacityError(GuestBackendError):
    """The host cannot honour one more guest; the message names the limit and the fix."""


class GuestExited(GuestBackendError):
    """The guest's init exited while the backend was starting it (QEMU exiting at start)."""

    def __init__(self, exit: GuestExit) -> None:
        super().__init__(f"VM {exit.vmid}: guest exited with code {exit.exit_code} at boot")
        self.exit = exit
