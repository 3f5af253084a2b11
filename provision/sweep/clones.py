"""Extra VMs for `labctl sweep --parallel N`: NAME-2..NAME-N, spread over the cluster's nodes.

Each clone is created from the template with NAME's shape (or reconciled if it exists, so a
resumed sweep reuses it) and gets Ollama and the models through the same playbook as `deploy`.
Clones are left running after the sweep (put back to their first shape); `labctl down NAME-2`
removes one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from provision.config import LabConfig
from provision.progress import Reporter
from provision.sweep.loop import check_space_fits
from provision.sweep.model import Space

if TYPE_CHECKING:
    from provision.pve.lifecycle import Lab, VmInfo


def clone_names(name: str, parallel: int) -> list[str]:
    return [f"{name}-{i}" for i in range(2, parallel + 1)]


def spread_nodes(nodes: list[str], home: str, count: int) -> list[str]:
    """Node for each clone: the other nodes first (round robin), the home node last."""
    ordered = [n for n in sorted(nodes) if n != home] + [home]
    return [ordered[i % len(ordered)] for i in range(count)]


def ensure_clones(config: LabConfig, state_dir: Path, lab: Lab, info: VmInfo, parallel: int,
                  space: Space, *, reporter: Reporter, allow_overcommit: bool) -> list[str]:
    from provision.deploy.inventory import DeployHost, SshSettings
    from provision.deploy.runner import DeployOptions, deploy

    names = clone_names(info.name, parallel)
    online = [str(n["node"]) for n in (lab.client.get("nodes") or [])
              if n.get("status") == "online"] or [info.node]
    hosts = []
    for clone, node in zip(names, spread_nodes(online, info.node, len(names)), strict=True):
        if not allow_overcommit:
            check_space_fits(space, lab.node_capacity(node), None)
        reporter.step(f"clone {clone} on {node} for the parallel sweep")
        lab.up(clone, info.shape, node=node, allow_overcommit=allow_overcommit)
        address = lab.guest(clone)
        hosts.append(DeployHost(name=clone, address=address.host, user=address.user,
                                port=address.port))
    ssh = SshSettings(private_key=Path(str(config.get("ssh.key"))).expanduser(),
                      known_hosts=state_dir / "known_hosts")
    options = DeployOptions(
        models=tuple(config.get("deploy.models")),
        ollama_version=str(config.get("deploy.ollama_version")) or None,
        download_base_url=str(config.get("deploy.ollama_base_url")) or None,
        role_vars=dict(config.get("deploy.extra_vars")))
    deploy(hosts, ssh, state_dir=state_dir, options=options, reporter=reporter,
           inventory_out=state_dir / "runs" / "sweep-clones-inventory.yml")
    return names
