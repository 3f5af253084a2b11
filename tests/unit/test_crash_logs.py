"""An unexpected error (a bug) leaves its traceback in <state>/crash/, named on its error line."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

from provision import config
from provision.cli import main
from provision.cli.errors import CRASH_LOGS_KEPT
from provision.errors import ExitCode


@pytest.fixture(autouse=True)
def _crashing_lab_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Loading the lab file raises a bug-like error; temp files would land in tmp_path/tmp."""
    for name in list(os.environ):
        if name.startswith("LABCTL_"):
            monkeypatch.delenv(name)

    def crash(*args: object, **kwargs: object) -> config.LabConfig:
        raise RuntimeError("boom in the lab file reader")

    monkeypatch.setattr(config, "load_config", crash)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


def crash_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_the_crash_log_is_private_in_the_state_dir_and_named_on_the_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "ls"]) == ExitCode.ERROR
    line = crash_line(capsys)
    assert line.startswith("error: unexpected RuntimeError: boom in the lab file reader (details")
    logs = list((state / "crash").iterdir())
    assert len(logs) == 1 and str(logs[0]) in line
    assert re.fullmatch(r"crash-\d{8}T\d{6}\.\d{6}Z-\d+\.log", logs[0].name)
    assert logs[0].stat().st_mode & 0o777 == 0o600
    text = logs[0].read_text()
    assert "Traceback" in text and "RuntimeError: boom in the lab file reader" in text
    assert not list((tmp_path / "tmp").iterdir())  # nothing in the temp dir any more


def test_the_state_dir_from_the_environment_holds_the_crash_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LABCTL_STATE_DIR", str(tmp_path / "env-state"))
    assert main(["ls"]) == ExitCode.ERROR
    assert str(tmp_path / "env-state" / "crash" / "crash-") in crash_line(capsys)


def test_only_the_newest_crash_logs_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crash_dir = tmp_path / "state" / "crash"
    crash_dir.mkdir(parents=True)
    old = [crash_dir / f"crash-2001{month:02d}01T000000.000000Z-1.log" for month in range(1, 13)]
    old += [crash_dir / f"crash-2002{month:02d}01T000000.000000Z-1.log" for month in range(1, 13)]
    for path in old:
        path.write_text("old")
    unrelated = crash_dir / "notes.txt"
    unrelated.write_text("mine")
    assert main(["--state-dir", str(tmp_path / "state"), "ls"]) == ExitCode.ERROR
    kept = sorted(p.name for p in crash_dir.glob("crash-*.log"))
    assert len(kept) == CRASH_LOGS_KEPT
    assert kept[:-1] == [p.name for p in old[-(CRASH_LOGS_KEPT - 1) :]]  # the oldest went
    assert kept[-1] in crash_line(capsys)  # the new one stays
    assert unrelated.read_text() == "mine"


def test_an_unwritable_crash_dir_still_gives_one_line_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "crash").write_text("a file where the directory belongs")
    assert main(["--state-dir", str(state), "ls"]) == ExitCode.ERROR
    line = crash_line(capsys)
    assert "no crash log:" in line and "run with -vv for the traceback" in line
