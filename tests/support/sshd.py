"""A real OpenSSH server on 127.0.0.1 (needs root), its host key pinned for provision.guest."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.guest import GuestAddress, pin_host_key
from tests.support.net import free_port


@dataclass
class LocalSshd:
    """A real /usr/sbin/sshd on 127.0.0.1 (as root), its host key pinned for provision.guest."""

    address: GuestAddress
    process: subprocess.Popen[bytes]
    config: Path

    def session_pids(self) -> list[int]:
        """sshd processes serving sessions (children of the listener)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]


def start_sshd(root: Path, extra_config: str = "") -> LocalSshd:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if os.geteuid() != 0 or not os.path.exists(sshd):
        pytest.skip("needs root and OpenSSH's sshd")
    root.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    host_key, user_key = root / "host_ed25519", root / "user_ed25519"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (root / "authorized_keys").write_text(user_key.with_suffix(".pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"{extra_config}"
    )
    process = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("sshd did not start") from None
            time.sleep(0.05)
    known_hosts = root / "known_hosts"
    pin_host_key(known_hosts, "127.0.0.1", host_key.with_suffix(".pub").read_text(), port=port)
    address = GuestAddress(
        host="127.0.0.1",
        user="root",
        key_path=user_key,
        known_hosts=known_hosts,
        port=port,
        name="probe-test",
    )
    return LocalSshd(address=address, process=process, config=config)


def stop_sshd(sshd: LocalSshd) -> None:
    sshd.process.terminate()
    try:
        sshd.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        sshd.process.kill()
        sshd.process.wait()
