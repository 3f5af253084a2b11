"""tests/unit holds only tests that start no process: any attempt fails the test.

A unit test's set-up and the test itself run under tests.support.process_guard.NoProcesses
(not its teardown: the last test of a session also tears down other folders' session fixtures,
a guest backend that unmounts, say); tests that need a subprocess, an sshd or the simulator
belong in tests/integration, tests/probe, tests/deploy and the like.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support.process_guard import NoProcesses


def _guarded(item: pytest.Item, phase: str) -> Generator[None, object, object]:
    with NoProcesses() as guard:
        outcome = yield
    if guard.attempts:
        pytest.fail(
            f"{item.nodeid} started a process during {phase} ({', '.join(guard.attempts)}):"
            " unit tests start no process",
            pytrace=False,
        )
    return outcome


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guarded(item, "the test"))
