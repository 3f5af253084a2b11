"""Errors of the container guest backend (kept apart from labctl's error tree: sim models PVE)."""

from __future__ import annotations


class GuestsUnavailable(RuntimeError):
    """This host cannot boot container guests; the simulator should run API-only.

    The message is one line saying why (not root, no systemd-nspawn, no overlayfs, ...).
    """


class GuestBackendError(RuntimeError):
    """An operation on one guest failed (the simulator turns it into a failed PVE task)."""
