"""provision.guest against a real OpenSSH sshd on 127.0.0.1 (a temporary host key and user key).

Checks the host-key policy (pinned key accepted, unknown or different key refused: no
trust-on-first-use) and the session API the deploy and probe stages use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.errors import CommandFailed, GuestUnreachable, HostKeyMismatch
from provision.guest import GuestAddress, connect, pin_host_key, wait_for_ssh
from tests.support.reporting import RecordingReporter

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class Sshd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.host_key = keygen(base / "host_ed25519")
        self.user_key = keygen(base / "user_ed25519")
        authorized = base / "authorized_keys"
        authorized.write_text((base / "user_ed25519.pub").read_text())
        authorized.chmod(0o600)
        self.port = free_port()
        config = base / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
            "PermitRootLogin prohibit-password\nLogLevel ERROR\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start")

    def address(self, known_hosts: Path) -> GuestAddress:
        return GuestAddress(
            host="127.0.0.1",
            user="root",
            key_path=self.user_key,
            known_hosts=known_hosts,
            port=self.port,
            name="local",
        )

    def pin(self, known_hosts: Path) -> None:
        pin_host_key(
            known_hosts, "127.0.0.1", (self.base / "host_ed25519.pub").read_text(), port=self.port
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if os.geteuid() != 0 or not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        pytest.skip("needs root, /usr/sbin/sshd and ssh-keygen")
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def test_pinned_host_key_connects_and_runs_commands(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    sshd.pin(known)
    with connect(sshd.address(known)) as session:
        result = session.run("echo out; echo err >&2; exit 3")
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert not result.ok
        assert session.run("cat", stdin=b"piped\n").stdout == "piped\n"
        with pytest.raises(CommandFailed, match="exited 3: err"):
            session.run("echo err >&2; exit 3", check=True)


def test_stream_lines_yields_as_they_come_and_keeps_the_exit_code(
    sshd: Sshd, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    sshd.pin(known)
    with connect(sshd.address(known)) as session:
        lines = list(
            session.stream_lines("for i in 1 2 3; do echo line$i; sleep 0.05; done; exit 4")
        )
        assert lines == ["line1", "line2", "line3"]
        assert session.last_exit_code == 4


def test_unknown_host_is_refused_not_learnt(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(GuestUnreachable, match="no pinned host key"):
        connect(sshd.address(known))
    assert known.read_text() == ""


def test_a_different_host_key_is_a_mismatch(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    other = keygen(tmp_path / "other")
    pin_host_key(known, "127.0.0.1", Path(f"{other}.pub").read_text(), port=sshd.port)
    with pytest.raises(HostKeyMismatch, match="does not match the key pinned"):
        connect(sshd.address(known))


def test_wrong_user_key_is_an_authentication_error(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    sshd.pin(known)
    stranger = keygen(tmp_path / "stranger")
    address = sshd.address(known)
    with pytest.raises(GuestUnreachable, match="key authentication as root"):
        connect(GuestAddress(address.host, address.user, stranger, known, address.port))


def test_wait_for_ssh_returns_once_it_answers(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    sshd.pin(known)
    wait_for_ssh(sshd.address(known), 10, RecordingReporter())


def test_wait_for_ssh_times_out_with_the_last_reason(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    port = free_port()  # nobody listens here
    key = keygen(tmp_path / "k")
    pin_host_key(known, "127.0.0.1", Path(f"{key}.pub").read_text(), port=port)
    reporter = RecordingReporter()
    address = GuestAddress("127.0.0.1", "root", key, known, port=port)
    with pytest.raises(GuestUnreachable, match=r"did not answer within 1\.5s"):
        wait_for_ssh(address, 1.5, reporter, note_every_s=0.5)
    assert any("waiting for SSH" in message for kind, message in reporter.events)
