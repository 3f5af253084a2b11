"""Fixtures for the real guest backend: one ContainerBackend per session on lgbr20/10.213.20.0/24.

These tests boot real systemd-nspawn guests; they need root, systemd-nspawn, overlayfs, cgroup v1
and a cached (or buildable, ~1 min) Debian template. Elsewhere they skip, saying why.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from provision.sim.guests.base import GuestSpec
from provision.sim.guests.container import ContainerBackend
from provision.sim.guests.errors import GuestsUnavailable

BRIDGE, SUBNET, PREFIX = "lgbr20", "10.213.20.0/24", "lg20"
# A second, independent backend for the cleanup tests.
BRIDGE2, SUBNET2, PREFIX2 = "lgbr21", "10.213.21.0/24", "lg21"


def guests_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "guest tests need root (netns, overlayfs, cgroups)"
    return None


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
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("keys") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerBackend]:
    reason = guests_skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        b = ContainerBackend(
            tmp_path_factory.mktemp("guest-state"), bridge=BRIDGE, subnet=SUBNET, prefix=PREFIX,
            mem_scale=0.125,
        )
    except GuestsUnavailable as exc:
        pytest.skip(f"guests unavailable: {exc}")
    yield b
    b.close()


_next_vmid = iter(range(200, 300))


@dataclass
class Booted:
    backend: ContainerBackend
    vmid: int
    spec: GuestSpec
    key: Path

    @property
    def ip(self) -> str:
        ip = self.backend.guest_ip(self.vmid)
        assert ip is not None
        return ip

    def ssh(self, command: str, timeout: float = 30.0) -> tuple[int, str, str]:
        return ssh_run(
            self.backend, self.vmid, self.spec.ciuser or "debian", self.key, command, timeout
        )


def make_spec(vmid: int, key: Path, **overrides: object) -> GuestSpec:
    fields: dict[str, object] = {
        "vmid": vmid,
        "name": f"guest{vmid}",
        "cores": 2,
        "memory_mib": 2048,
        "ciuser": "labuser",
        "sshkeys": (key.with_suffix(".pub").read_text().strip(),),
        "ipconfig0": "ip=dhcp",
        "macaddr": f"BC:24:11:00:{vmid // 256:02X}:{vmid % 256:02X}",
    }
    fields.update(overrides)
    return GuestSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
def boot(backend: ContainerBackend, ssh_key: Path) -> Iterator[object]:
    """boot(**spec_overrides) -> Booted: a fresh linked clone, started and answering SSH."""
    started: list[int] = []

    def _boot(linked: bool = True, source: int | None = None, **overrides: object) -> Booted:
        vmid = next(_next_vmid)
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


def pinned_client(backend: ContainerBackend, vmid: int) -> paramiko.SSHClient:
    """An SSHClient that trusts exactly the host key read through the guest agent (file_read)."""
    ip = backend.guest_ip(vmid)
    kind, blob = backend.file_read(vmid, "/etc/ssh/ssh_host_ed25519_key.pub").split()[:2]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(
        str(ip), kind.decode(), paramiko.Ed25519Key(data=base64.b64decode(blob))
    )
    return client


def ssh_run(
    backend: ContainerBackend, vmid: int, user: str, key: Path, command: str, timeout: float
) -> tuple[int, str, str]:
    client = pinned_client(backend, vmid)
    try:
        client.connect(
            str(backend.guest_ip(vmid)),
            username=user,
            pkey=paramiko.Ed25519Key.from_private_key_file(str(key)),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
        )
        _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode()
        err = stderr.read().decode()
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()
