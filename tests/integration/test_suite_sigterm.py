"""The suite's own rule (tests/conftest.py): SIGTERM stops a run as Ctrl-C does, so its session
fixtures are torn down (a guest backend unmounts its lxcfs) instead of the run ending at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_sigterm_tears_the_session_fixtures_down(tmp_path: Path) -> None:
    started, torn_down = tmp_path / "started", tmp_path / "torn-down"
    test_file = tmp_path / "test_waits.py"
    test_file.write_text(
        textwrap.dedent(f"""
            import time
            from pathlib import Path

            import pytest

            @pytest.fixture(scope="session")
            def held():
                yield
                Path({str(torn_down)!r}).write_text("closed")

            def test_waits(held):
                Path({str(started)!r}).write_text("")
                time.sleep(120)
        """)
    )
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "tests.conftest",
        "-p",
        "no:cacheprovider",
        f"--basetemp={tmp_path / 'inner'}",
        f"--rootdir={tmp_path}",
        str(test_file),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        deadline = time.monotonic() + 60
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), proc.stdout.read().decode() if proc.stdout else ""
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert torn_down.read_text() == "closed", output.decode()
