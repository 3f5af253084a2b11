"""Render the Ansible inventory and ansible.cfg for a deploy from templates/ (jinja2).

The inventory carries everything the playbook needs (hosts, SSH settings pinned to labctl's
known_hosts, the role variables of this deploy), so the same file works with plain
`ansible-playbook -i inventory/labctl.yml playbooks/site.yml` and `ansible-inventory --list`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2

from provision import __version__
from provision.errors import DeployError

INVENTORY_TEMPLATE = "inventory.yml.j2"
ANSIBLE_CFG_TEMPLATE = "ansible.cfg.j2"
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DeployHost:
    """One VM to deploy to, as labctl reaches it over SSH."""

    name: str  # inventory hostname = the VM name
    address: str
    user: str
    port: int = 22


@dataclass(frozen=True)
class SshSettings:
    """How Ansible connects: labctl's key and its pinned known_hosts (no TOFU)."""

    private_key: Path
    known_hosts: Path
    connect_timeout_s: int = 20

    def common_args(self) -> str:
        # StrictHostKeyChecking=yes + labctl's own known_hosts: the keys pinned at `up` time are
        # the only ones accepted; nothing gets added to the user's ~/.ssh/known_hosts.
        return " ".join(
            [
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={shlex.quote(str(self.known_hosts))}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "PasswordAuthentication=no",
            ]
        )


def control_path_dir(host: DeployHost, ssh: SshSettings) -> str:
    """A ControlPersist socket dir per VM *instance*: name, address and its pinned host keys.

    Ansible keys its SSH masters on (address, port, user) only. A VM destroyed and re-created
    with the same address within ControlPersist (60 s) would otherwise get commands sent down
    the dead master of its predecessor and hang until the connection times out.
    """
    pinned = sorted(_pinned_keys(ssh.known_hosts, host))
    identity = "|".join([host.name, host.address, str(host.port), host.user, *pinned])
    return f"~/.ansible/cp/labctl-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def _pinned_keys(known_hosts: Path, host: DeployHost) -> list[str]:
    names = {host.address if host.port == 22 else f"[{host.address}]:{host.port}"}
    try:
        lines = known_hosts.read_text().splitlines()
    except OSError:
        return []
    return [
        line.strip()
        for line in lines
        if line.strip() and not line.startswith("#") and names & set(line.split()[0].split(","))
    ]


def _environment(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML/INI, not HTML
    )


def render_inventory(
    templates_dir: Path,
    hosts: Sequence[DeployHost],
    ssh: SshSettings,
    role_vars: Mapping[str, Mapping[str, Any]],
    *,
    inventory_path: Path,
    playbook_path: Path,
) -> str:
    """The inventory YAML text for these hosts, with each host's role variables (by name).

    DeployError on names Ansible cannot take as inventory hostnames.
    """
    if not hosts:
        raise DeployError("nothing to deploy to: no hosts given")
    for host in hosts:
        if not _HOST_NAME.match(host.name):
            raise DeployError(f"VM name {host.name!r} cannot be an Ansible inventory hostname")
    template = _environment(templates_dir).get_template(INVENTORY_TEMPLATE)
    return template.render(
        labctl_version=__version__,
        hosts=hosts,
        control_dirs={h.name: control_path_dir(h, ssh) for h in hosts},
        ssh_key=str(ssh.private_key),
        ssh_common_args=ssh.common_args(),
        role_vars={h.name: dict(role_vars.get(h.name, {})) for h in hosts},
        inventory_path=_display(inventory_path),
        playbook_path=_display(playbook_path),
    )


REGISTRY_FILE = "deploy-hosts.json"


@dataclass(frozen=True)
class KnownDeploy:
    """What labctl last deployed to one VM: how to reach it and with which role variables."""

    host: DeployHost
    role_vars: dict[str, Any]


def update_registry(
    state_dir: Path,
    deployed: Sequence[DeployHost] = (),
    role_vars: Mapping[str, Any] | None = None,
    forget: Sequence[str] = (),
) -> list[KnownDeploy]:
    """Record deployed VMs (and drop forgotten ones) in <state>/deploy-hosts.json.

    The shared inventory/labctl.yml is rendered from this record, so it lists every VM labctl
    deployed to, not only the last one. Serialized with a lock: `labctl up a & labctl up b`.
    """
    path = state_dir / REGISTRY_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / (REGISTRY_FILE + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            records = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            records = {}  # a damaged record is rebuilt from the next deploys
        for host in deployed:
            records[host.name] = {**asdict(host), "role_vars": dict(role_vars or {})}
        for name in forget:
            records.pop(name, None)
        write_private(path, json.dumps(records, indent=2, sort_keys=True) + "\n")
    known = []
    for name in sorted(records):
        record = dict(records[name])
        extra = record.pop("role_vars", {})
        try:
            known.append(KnownDeploy(DeployHost(**record), dict(extra)))
        except TypeError:
            continue  # written by another labctl version: skip rather than fail the deploy
    return known


def render_ansible_cfg(
    templates_dir: Path, *, roles_path: Path, forks: int, connect_timeout_s: int
) -> str:
    template = _environment(templates_dir).get_template(ANSIBLE_CFG_TEMPLATE)
    return template.render(
        roles_path=str(roles_path), forks=forks, connect_timeout=connect_timeout_s
    )


def write_private(path: Path, text: str) -> None:
    """Write a file only the user can read (the inventory names the SSH key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
