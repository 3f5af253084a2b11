"""Suite-wide rules.

Guest, sshd and cgroup tests skip (saying why) on machines that cannot run them. In CI they must
run: with LABCTL_TESTS_STRICT=1 (set by .ci/run) any skipped test fails the session, so a
missing install step cannot hide behind a green run.

Helpers shared across files live in tests/support (an importable package); fixtures that several
folders use are registered here once, as plugins, so a folder's conftest only holds its own.
"""

from __future__ import annotations

import getpass
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = [
    "tests.support.fixtures.sim_lab",
    "tests.support.fixtures.probe_targets",
]

_skipped: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # A suite started as a background job of a non-interactive shell (`./.ci/run &`) inherits
    # SIGINT ignored: Python then raises no KeyboardInterrupt, and every labctl it starts
    # inherits the ignore too, so the Ctrl-C tests would test nothing. Ctrl-C as a user has it.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGTERM (a stopped job, `timeout`) stops the run as Ctrl-C does, so the session fixtures
    # are torn down: Python's default would end pytest at once and leave the guest backend's
    # guests and lxcfs running, and its FUSE mount dead once they are killed in turn.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_sessionstart(session: pytest.Session) -> None:
    # A run killed whole (every process at once) cannot unmount its guest backend's lxcfs: the
    # mount stays, dead, under pytest's temp root, and pytest's removal of old temp dirs then
    # fails on it with "Transport endpoint is not connected". Unmount such mounts first.
    if os.geteuid() == 0:
        from provision.sim.guests.lxcfs import unmount_dead

        unmount_dead(_pytest_temp_root())


def _pytest_temp_root() -> Path:
    """Where pytest keeps its numbered temp dirs (_pytest/tmpdir.py getbasetemp)."""
    temproot = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    return temproot.resolve() / f"pytest-of-{getpass.getuser()}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("LABCTL_TESTS_STRICT") == "1" and _skipped:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"LABCTL_TESTS_STRICT: {len(_skipped)} test(s) skipped:", red=True)
            for line in _skipped[:20]:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def llama_engine() -> Any:
    """The real llama.cpp (llama-server, llama-bench), built once per machine and cached."""
    from tests.doubles.engine import ensure_engine

    return ensure_engine()


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    """A few-MB GGUF file with gemma2's architecture (2 narrow layers): fast real inference."""
    from tests.doubles.gguf_model import GEMMA2_TINY, ensure_model

    return ensure_model(GEMMA2_TINY)
