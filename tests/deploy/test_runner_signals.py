"""A deploy leaves the caller's Ctrl-C handling as it found it (ansible-runner does not)."""

from __future__ import annotations

import os
import signal
import socket
import threading
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
        ssh = SshSettings(private_key=tmp_path / "id_ed25519", known_hosts=known_hosts,
                          connect_timeout_s=5)
        with pytest.raises(DeployError, match="unreachable on nowhere"):
            deploy([host], ssh, state_dir=tmp_path / "state",
                   inventory_out=tmp_path / "inventory.yml")
        assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_ctrl_c_during_a_deploy_stops_the_playbook_and_raises_interrupted(tmp_path: Path) -> None:
    # An "SSH server" that accepts and never answers: the play can only end by being cancelled.
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    host = DeployHost(name="silent", address="127.0.0.1", user="nobody", port=port)
    ssh = SshSettings(private_key=tmp_path / "id_ed25519", known_hosts=known_hosts)
    ctrl_c = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    ctrl_c.start()
    try:
        with pytest.raises(Interrupted, match="deploy interrupted; artifacts: "):
            deploy([host], ssh, state_dir=tmp_path / "state", options=DeployOptions(timeout_s=60),
                   inventory_out=tmp_path / "inventory.yml")
    finally:
        ctrl_c.cancel()
        silent.close()
