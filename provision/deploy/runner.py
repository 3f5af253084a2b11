"""Run the Ollama playbook with ansible-runner: the only module that imports ansible_runner.

Each run gets its own ansible-runner private data dir, `<state>/runs/<run-id>/deploy/`
(inventory/, env/, ansible.cfg, artifacts/<run-id>/{rc,status,stdout,job_events/}). The event
stream becomes one progress line per task and host; a failed task becomes one DeployError that
names the task, the host, Ansible's message and the artifact dir. The playbook's own outcome is
data (DeployResult); only a failure is raised.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import ansible_runner

from provision import paths
from provision.deploy.cancel import run_cancellable
from provision.deploy.inventory import (
    DeployHost,
    KnownDeploy,
    SshSettings,
    render_ansible_cfg,
    render_inventory,
    update_registry,
    write_private,
)
from provision.deploy.results import DeployResult, HostStats, TaskOutcome
from provision.errors import DeployError, Interrupted
from provision.progress import NullReporter, Reporter

PLAYBOOK = "site.yml"
MESSAGE_LIMIT = 400  # characters of Ansible's message kept in the one-line error


@dataclass(frozen=True)
class DeployOptions:
    """What to deploy. None = the role's default (see playbooks/roles/ollama/README.md)."""

    models: tuple[str, ...] | None = None
    ollama_version: str | None = None
    download_base_url: str | None = None  # a mirror with the GitHub release layout
    local_tarball: Path | None = None  # a release tarball on this machine (offline sites)
    checksum: str | None = None  # "sha256:<hex>" pin for the tarball
    environment: Mapping[str, str] = field(default_factory=dict)  # extra `ollama serve` env
    role_vars: Mapping[str, Any] = field(default_factory=dict)  # any other ollama_* variable
    check: bool = False  # Ansible check mode: report what would change, change nothing
    forks: int = 5
    timeout_s: int | None = None  # whole run; None = no limit

    def to_role_vars(self) -> dict[str, Any]:
        """The role variables this deploy sets, as written into the inventory."""
        chosen: dict[str, Any] = {}
        if self.models is not None:
            chosen["ollama_models"] = list(self.models)
        if self.ollama_version:
            chosen["ollama_version"] = self.ollama_version
        if self.download_base_url:
            chosen["ollama_download_base_url"] = self.download_base_url.rstrip("/")
        if self.local_tarball:
            chosen["ollama_local_tarball"] = str(self.local_tarball.resolve())
        if self.checksum:
            chosen["ollama_checksum"] = self.checksum
        if self.environment:
            chosen["ollama_environment"] = dict(self.environment)
        for name, value in self.role_vars.items():
            if not name.startswith("ollama_"):
                raise DeployError(f"role variable {name!r} is not an ollama_* variable")
            chosen[name] = value
        return chosen


def default_inventory_path(state_dir: Path) -> Path:
    """Where the shared inventory goes: inventory/labctl.yml at the top of the source tree when
    labctl runs from one with its default state dir, else <state dir>/inventory/labctl.yml.

    The inventory is rendered from the state dir's record of deployed VMs, so a run with its own
    state dir (--state-dir, LABCTL_STATE_DIR: tests, a second lab) keeps its inventory there too.
    """
    root = paths.source_root()
    if root is not None and state_dir.resolve() == _default_state_dir().resolve():
        return root / "inventory" / "labctl.yml"
    return state_dir / "inventory" / "labctl.yml"


