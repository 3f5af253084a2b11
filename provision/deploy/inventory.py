"""Render the Ansible inventory and ansible.cfg for a deploy from templates/ (jinja2).

The inventory carries everything the playbook needs (hosts, SSH settings pinned to labctl's
known_hosts, the role variables of this deploy), so the same file works with plain
`ansible-playbook -i inventory/labctl.yml playbooks/site.yml` and `ansible-inventory --list`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
        return " ".join([
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={shlex.quote(str(self.known_hosts))}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "PasswordAuthentication=no",
        ])


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
    return [line.strip() for line in lines
            if line.strip() and not line.startswith("#")
            and names & set(line.split()[0].split(","))]


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
    role_vars: Mapping[str, Any],
    *,
    inventory_path: Path,
    playbook_path: Path,
) -> str:
    """The inventory YAML text for these hosts (DeployError on names Ansible cannot take)."""
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
        role_vars=dict(role_vars),
        inventory_path=_display(inventory_path),
        playbook_path=_display(playbook_path),
    )


def render_ansible_cfg(templates_dir: Path, *, roles_path: Path, forks: int,
                       connect_timeout_s: int) -> str:
    template = _environment(templates_dir).get_template(ANSIBLE_CFG_TEMPLATE)
    return template.render(roles_path=str(roles_path), forks=forks,
                           connect_timeout=connect_timeout_s)


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
