"""Real systemd-nspawn guests of the simulator's ContainerBackend: specs and pinned SSH sessions
(tests/sim_guests)."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import paramiko

from provision.sim.guests.base import GuestSpec
from provision.sim.guests.container import ContainerBackend

_vmids = iter(range(200, 300))


def next_vmid() -> int:
    """A VMID no other guest of this session has had (200-299)."""
    return next(_vmids)


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


def guests_skip_reason() -> str | None:
    """Why container guests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "guest tests need root (netns, overlayfs, cgroups)"
    return None


def system_ssh(key: Path, known_hosts: Path, target: str, command: str) -> list[str]:
    """The system's ssh with labctl's key and its pinned host keys (what `up` prints)."""
    return [
        "ssh",
        "-i",
        str(key),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        target,
        command,
    ]
