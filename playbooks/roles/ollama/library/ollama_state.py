#!/usr/bin/python
"""Ansible module of the ollama role: read everything the role decides on, in one step.

Each task of a play costs a round trip to the host (~0.3 s of SSH, worker fork and module
start-up), and an up-to-date host needs none of the role's changes. This module reads the
service account, the installed binary's version, the unit and drop-in (checksum, owner, mode),
the service's systemd state, the API's /api/version and /api/tags, and the free space of the
filesystems the role writes to (for its disk check) in one call, so the role can skip every
block whose state already matches. It never changes anything (check mode included); any doubt
reports "differs", and the role's ordinary tasks then decide.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import stat
import subprocess
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: ollama_state
short_description: Read the state the ollama role manages, in one call
description:
  - Reports the installed Ollama binary's version, whether the service account, the systemd
    unit and its drop-in, the custom models directory and the service state match what the
    role wants, and what the running server answers on C(/api/version) and C(/api/tags).
  - Read-only; supports check mode.
options:
  binary:
    description: Path of the ollama binary.
    type: path
    required: true
  user:
    description: Service account name.
    type: str
    required: true
  group:
    description: Its primary group.
    type: str
    required: true
  home:
    description: Its home directory.
    type: path
    required: true
  shell:
    description: Its login shell.
    type: str
    default: /bin/false
  extra_groups:
    description: Supplementary groups it must be in, when they exist on the host.
    type: list
    elements: str
    default: []
  group_members:
    description: Login users that must be in the service account's group.
    type: list
    elements: str
    default: []
  files:
    description:
      - Files the role writes, each a dict with C(path), C(checksum) (sha1 of the wanted
        content), C(mode) (octal string) and optionally C(owner) and C(group) (default root).
    type: list
    elements: dict
    default: []
  directories:
    description:
      - Directories the role manages, each a dict with C(path), C(owner), C(group), C(mode).
    type: list
    elements: dict
    default: []
  service:
    description: systemd unit name.
    type: str
    default: ollama
  enabled:
    description: Whether the unit should be enabled.
    type: bool
    default: true
  api_url:
    description: Base URL of the Ollama API.
    type: str
    required: true
  api_timeout:
    description: Seconds to wait for each API answer.
    type: float
    default: 5
  disk_paths:
    description:
      - Directories whose filesystem to report (mount point, size, free and used bytes). One
        that does not exist yet counts as the filesystem of its nearest existing parent.
    type: list
    elements: str
    default: []
author:
  - labctl
"""

EXAMPLES = r"""
- name: Read the host's Ollama state.
  ollama_state:
    binary: /usr/local/bin/ollama
    user: ollama
    group: ollama
    home: /usr/share/ollama
    api_url: http://127.0.0.1:11434
  register: state
"""

RETURN = r"""
installed_version:
  description: What the binary reports as its version ("" when absent or unreadable).
  type: str
  returned: always
account_ok:
  description: The group, the user (primary group, home, shell, existing extra groups) and
    the group members are as wanted.
  type: bool
  returned: always
extra_groups_present:
  description: The entries of extra_groups that exist on the host.
  type: list
  returned: always
files_ok:
  description: Every file and directory has the wanted content, owner and mode.
  type: bool
  returned: always
differing:
  description: Paths whose content, owner or mode differ (or that are missing).
  type: list
  returned: always
service_ok:
  description: The unit is loaded, enabled as wanted, active, and needs no daemon-reload.
  type: bool
  returned: always
service:
  description: systemd properties read (LoadState, ActiveState, SubState, UnitFileState, ...).
  type: dict
  returned: always
api_version:
  description: The version /api/version reports ("" when the API does not answer).
  type: str
  returned: always
models:
  description: The model names /api/tags lists (null when the API does not answer).
  type: list
  returned: always
disk:
  description: For each of disk_paths, its filesystem's C(mount) point, C(device) number,
    C(size), C(free) (available to unprivileged users, as the service account) and C(used)
    bytes.
  type: dict
  returned: always
"""

SYSTEMD_PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "NeedDaemonReload")


def start(argv: list[str]) -> subprocess.Popen[str] | None:
    """Start a command now, read it later: the reads below overlap with it."""
    try:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)
    except OSError:
        return None


def finish(proc: subprocess.Popen[str] | None, timeout: float = 30.0) -> str:
    if proc is None:
        return ""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return ""
    return out or ""


def binary_version(output: str) -> str:
    """`ollama --version` prints "ollama version is X" when a server answers, and
    "Warning: client version is X" when none does or they differ: the last one is the binary's."""
    found = re.findall(r"version is v?([0-9][^\s]*)", output)
    return found[-1] if found else ""


def account_state(params: dict) -> tuple[bool, list[str]]:
    present = []
    for name in params["extra_groups"]:
        try:
            grp.getgrnam(name)
            present.append(name)
        except KeyError:
            continue
    try:
        group = grp.getgrnam(params["group"])
        user = pwd.getpwnam(params["user"])
    except KeyError:
        return False, present
    ok = (user.pw_gid == group.gr_gid and user.pw_dir == params["home"]
          and user.pw_shell == params["shell"] and os.path.isdir(params["home"]))
    for name in present:
        if params["user"] not in grp.getgrnam(name).gr_mem:
            ok = False
    for member in params["group_members"]:
        try:
            login = pwd.getpwnam(member)
        except KeyError:
            ok = False
            continue
        if login.pw_gid != group.gr_gid and member not in group.gr_mem:
            ok = False
    return ok, present


