"""ansible-runner events become progress lines and one clear failure message."""

from __future__ import annotations

from typing import Any

from provision.deploy.events import _EventTracker, _message
from tests.support.reporting import RecordingReporter


def event(name: str, task: str, res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "event": name,
        "event_data": {"host": "gemma", "task": task, "res": res, "duration": 1.25, **extra},
    }


def test_one_line_per_task_with_status_and_elapsed() -> None:
    reporter = RecordingReporter()
    tracker = _EventTracker(reporter, check=False)
    tracker(event("playbook_on_task_start", "Install.", {}))
    tracker(event("runner_on_ok", "Install.", {"changed": True}))
    tracker(event("runner_on_ok", "Check.", {"changed": False}))
    tracker(event("runner_on_skipped", "Skip me.", {}))
    assert reporter.events == [
        ("step", "gemma: changed  Install. [1.2s]"),
        ("step", "gemma: ok       Check. [1.2s]"),
    ]


def test_check_mode_says_would_change() -> None:
    reporter = RecordingReporter()
    _EventTracker(reporter, check=True)(event("runner_on_ok", "Pull.", {"changed": True}))
    assert reporter.events == [("step", "gemma: would change Pull. [1.2s]")]


def test_failure_message_carries_ollamas_error_from_the_api() -> None:
    res = {
        "msg": "Status code was 500 and not [200]: HTTP Error 500: Internal Server Error",
        "json": {"error": "pull model manifest: file does not exist"},
    }
    assert _message(res) == (
        "Status code was 500 and not [200]: HTTP Error 500: Internal "
        "Server Error; ollama: pull model manifest: file does not exist"
    )


def test_failure_message_of_a_loop_names_the_failed_item() -> None:
    res = {
        "msg": "One or more items failed",
        "results": [
            {"item": "gemma2:2b", "failed": False},
            {
                "item": "nosuch:1b",
                "failed": True,
                "msg": "Status code was 500",
                "json": {"error": "file does not exist"},
            },
        ],
    }
    assert "item 'nosuch:1b': Status code was 500; ollama: file does not exist" in _message(res)


def test_ignored_failures_are_not_failures() -> None:
    tracker = _EventTracker(RecordingReporter(), check=True)
    tracker(event("runner_on_failed", "Start.", {"msg": "no unit"}, ignore_errors=True))
    assert [o.status for o in tracker.outcomes] == ["ignored"]
