"""The guard of tests/unit (tests/unit/conftest.py): starting a process fails the test."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading

import pytest

from tests.support.process_guard import NoProcesses, ProcessStarted


def test_starting_a_process_in_a_unit_test_raises_and_is_remembered() -> None:
    with NoProcesses() as guard:
        with pytest.raises(ProcessStarted, match="unit tests start no process"):
            subprocess.run(["true"], check=False)
        with pytest.raises(ProcessStarted, match="os.system"):
            os.system("true")
    assert guard.attempts == ["subprocess.Popen", "os.system"]


def test_swallowing_the_error_does_not_hide_the_attempt() -> None:
    # what careless code under test might do: swallow every error
    with NoProcesses() as guard, contextlib.suppress(BaseException):
        subprocess.run(["true"], check=False)
    assert guard.attempts == ["subprocess.Popen"]


def test_a_thread_the_test_starts_is_guarded_too() -> None:
    seen: list[BaseException] = []

    def start() -> None:
        try:
            subprocess.run(["true"], check=False)
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            seen.append(error)

    with NoProcesses() as guard:
        thread = threading.Thread(target=start)
        thread.start()
        thread.join()
    assert [type(e) for e in seen] == [ProcessStarted]
    assert guard.attempts == ["subprocess.Popen"]


def test_the_guard_puts_everything_back() -> None:
    before = (subprocess.Popen.__init__, os.fork, os.system)
    with NoProcesses():
        assert (subprocess.Popen.__init__, os.fork, os.system) != before
    assert (subprocess.Popen.__init__, os.fork, os.system) == before
