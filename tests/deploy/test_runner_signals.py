"""A deploy leaves the process's signal handlers alone; Ctrl-C (and SIGTERM, which labctl turns
into Ctrl-C) stops the playbook through ansible-runner's cancel_callback."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from provision.deploy import DeployHost, DeployOptions, SshSettings, deploy
from provision.errors import DeployError, Interrupted


def test_sigint_and_sigterm_handlers_are_the_callers_again_after_a_deploy(
    tmp_path: Path,
) -> None:
    def mine(signum: int, frame: FrameType | None) -> None:  # pragma: no cover - never called
        raise AssertionError("not expected to run")

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, mine)
    signal.signal(signal.SIGTERM, mine)
    try:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text("")
        # Nothing listens on port 9 of loopback: the play fails at once, unreachable.
        host = DeployHost(name="nowhere", address="127.0.0.1", user="nobody", port=9)
        ssh = SshSettings(
            private_key=tmp_path / "id_ed25519", known_hosts=known_hosts, connect_timeout_s=5
        )
        with pytest.raises(DeployError, match="unreachable on nowhere"):
            deploy(
                [host], ssh, state_dir=tmp_path / "state", inventory_out=tmp_path / "inventory.yml"
            )
        assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_deploy_sets_no_signal_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed: list[int] = []
    real_signal = signal.signal

    def recording_signal(signum: int, handler: object) -> object:
        installed.append(signum)
        return real_signal(signum, handler)  # type: ignore[arg-type]

    monkeypatch.setattr(signal, "signal", recording_signal)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    host = DeployHost(name="nowhere", address="127.0.0.1", user="nobody", port=9)
    ssh = SshSettings(
        private_key=tmp_path / "id_ed25519", known_hosts=known_hosts, connect_timeout_s=5
    )
    with pytest.raises(DeployError, match="unreachable on nowhere"):
        deploy([host], ssh, state_dir=tmp_path / "state", inventory_out=tmp_path / "inventory.yml")
    assert installed == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_a_deploy_stops_the_playbook_and_raises_interrupted(
    tmp_path: Path, signum: int
) -> None:
    from provision.cli.signals import interrupt_on_sigterm

    # An "SSH server" that accepts and never answers: the play can only end by being cancelled.
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    host = DeployHost(name="silent", address="127.0.0.1", user="nobody", port=port)
    ssh = SshSettings(private_key=tmp_path / "id_ed25519", known_hosts=known_hosts)
    restore = interrupt_on_sigterm()  # as the labctl group does for every command
    # The signal comes once ansible-playbook runs (not after a fixed time: on a busy machine the
    # inventory may still be being written, and Ctrl-C there is a plain KeyboardInterrupt).
    ctrl_c = threading.Thread(target=_signal_once_playbook_runs, args=(signum,), daemon=True)
    ctrl_c.start()
    try:
        with pytest.raises(Interrupted, match="deploy interrupted; artifacts: "):
            deploy(
                [host],
                ssh,
                state_dir=tmp_path / "state",
                options=DeployOptions(timeout_s=60),
                inventory_out=tmp_path / "inventory.yml",
            )
    finally:
        ctrl_c.join(timeout=60)
        restore()
        silent.close()


def _signal_once_playbook_runs(signum: int, timeout_s: float = 60.0) -> None:
    """Send signum to this process as soon as one of its children is ansible-playbook."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in Path("/proc").glob("[0-9]*"):
            try:
                ppid = int((child / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == os.getpid() and b"ansible-playbook" in (child / "cmdline").read_bytes():
                    time.sleep(0.5)  # let it get going, as a user's Ctrl-C would
                    os.kill(os.getpid(), signum)
                    return
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.05)
