"""Reaching guests over SSH with pinned host keys.

paramiko is imported only by `provision.guest.ssh`, and only when an SSH function is first used,
so importing GuestAddress or the known_hosts helpers stays cheap (`labctl --help` imports little).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provision.guest.known_hosts import forget_host_key, pin_host_key, pinned_hosts
from provision.guest.types import CommandResult, GuestAddress

if TYPE_CHECKING:
    from provision.guest.ssh import SshSession, connect, wait_for_ssh

_LAZY = {"SshSession", "connect", "wait_for_ssh"}

__all__ = [
    "CommandResult",
    "GuestAddress",
    "SshSession",
    "connect",
    "forget_host_key",
    "pin_host_key",
    "pinned_hosts",
    "wait_for_ssh",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from provision.guest import ssh

        return getattr(ssh, name)
    raise AttributeError(name)