def _default_state_dir() -> Path:
    # paths.state_dir() without --state-dir / LABCTL_STATE_DIR (and without creating it)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "labctl"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def deploy(
    hosts: Sequence[DeployHost],
    ssh: SshSettings,
    *,
    state_dir: Path,
    options: DeployOptions | None = None,
    reporter: Reporter | None = None,
    run_id: str | None = None,
    inventory_out: Path | None = None,
) -> DeployResult:
    """Run playbooks/site.yml on hosts; DeployResult on success, DeployError on any failure."""
    options = options or DeployOptions()
    reporter = reporter or NullReporter()
    run_id = run_id or new_run_id()
    data = paths.data_dir()
    playbooks, templates = data / "playbooks", data / "templates"
    private = state_dir / "runs" / run_id / "deploy"
    inventory_out = inventory_out or default_inventory_path(state_dir)
    private_inventory = private / "inventory" / "hosts.yml"

    role_vars = options.to_role_vars()
    # This run targets only `hosts`; the shared inventory keeps every VM labctl deployed to.
    write_private(
        private_inventory,
        render_inventory(
            templates,
            hosts,
            ssh,
            {h.name: role_vars for h in hosts},
            inventory_path=inventory_out,
            playbook_path=playbooks / PLAYBOOK,
        ),
    )
    if not options.check:
        known = update_registry(state_dir, hosts, role_vars)
        _write_shared_inventory(templates, known, ssh, inventory_out, playbooks)
    cfg = private / "ansible.cfg"
    write_private(
        cfg,
        render_ansible_cfg(
            templates,
            roles_path=playbooks / "roles",
            forks=options.forks,
            connect_timeout_s=ssh.connect_timeout_s,
        ),
    )

    _prune_control_dirs()
    reporter.stage("check" if options.check else "deploy")
    tracker = _EventTracker(reporter, check=options.check)
    started = time.monotonic()
    try:
        runner = run_cancellable(
            lambda cancelled: ansible_runner.run(
                private_data_dir=str(private),
                project_dir=str(playbooks),
                playbook=PLAYBOOK,
                inventory=str(private_inventory),
                envvars={
                    "ANSIBLE_CONFIG": str(cfg),
                    "ANSIBLE_NOCOLOR": "1",
                    "PATH": _path_with_ansible(),
                },
                cmdline="--check" if options.check else None,
                ident=run_id,
                quiet=True,
                timeout=options.timeout_s,
                # ansible-runner asks cancel_callback and checks the time limit once per pexpect
                # wait: every second instead of every 5 (output and the end are read as they come).
                settings={"pexpect_timeout": 1},
                event_handler=tracker,
                # Given a cancel_callback, ansible-runner installs no SIGINT/SIGTERM handlers.
                cancel_callback=cancelled,
            )
        )
    except Exception as exc:  # ansible-runner's ConfigurationError, OSError, ...
        raise DeployError(
            f"could not start ansible-playbook: {exc}", hint=f"run dir: {private}"
        ) from exc
    result = _result(runner, tracker, options.check, time.monotonic() - started, inventory_out)
    if result.status == "canceled":  # Ctrl-C (or SIGTERM): ansible-runner stopped the playbook
        raise Interrupted(f"deploy interrupted; artifacts: {result.artifact_dir}")
    if not result.ok:
        raise DeployError(_failure_line(result, runner), hint=f"artifacts: {result.artifact_dir}")
    reporter.step(_summary(result))
    return result


def forget_hosts(
    state_dir: Path, names: Sequence[str], ssh: SshSettings, inventory_out: Path | None = None
) -> None:
    """Drop VMs (e.g. after `labctl down`) from the shared inventory/labctl.yml."""
    inventory_out = inventory_out or default_inventory_path(state_dir)
    known = update_registry(state_dir, forget=names)
    data = paths.data_dir()
    _write_shared_inventory(data / "templates", known, ssh, inventory_out, data / "playbooks")


def _write_shared_inventory(
    templates: Path,
    known: Sequence[KnownDeploy],
    ssh: SshSettings,
    inventory_out: Path,
    playbooks: Path,
) -> None:
    if not known:
        inventory_out.unlink(missing_ok=True)
        return
    write_private(
        inventory_out,
        render_inventory(
            templates,
            [k.host for k in known],
            ssh,
            {k.host.name: k.role_vars for k in known},
            inventory_path=inventory_out,
            playbook_path=playbooks / PLAYBOOK,
        ),
    )


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


def _prune_control_dirs(max_age_s: float = 3600.0) -> None:
    """Remove empty per-VM SSH control dirs (see inventory.control_path_dir) left by old VMs.

    Their sockets go away ControlPersist (60 s) after the last use; the directories stay."""
    base = Path("~/.ansible/cp").expanduser()
    now = time.time()
    for directory in base.glob("labctl-*"):
        try:
            if now - directory.stat().st_mtime > max_age_s:
                directory.rmdir()  # only succeeds when empty: a live socket keeps it
        except OSError:
            continue


def _path_with_ansible() -> str:
    """PATH with labctl's own environment first, so its ansible-playbook runs (a venv not on
    PATH, or pipx), and a clear error when there is none at all."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if shutil.which("ansible-playbook", path=path) is None:
        raise DeployError("ansible-playbook not found (install labctl with its dependencies)")
    return path
