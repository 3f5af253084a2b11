"""Suite-wide rules.

Guest, sshd and cgroup tests skip (saying why) on machines that cannot run them. In CI they must
run: with LABCTL_TESTS_STRICT=1 (set by .ci/run) any skipped test fails the session, so a
missing install step cannot hide behind a green run.
"""

from __future__ import annotations

import os

import pytest

_skipped: list[str] = []


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
