"""Fixtures for the real guest backend: one ContainerBackend per session on lgbr20/10.213.20.0/24.

These tests boot real systemd-nspawn guests; they need root, systemd-nspawn, overlayfs, cgroup v1
and a cached (or buildable, ~1 min) Debian template. Elsewhere they skip, saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.sim.guests.container import ContainerBackend
from provision.sim.guests.errors import GuestsUnavailable
from tests.support.guests import (
    Booted,
    guests_skip_reason,
    make_spec,
    next_vmid,
    pinned_client,
)

BRIDGE, SUBNET, PREFIX = "lgbr20", "10.213.20.0/24", "lg20"
# A second, independent backend for the cleanup tests.
BRIDGE2, SUBNET2, PREFIX2 = "lgbr21", "10.213.21.0/24", "lg21"


@pytest.fixture
def root_only() -> None:
    reason = guests_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def spec_for(ssh_key: Path) -> object:
    """spec_for(vmid, **overrides) -> GuestSpec with the session's test key."""
    return lambda vmid, **overrides: make_spec(vmid, ssh_key, **overrides)


@pytest.fixture
def pinned() -> object:
    """pinned(backend, vmid) -> paramiko client pinned to the key read through file_read."""
    return pinned_client


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerBackend]:
    reason = guests_skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        b = ContainerBackend(
            tmp_path_factory.mktemp("guest-state"),
            bridge=BRIDGE,
            subnet=SUBNET,
            prefix=PREFIX,
            mem_scale=0.125,
        )
    except GuestsUnavailable as exc:
        pytest.skip(f"guests unavailable: {exc}")
    yield b
    b.close()


@pytest.fixture
def boot(backend: ContainerBackend, ssh_key: Path) -> Iterator[object]:
    """boot(**spec_overrides) -> Booted: a fresh linked clone, started and answering SSH."""
    started: list[int] = []

    def _boot(linked: bool = True, source: int | None = None, **overrides: object) -> Booted:
        vmid = next_vmid()
        spec = make_spec(vmid, ssh_key, **overrides)
        backend.clone_disk(source, vmid, linked=linked)
        backend.start(spec)
        started.append(vmid)
        backend.wait_ready(vmid, timeout_s=60)
        return Booted(backend, vmid, spec, ssh_key)

    yield _boot
    for vmid in reversed(started):
        backend.stop(vmid)
        backend.delete_disk(vmid)
