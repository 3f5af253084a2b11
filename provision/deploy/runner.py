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
from typing import Any

import ansible_runner

from provision import paths
from provision.deploy.cancel import run_cancellable
from provision.deploy.events import _EventTracker, _failure_line, _result, _summary
from provision.deploy.inventory import (
    DeployHost,
    KnownDeploy,
    SshSettings,
    render_ansible_cfg,
    render_inventory,
    update_registry,
    write_private,
)
from provision.deploy.results import DeployResult
from provision.errors import DeployError, Interrupted
from provision.progress import NullReporter, Reporter

PLAYBOOK = "site.yml"


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
    result = _run_playbook(
        private,
        PLAYBOOK,
        private_inventory,
        ssh,
        run_id=run_id,
        check=options.check,
        forks=options.forks,
        timeout_s=options.timeout_s,
        reporter=reporter,
        inventory_out=inventory_out,
    )
    reporter.step(_summary(result))
    return result


def run_playbook(
    playbook: str,
    host: DeployHost,
    ssh: SshSettings,
    *,
    state_dir: Path,
    variables: Mapping[str, Any],
    reporter: Reporter | None = None,
    stage: str = "playbook",
    timeout_s: int | None = None,
) -> DeployResult:
    """Run another playbook of playbooks/ (e.g. template.yml) on one host, with variables.

    Unlike `deploy`, the host is not recorded in the shared inventory: it is no Ollama VM.
    """
    reporter = reporter or NullReporter()
    run_id = new_run_id()
    data = paths.data_dir()
    private = state_dir / "runs" / run_id / stage
    private_inventory = private / "inventory" / "hosts.yml"
    write_private(
        private_inventory,
        render_inventory(
            data / "templates",
            [host],
            ssh,
            {host.name: variables},
            inventory_path=private_inventory,
            playbook_path=data / "playbooks" / playbook,
        ),
    )
    result = _run_playbook(
        private,
        playbook,
        private_inventory,
        ssh,
        run_id=run_id,
        check=False,
        forks=1,
        timeout_s=timeout_s,
        reporter=reporter,
        inventory_out=private_inventory,
        stage=stage,
    )
    reporter.step(f"{playbook} finished in {result.duration_s:.1f}s")
    return result


def _run_playbook(
    private: Path,
    playbook: str,
    private_inventory: Path,
    ssh: SshSettings,
    *,
    run_id: str,
    check: bool,
    forks: int,
    timeout_s: int | None,
    reporter: Reporter,
    inventory_out: Path,
    stage: str = "",
) -> DeployResult:
    """ansible-playbook through ansible-runner in `private`; DeployError on any failure."""
    data = paths.data_dir()
    playbooks, templates = data / "playbooks", data / "templates"
    cfg = private / "ansible.cfg"
    write_private(
        cfg,
        render_ansible_cfg(
            templates,
            roles_path=playbooks / "roles",
            forks=forks,
            connect_timeout_s=ssh.connect_timeout_s,
        ),
    )

    _prune_control_dirs()
    reporter.stage(stage or ("check" if check else "deploy"))
    tracker = _EventTracker(reporter, check=check)
    started = time.monotonic()
    try:
        runner = run_cancellable(
            lambda cancelled: ansible_runner.run(
                private_data_dir=str(private),
                project_dir=str(playbooks),
                playbook=playbook,
                inventory=str(private_inventory),
                envvars={
                    "ANSIBLE_CONFIG": str(cfg),
                    "ANSIBLE_NOCOLOR": "1",
                    "PATH": _path_with_ansible(),
                },
                cmdline="--check" if check else None,
                ident=run_id,
                quiet=True,
                timeout=timeout_s,
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
    result = _result(runner, tracker, check, time.monotonic() - started, inventory_out)
    if result.status == "canceled":  # Ctrl-C (or SIGTERM): ansible-runner stopped the playbook
        raise Interrupted(f"deploy interrupted; artifacts: {result.artifact_dir}")
    if not result.ok:
        raise DeployError(_failure_line(result, runner), hint=f"artifacts: {result.artifact_dir}")
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
