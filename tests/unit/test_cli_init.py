"""`labctl init` takes the token secret from stdin, a hidden prompt or a command, never argv."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from provision.cli import main
from provision.errors import ExitCode

SECRET = "0b5cure-token-value"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LABCTL_"):
            monkeypatch.delenv(name)


def init(tmp_path: Path, *extra: str) -> int:
    lab_file = tmp_path / "labctl.toml"
    return main(
        [
            "--config",
            str(lab_file),
            "--state-dir",
            str(tmp_path / "state"),
            "init",
            "--host",
            "pve.lan",
            "--token-id",
            "root@pam!labctl",
            "--fingerprint",
            ":".join(["AB"] * 32),
            "--no-check",
            *extra,
        ]
    )


def stdin_of(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def test_secret_from_stdin_is_stored_in_a_private_file_and_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin_of(monkeypatch, SECRET + "\nignored second line\n")
    assert init(tmp_path, "--token-secret-stdin") == ExitCode.OK
    lab_file = tmp_path / "labctl.toml"
    assert f'token_secret = "{SECRET}"' in lab_file.read_text()
    assert lab_file.stat().st_mode & 0o777 == 0o600
    seen = capsys.readouterr()
    assert SECRET not in seen.out + seen.err


def test_empty_stdin_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin_of(monkeypatch, "\n")
    assert init(tmp_path, "--token-secret-stdin") == ExitCode.USAGE
    assert "stdin held no secret" in capsys.readouterr().err
    assert not (tmp_path / "labctl.toml").exists()


def test_secret_command_is_stored_and_the_file_stays_readable(tmp_path: Path) -> None:
    assert init(tmp_path, "--token-secret-cmd", "pass show pve/labctl") == ExitCode.OK
    lab_file = tmp_path / "labctl.toml"
    text = lab_file.read_text()
    assert 'token_secret_cmd = "pass show pve/labctl"' in text
    assert "\ntoken_secret =" not in text
    assert lab_file.stat().st_mode & 0o777 == 0o644


def test_stdin_and_command_together_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path, "--token-secret-stdin", "--token-secret-cmd", "x") == ExitCode.USAGE
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("form", [["--token-secret", SECRET], [f"--token-secret={SECRET}"]])
def test_the_old_secret_argument_is_one_usage_line_that_never_echoes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], form: list[str]
) -> None:
    assert init(tmp_path, *form) == ExitCode.USAGE
    seen = capsys.readouterr()
    assert seen.err.count("\n") == 1 and seen.err.startswith("error: --token-secret ")
    assert "--token-secret-stdin" in seen.err and "--token-secret-cmd" in seen.err
    assert SECRET not in seen.out + seen.err
    assert not (tmp_path / "labctl.toml").exists()


def test_help_documents_stdin_and_command_but_not_the_old_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["init", "--help"]) == ExitCode.OK
    text = capsys.readouterr().out
    assert "--token-secret-stdin" in text and "--token-secret-cmd" in text
    assert "--token-secret " not in text and "--token-secret TEXT" not in text
