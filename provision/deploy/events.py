"""Ansible's outcome as labctl reports it: one progress line per task and host from the event
stream, the run's DeployResult, and the one-line failure (split from runner.py, which alone
imports ansible_runner; these only read what it returns)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from provision.deploy.results import DeployResult, HostStats, TaskOutcome
from provision.progress import Reporter

MESSAGE_LIMIT = 400  # characters of Ansible's message kept in the one-line error


class _EventTracker:
    """ansible-runner event_handler: one progress line per finished task and host."""

    _STATUS: ClassVar[dict[str, str]] = {
        "runner_on_ok": "ok",
        "runner_on_failed": "failed",
        "runner_on_unreachable": "unreachable",
        "runner_on_skipped": "skipped",
    }

    def __init__(self, reporter: Reporter, *, check: bool) -> None:
        self.reporter = reporter
        self.check = check
        self.outcomes: list[TaskOutcome] = []

    def __call__(self, event: dict[str, Any]) -> bool:
        status = self._STATUS.get(str(event.get("event", "")))
        if status is None:
            return True  # keep every event in artifacts/<id>/job_events/
        data = event.get("event_data") or {}
        res = data.get("res") or {}
        if status == "ok" and res.get("changed"):
            status = "changed"
        if status == "failed" and data.get("ignore_errors"):
            status = "ignored"
        outcome = TaskOutcome(
            host=str(data.get("host", "?")),
            task=str(data.get("task", "?")).strip(),
            status=status,
            duration_s=float(data.get("duration") or 0.0),
            message=_message(res) if status in ("failed", "unreachable", "ignored") else "",
        )
        self.outcomes.append(outcome)
        if status != "skipped":
            label = "would change" if (status == "changed" and self.check) else status
            self.reporter.step(
                f"{outcome.host}: {label:<8} {outcome.task} [{outcome.duration_s:.1f}s]"
            )
        return True


def _message(res: Mapping[str, Any]) -> str:
    """Ansible's reason for a failure, plus Ollama's {"error": ...} when the API gave one."""
    parts = [str(res.get("msg") or "").strip()]
    body = res.get("json")
    if isinstance(body, Mapping) and body.get("error"):
        parts.append(f"ollama: {body['error']}")
    stderr = str(res.get("stderr") or "").strip()
    if stderr:
        parts.append(stderr.splitlines()[-1])
    for item in res.get("results") or []:  # a loop: the first failed item says why
        if isinstance(item, Mapping) and item.get("failed"):
            parts.append(f"item {item.get('item')!r}: {_message(item)}")
            break
    text = "; ".join(p for p in parts if p) or "no message"
    return " ".join(text.split())[:MESSAGE_LIMIT]


def _result(
    runner: Any, tracker: _EventTracker, check: bool, duration_s: float, inventory_path: Path
) -> DeployResult:
    raw = runner.stats or {}
    hosts = sorted({h for counts in raw.values() if isinstance(counts, dict) for h in counts})

    def count(key: str, host: str) -> int:
        return int((raw.get(key) or {}).get(host, 0))

    stats = {
        h: HostStats(
            ok=count("ok", h),
            changed=count("changed", h),
            failed=count("failures", h),
            unreachable=count("dark", h),
            skipped=count("skipped", h),
            rescued=count("rescued", h),
            ignored=count("ignored", h),
        )
        for h in hosts
    }
    return DeployResult(
        status=str(runner.status),
        rc=int(runner.rc if runner.rc is not None else -1),
        stats=stats,
        changed=sum(s.changed for s in stats.values()),
        artifact_dir=Path(runner.config.artifact_dir),
        duration_s=duration_s,
        check=check,
        inventory_path=inventory_path,
        changes=tuple(o for o in tracker.outcomes if o.status == "changed"),
        failures=tuple(o for o in tracker.outcomes if o.status in ("failed", "unreachable")),
    )


def _failure_line(result: DeployResult, runner: Any) -> str:
    if result.failures:
        first = result.failures[0]
        what = "unreachable" if first.status == "unreachable" else "failed"
        return f'task "{first.task}" {what} on {first.host}: {first.message}'
    if result.status == "timeout":
        return f"the playbook did not finish within its time limit ({result.duration_s:.0f} s)"
    tail = _stdout_tail(runner)
    return f"ansible-playbook {result.status} (rc {result.rc})" + (f": {tail}" if tail else "")


def _stdout_tail(runner: Any) -> str:
    try:
        lines = [ln.strip() for ln in runner.stdout.read().splitlines() if ln.strip()]
    except (OSError, AttributeError, ValueError):
        return ""
    interesting = [ln for ln in lines if "ERROR" in ln] or lines
    return " ".join(interesting[-1].split())[:MESSAGE_LIMIT] if interesting else ""


def _summary(result: DeployResult) -> str:
    hosts = ", ".join(f"{h} ok={s.ok} changed={s.changed}" for h, s in result.stats.items())
    if result.check:
        would = ", ".join(sorted({f"{o.host}: {o.task}" for o in result.changes})) or "nothing"
        return f"check finished in {result.duration_s:.1f}s; would change: {would}"
    return f"deploy finished in {result.duration_s:.1f}s ({hosts})"
