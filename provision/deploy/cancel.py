"""Run blocking work in a thread of its own, so that Ctrl-C can ask it to stop.

The deploy uses it for ansible_runner.run(): given a cancel_callback, ansible-runner installs no
signal handlers, and the thread that called the deploy stays free to receive Ctrl-C.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_cancellable(start: Callable[[Callable[[], bool]], T]) -> T:
    """Call start(cancelled) in a thread of its own; Ctrl-C here makes cancelled() true.

    The calling thread only waits, so Ctrl-C (or SIGTERM, which labctl turns into Ctrl-C)
    reaches it as KeyboardInterrupt, with the process's signal handlers left as they are. It
    then asks `start` to stop through `cancelled` (ansible-runner stops ansible-playbook and
    reports "canceled") and waits for that.
    """
    cancel, done = threading.Event(), threading.Event()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(start(cancel.is_set))
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=work, name="cancellable-work").start()
    try:
        _wait_for(done)
    except KeyboardInterrupt:
        cancel.set()
        _wait_for(done)
    if failure:
        raise failure[0]
    return outcome[0]


def _wait_for(done: threading.Event) -> None:
    # Not Thread.join: a KeyboardInterrupt inside join() can leave the thread looking finished
    # while it still runs (CPython 3.11). Short waits, so Ctrl-C is handled at once.
    while not done.wait(0.2):
        pass