def owned_as(st: os.stat_result, owner: str, group: str) -> bool:
    try:
        return (pwd.getpwuid(st.st_uid).pw_name == owner
                and grp.getgrgid(st.st_gid).gr_name == group)
    except KeyError:
        return False


def differing_paths(files: list[dict], directories: list[dict]) -> list[str]:
    differ = []
    for spec in directories:
        path = spec["path"]
        try:
            st = os.stat(path)
        except OSError:
            differ.append(path)
            continue
        if (not stat.S_ISDIR(st.st_mode) or not owned_as(st, spec["owner"], spec["group"])
                or stat.S_IMODE(st.st_mode) != int(str(spec["mode"]), 8)):
            differ.append(path)
    for spec in files:
        path = spec["path"]
        try:
            st = os.lstat(path)
            with open(path, "rb") as fh:
                checksum = hashlib.sha1(fh.read()).hexdigest()
        except OSError:
            differ.append(path)
            continue
        if (not stat.S_ISREG(st.st_mode) or checksum != spec["checksum"]
                or not owned_as(st, spec.get("owner", "root"), spec.get("group", "root"))
                or stat.S_IMODE(st.st_mode) != int(str(spec["mode"]), 8)):
            differ.append(path)
    return differ


def systemd_state(output: str) -> dict[str, str]:
    props = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in SYSTEMD_PROPERTIES:
            props[key] = value
    return props


def filesystem_of(path: str) -> dict | None:
    """Mount point, size, free and used bytes of the filesystem that holds (or would hold) path."""
    here = os.path.abspath(path)
    while not os.path.exists(here) and here != os.path.dirname(here):
        here = os.path.dirname(here)
    try:
        fs = os.statvfs(here)
        device = os.stat(here).st_dev
        mount = here
        while mount != os.path.dirname(mount) and os.stat(os.path.dirname(mount)).st_dev == device:
            mount = os.path.dirname(mount)
    except OSError:
        return None
    return {"mount": mount, "device": device, "size": fs.f_blocks * fs.f_frsize,
            "free": fs.f_bavail * fs.f_frsize, "used": (fs.f_blocks - fs.f_bfree) * fs.f_frsize}


def get_json(url: str, timeout: float) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            if reply.status != 200:
                return None
            body = json.loads(reply.read().decode())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return body if isinstance(body, dict) else None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "binary": {"type": "path", "required": True},
            "user": {"type": "str", "required": True},
            "group": {"type": "str", "required": True},
            "home": {"type": "path", "required": True},
            "shell": {"type": "str", "default": "/bin/false"},
            "extra_groups": {"type": "list", "elements": "str", "default": []},
            "group_members": {"type": "list", "elements": "str", "default": []},
            "files": {"type": "list", "elements": "dict", "default": []},
            "directories": {"type": "list", "elements": "dict", "default": []},
            "service": {"type": "str", "default": "ollama"},
            "enabled": {"type": "bool", "default": True},
            "api_url": {"type": "str", "required": True},
            "api_timeout": {"type": "float", "default": 5.0},
            "disk_paths": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    # The two commands run while the Python-side reads below go on.
    version_proc = (start([params["binary"], "--version"])
                    if os.access(params["binary"], os.X_OK) else None)
    systemctl = module.get_bin_path("systemctl")
    show_proc = start([systemctl, "show", params["service"], "--no-pager",
                       "--property=" + ",".join(SYSTEMD_PROPERTIES)]) if systemctl else None

    account_ok, extra_present = account_state(params)
    differ = differing_paths(params["files"], params["directories"])
    base = params["api_url"].rstrip("/")
    version_reply = get_json(base + "/api/version", params["api_timeout"])
    tags_reply = get_json(base + "/api/tags", params["api_timeout"]) if version_reply else None
    models = None
    if tags_reply is not None:
        models = [m.get("name") for m in tags_reply.get("models") or [] if isinstance(m, dict)]

    service = systemd_state(finish(show_proc))
    wanted_file_state = "enabled" if params["enabled"] else "disabled"
    service_ok = (service.get("LoadState") == "loaded"
                  and service.get("UnitFileState") == wanted_file_state
                  and service.get("ActiveState") == "active"
                  and service.get("SubState") == "running"
                  and service.get("NeedDaemonReload") == "no")
    module.exit_json(
        changed=False,
        installed_version=binary_version(finish(version_proc)),
        account_ok=account_ok,
        extra_groups_present=extra_present,
        files_ok=not differ,
        differing=differ,
        service_ok=service_ok,
        service=service,
        api_version=str((version_reply or {}).get("version") or ""),
        models=models,
        disk={path: fs for path in params["disk_paths"] if (fs := filesystem_of(path))},
    )


if __name__ == "__main__":
    main()
