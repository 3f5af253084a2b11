"""Where a new VM goes and what it is cloned from: the node (configured, or the one with most
free memory), the node's capacity for the shape, the template, and a --disk that can only grow
the template's boot disk. All of it is checked before anything is created."""

from __future__ import annotations

from provision.errors import ProxmoxError, UsageError
from provision.pve.cluster import Cluster, Resource
from provision.pve.shapes import boot_disk
from provision.shape import NodeCapacity, Shape


class Placement:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def node_capacity(self, node: str) -> NodeCapacity:
        status = self.cluster.client.get(f"nodes/{node}/status")
        memory = status.get("memory") or {}
        total = int(memory.get("total", 0))
        free = int(memory.get("available", memory.get("free", 0)) or memory.get("free", 0))
        cpus = int((status.get("cpuinfo") or {}).get("cpus", 0))
        return NodeCapacity(
            node=node, cpus=cpus, memory_total_mib=total // 2**20, memory_free_mib=free // 2**20
        )

    def choose_node(self, wanted: str = "") -> str:
        """The configured node, else the online node with most free memory."""
        nodes = self.cluster.client.get("nodes") or []
        online = {str(n["node"]): n for n in nodes if n.get("status") == "online"}
        if wanted:
            if wanted not in online:
                known = ", ".join(sorted(str(n["node"]) for n in nodes)) or "none"
                raise UsageError(
                    f"node {wanted!r} is not an online node of this cluster (nodes: {known})"
                )
            return wanted
        if not online:
            raise ProxmoxError("no online node in the cluster")
        return max(
            online, key=lambda n: int(online[n].get("maxmem", 0)) - int(online[n].get("mem", 0))
        )

    def template(self, resources: list[Resource], full: bool) -> Resource:
        """template.name (a name or a VMID); a plain VM only for a full clone."""
        wanted = str(self.cluster.config.get("template.name")).strip()
        if wanted.isdigit():
            found = [r for r in resources if r.vmid == int(wanted)]
        else:
            found = [r for r in resources if r.name == wanted and r.template] or [
                r for r in resources if r.name == wanted
            ]
        if not found:
            raise ProxmoxError(
                f"template {wanted!r} not found on the cluster",
                hint="set template.name to the template's name or VMID; an API "
                "token sees only the VMs it has VM.Audit on",
            )
        if len(found) > 1:
            ids = ", ".join(str(r.vmid) for r in found)
            raise ProxmoxError(
                f"several VMs are named {wanted!r} (vmids {ids})",
                hint="set template.name to the template's VMID",
            )
        template = found[0]
        if not template.template and not full:
            raise UsageError(
                f"VM {wanted} ({template.vmid}) is not a template: a linked clone "
                "needs one; convert it to a template or use --full"
            )
        return template

    def check_disk_request(self, template: Resource, shape: Shape) -> tuple[str, int] | None:
        """Refuse a --disk smaller than the template's boot disk before cloning."""
        if shape.disk_gib is None:
            return None
        config = self.cluster.client.get(f"{template.path}/config")
        disk = boot_disk(config)
        if disk is None:
            raise ProxmoxError(f"template {template.name} has no boot disk to grow")
        if shape.disk_gib < disk[1]:
            raise UsageError(
                f"--disk {shape.disk_gib}G is smaller than the template's "
                f"{disk[0]} ({disk[1]}G): disks only grow"
            )
        return disk
