"""`labctl doctor`: is this Proxmox VE, template and lab file ready for labctl?

Each check is a small function returning a `Check` (ok / warning / problem, what was seen, and
the fix). Only problems make `labctl doctor` fail: a warning is something labctl works with
but that costs speed or safety (a cpu type hiding AVX2, a key readable by others).

The rules and what they rest on:
- Privileges: `NEEDED_PRIVILEGES` is README's LabctlRole, each on the ACL path PVE checks it
  on (the PVE source behind each is cited in provision/sim/permissions.py), read with
  `GET /access/permissions?path=...` (pve-access-control API2/AccessControl.pm `permissions`).
- Linked clones: a clone of a template's base volume is linked when the storage plugin declares
  the `clone` feature for base volumes (`volume_has_feature`; pve-api.md section 10 on
  `Linked clone feature is not supported`): lvmthin, zfspool, zfs (over iSCSI), rbd and btrfs
  do; file storages (dir, nfs, cifs, glusterfs) do for qcow2 images; plain lvm and iSCSI LUNs
  do not, so VMs there need a full clone.
- AVX2: kvm64/qemu64 (and their 32-bit forms) and x86-64-v2(-AES) have no AVX2 (ollama.md
  section 5.5, the x86-64 psABI levels); llama.cpp then runs its SSE paths.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from provision.config import LabConfig
from provision.errors import LabctlError
from provision.pve.client import PveClient
from provision.pve.doctor.base import PROBLEM, WARNING, Check
from provision.pve.doctor.local import check_ssh_key, check_tls
from provision.pve.doctor.proxmox import (
    check_agent,
    check_api,
    check_bridge,
    check_cloudinit,
    check_cpu_type,
    check_disk_space,
    check_linked_clone,
    check_memory,
    check_node_avx2,
    check_privileges,
    find_template,
)
from provision.pve.doctor.seen import Seen

__all__ = ["PROBLEM", "WARNING", "Check", "run_checks"]


def run_checks(
    config: LabConfig, connect: Callable[[LabConfig], PveClient] = PveClient.from_config
) -> list[Check]:
    """Every check, in the order of the report; without the API only the local ones."""
    api, client = check_api(config, connect)
    checks = [check_tls(config), api]
    if client is not None:
        checks += proxmox_checks(Seen(config, client))
    checks.append(check_ssh_key(config))
    return checks


def proxmox_checks(seen: Seen) -> list[Check]:
    # The template comes first: the privileges' paths and most rows depend on it.
    template = _guarded("template", lambda: find_template(seen))
    later: list[tuple[str, Callable[[Seen], Check]]] = [
        ("cpu type", check_cpu_type),
        ("node AVX2", check_node_avx2),
        ("node RAM", check_memory),
        ("storage space", check_disk_space),
        ("bridge", check_bridge),
    ]
    if seen.template_config:
        later[:0] = [
            ("guest agent", check_agent),
            ("cloud-init drive", check_cloudinit),
            ("linked clone", check_linked_clone),
        ]
    rows = [_guarded("privileges", lambda: check_privileges(seen)), template]
    return rows + [_guarded(name, functools.partial(check, seen)) for name, check in later]


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """A check whose API call failed says so as a warning: the failure itself (a privilege,
    a missing template) has its own row."""
    try:
        return check()
    except LabctlError as error:
        return Check(name, WARNING, f"could not check: {error.message}", error.hint or "")
