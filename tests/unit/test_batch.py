"""Per-VM work a bounded number at a time: every outcome kept, one failure stops no other."""

from __future__ import annotations

import threading
import time

import pytest

from provision.batch import DEFAULT_JOBS, each_vm, first_error, parse_jobs
from provision.errors import GuestError, UsageError


def test_outcomes_come_in_the_names_order_with_each_vms_result_or_error() -> None:
    def work(name: str) -> str:
        if name == "b":
            raise GuestError("b's guest died")
        time.sleep(0.05 if name == "a" else 0)
        return name.upper()

    outcomes = each_vm(["a", "b", "c"], work, jobs=3)

    assert [(o.name, o.result, o.ok) for o in outcomes] == [
        ("a", "A", True),
        ("b", None, False),
        ("c", "C", True),
    ]
    assert str(first_error(outcomes)) == "b's guest died"


def test_no_more_than_jobs_vms_are_worked_on_at_once() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def work(name: str) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    each_vm([f"vm{i}" for i in range(12)], work, jobs=3)

    assert 1 < most <= 3


def test_a_bug_in_one_vms_work_is_not_swallowed() -> None:
    def work(name: str) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        each_vm(["a", "b"], work, jobs=2)


@pytest.mark.parametrize("text", ["0", "-1", "a", "1.5"])
def test_bad_jobs_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--jobs"):
        parse_jobs(text)


def test_jobs_default() -> None:
    assert parse_jobs(None) == DEFAULT_JOBS and parse_jobs("3") == 3
