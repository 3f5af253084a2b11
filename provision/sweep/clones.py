"""Extra VMs for `labctl sweep --parallel N`: NAME-2..NAME-N, spread over the cluster's nodes.

Each clone is created from the template with NAME's shape and gets Ollama and the models through
the same playbook and lab-file settings as `labctl deploy NAME`. Placement: the other online nodes
first (round robin), NAME's node last; a template on local storage cannot be cloned to another
node (PVE refuses), so then the clone goes to NAME's node with a warning.

labctl made these VMs for the sweep, so the sweep removes them when it ends (`remove_clones`)
unless --keep-clones. Which clones a sweep made is kept in <state>/sweep-clones.json, so a
SIGKILLed sweep run again reuses them (and removes them at its end), while a VM named NAME-2
that the user made is used but never removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from provision.config import LabConfig
from provision.errors import LabctlError, ProxmoxAPIError
from provision.progress import Reporter
from provision.sweep.loop import check_space_fits
from provision.sweep.model import Space

if TYPE_CHECKING:
    from provision.pve.lifecycle import Lab, VmInfo

OWNED_FILE = "sweep-clones.json"


def clone_names(name: str, parallel: int) -> list[str]:
    return [f"{name}-{i}" for i in range(2, parallel + 1)]


def spread_nodes(nodes: list[str], home: str, count: int) -> list[str]:
    """Node for each clone: the other nodes first (round robin), the home node last."""
    ordered = [n for n in sorted(nodes) if n != home] + [home]
    return [ordered[i % len(ordered)] for i in range(count)]


def owned_clones(state_dir: Path) -> set[str]:
    """Names of the VMs a sweep created and has not removed yet."""
    try:
        return set(json.loads((state_dir / OWNED_FILE).read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError):
        return set()


def _set_owned(state_dir: Path, names: set[str]) -> None:
    path = state_dir / OWNED_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(sorted(names)), encoding="utf-8")
    os.replace(temporary, path)


def ensure_clones(
    config: LabConfig,
    state_dir: Path,
    lab: Lab,
    info: VmInfo,
    parallel: int,
    space: Space,
    *,
    reporter: Reporter,
    allow_overcommit: bool,
) -> list[str]:
    """Create (or reuse) NAME-2..NAME-N, SSH-ready and deployed like NAME; their names."""
    from provision.deploy.lab import deploy_options, host_for, ssh_settings
    from provision.deploy.runner import deploy

    names = clone_names(info.name, parallel)
    online = [
        str(n["node"]) for n in (lab.client.get("nodes") or []) if n.get("status") == "online"
    ] or [info.node]
    existing = set(lab.managed_names())
    placement = spread_nodes(online, info.node, len(names))
    local_only = False  # the template cannot leave NAME's node: stop trying other nodes
    hosts = []
    for clone, node in zip(names, placement, strict=True):
        if clone in existing and clone not in owned_clones(state_dir):
            reporter.warn(
                f"{clone} exists and was not made by a sweep: using it as is "
                "(the sweep will not remove it)"
            )
        if clone not in existing:
            _set_owned(state_dir, owned_clones(state_dir) | {clone})
        node = info.node if local_only else node
        local_only = (
            _up_clone(lab, clone, info, node, space, reporter, allow_overcommit) or local_only
        )
        address = lab.guest(clone)
        hosts.append(host_for(address))
    deploy(
        hosts,
        ssh_settings(config, state_dir),
        state_dir=state_dir,
        options=deploy_options(config, vm_name=info.name),
        reporter=reporter,
        inventory_out=state_dir / "runs" / "sweep-clones-inventory.yml",
    )
    return names


def _up_clone(
    lab: Lab,
    clone: str,
    info: VmInfo,
    node: str,
    space: Space,
    reporter: Reporter,
    allow_overcommit: bool,
) -> bool:
    """`Lab.up` the clone on `node`, else on NAME's node; True when the template is node-local."""
    if not allow_overcommit:
        check_space_fits(space, lab.node_capacity(node), None)
    reporter.step(f"clone {clone} on {node} for the parallel sweep")
    try:
        lab.up(clone, info.shape, node=node, allow_overcommit=allow_overcommit)
        return False
    except ProxmoxAPIError as error:
        if "local storage" not in error.message or node == info.node:
            raise
    reporter.warn(
        f"the template is on local storage of another node, so {clone} cannot go to "
        f"{node}; creating it on {info.node} next to {info.name} instead"
    )
    if not allow_overcommit:
        check_space_fits(space, lab.node_capacity(info.node), None)
    lab.up(clone, info.shape, node=info.node, allow_overcommit=allow_overcommit)
    return True


def remove_clones(
    lab: Lab, state_dir: Path, name: str, parallel: int, reporter: Reporter
) -> tuple[list[str], list[str]]:
    """Destroy the clones a sweep made for NAME; (removed, left with the reason in a warning)."""
    removed: list[str] = []
    left: list[str] = []
    ours = [c for c in clone_names(name, parallel) if c in owned_clones(state_dir)]
    if not ours:
        return removed, left
    present = set(lab.managed_names())
    for clone in ours:
        if clone in present:
            try:
                lab.down(clone)
            except LabctlError as error:
                reporter.warn(
                    f"could not remove {clone}: {error}; `labctl down {clone}` removes it"
                )
                left.append(clone)
                continue
            removed.append(clone)
        _set_owned(state_dir, owned_clones(state_dir) - {clone})
    return removed, left


def disown_clones(state_dir: Path, names: list[str]) -> None:
    """--keep-clones: the user keeps these VMs; no later sweep removes them."""
    _set_owned(state_dir, owned_clones(state_dir) - set(names))
