"""run_cancellable: the work runs in a thread; Ctrl-C in the caller asks it to stop through its
`cancelled` callback (ansible-runner's cancel_callback), without touching signal handlers."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from provision.deploy.cancel import run_cancellable


def _until_cancelled(cancelled: Callable[[], bool]) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if cancelled():
            return "canceled"
        time.sleep(0.05)
    return "ran out of time"


def test_ctrl_c_while_waiting_cancels_the_work_and_returns_its_result() -> None:
    handler_before = signal.getsignal(signal.SIGINT)
    ctrl_c = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    ctrl_c.start()
    try:
        assert run_cancellable(_until_cancelled) == "canceled"
    finally:
        ctrl_c.cancel()
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_work_that_is_not_cancelled_returns_its_result() -> None:
    assert run_cancellable(lambda cancelled: "done" if not cancelled() else "canceled") == "done"


def test_an_error_in_the_work_is_raised_in_the_caller() -> None:
    def broken(cancelled: Callable[[], bool]) -> str:
        raise OSError("ansible-playbook vanished")

    with pytest.raises(OSError, match="ansible-playbook vanished"):
        run_cancellable(broken)
