"""What the `labctl` group sets up for every command: -v/-vv logging through the secret
redactor, and SIGTERM handled like Ctrl-C; both undone when the command ends."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click
import pytest

from provision.cli import cli, main
from provision.errors import ExitCode, ProxmoxError

SECRET = "s3cr3t-token-value-1234"
LAB = f"""
[proxmox]
host = "127.0.0.1"
token_id = "root@pam!labctl"
token_secret = "{SECRET}"
fingerprint = "{":".join(["AB"] * 32)}"
"""


@pytest.fixture()
def lab_file(tmp_path: Path) -> Path:
    path = tmp_path / "labctl.toml"
    path.write_text(LAB)
    path.chmod(0o600)
    return path


def _api_logs_the_secret_then_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every PVE call writes a debug line holding the token secret, as an HTTP library's
    debug output could, then fails: a secret that reaches a log message."""
    from provision.pve.client import PveClient

    def request(self: PveClient, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        logging.getLogger("urllib3.connectionpool").debug(
            "%s /api2/json/%s Authorization: PVEAPIToken=root@pam!labctl=%s", method, path, SECRET
        )
        logging.getLogger("labctl").info("labctl's own line naming %s", SECRET)
        raise ProxmoxError("connection refused")

    monkeypatch.setattr(PveClient, "request", request)


def test_probe_at_vv_logs_on_stderr_with_the_lab_files_secret_redacted(
    lab_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _api_logs_the_secret_then_fails(monkeypatch)
    code = main(
        ["--config", str(lab_file), "--state-dir", str(tmp_path / "state"), "-vv", "probe", "gemma"]
    )
    err = capsys.readouterr().err
    assert code == ExitCode.PROXMOX, err
    assert "DEBUG urllib3.connectionpool: GET /api2/json/cluster/resources" in err
    assert "INFO labctl: labctl's own line naming ********" in err
    assert SECRET not in err


def test_results_at_v_logs_labctl_lines_but_not_http_debug(
    lab_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from provision import store

    def listing(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        logging.getLogger("labctl").info("reading the results database")
        logging.getLogger("urllib3").debug("not shown at -v")
        return []

    monkeypatch.setattr(store, "kept_runs", listing)
    code = main(
        ["--config", str(lab_file), "--state-dir", str(tmp_path / "state"), "-v", "results"]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "INFO labctl: reading the results database" in err
    assert "not shown" not in err


def test_the_log_handler_is_removed_when_the_command_ends(
    lab_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    labctl_logger = logging.getLogger("labctl")
    before = (list(labctl_logger.handlers), labctl_logger.level, labctl_logger.propagate)
    _api_logs_the_secret_then_fails(monkeypatch)
    main(["--config", str(lab_file), "--state-dir", str(tmp_path / "state"), "-vv", "probe", "x"])
    assert (list(labctl_logger.handlers), labctl_logger.level, labctl_logger.propagate) == before


@pytest.fixture()
def sleepy_command(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A command that sends itself SIGTERM, then waits to be stopped."""
    finished: list[str] = []

    @click.command("sleepy")
    def sleepy() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            finished.append("slept")
        except KeyboardInterrupt:
            finished.append("interrupted")
            raise

    monkeypatch.setitem(cli.commands, "sleepy", sleepy)
    yield finished


def test_sigterm_stops_a_command_like_ctrl_c_and_the_previous_handler_comes_back(
    sleepy_command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)

    saved = signal.signal(signal.SIGTERM, previous)  # never SIG_DFL here: that would end pytest
    try:
        code = main(["sleepy"])
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert code == ExitCode.INTERRUPTED
    assert sleepy_command == ["interrupted"] and calls == []
    assert "aborted" in capsys.readouterr().err  # what Ctrl-C prints
