"""API handlers: take validated parameters, call one Cluster method, return the `data` value.

No PVE logic lives here (that is `models.Cluster`); this is moto's `responses.py` role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from provision.sim.models import Cluster


@dataclass(frozen=True)
class Call:
    """One authenticated API call after validation."""

    params: dict[str, Any]
    user: str  # auth id as it appears in UPIDs: root@pam or root@pam!labctl

    @property
    def node(self) -> str:
        return str(self.params["node"])

    @property
    def vmid(self) -> int:
        return int(self.params["vmid"])

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


@dataclass(frozen=True)
class Envelope:
    """A result with extra envelope keys next to `data` (e.g. the task log's `total`)."""

    data: Any
    extra: dict[str, Any] = field(default_factory=dict)


def version(cluster: Cluster, call: Call) -> Any:
    return {"version": "9.2.0", "release": "9.2", "repoid": "simulated", "console": "xtermjs"}


def access_permissions(cluster: Cluster, call: Call) -> Any:
    return cluster.access.permissions_of(call.user, call.get("path"), call.get("userid"))


def cluster_index(cluster: Cluster, call: Call) -> Any:
    return [{"name": n} for n in ("nextid", "resources", "status", "tasks")]


def nextid(cluster: Cluster, call: Call) -> Any:
    vmid = call.get("vmid")
    return cluster.nextid(int(vmid) if vmid is not None else None)


def resources(cluster: Cluster, call: Call) -> Any:
    return cluster.resources(call.get("type"), call.user)


def cluster_status(cluster: Cluster, call: Call) -> Any:
    entries: list[dict[str, Any]] = [
        {
            "id": "cluster",
            "name": "labsim",
            "type": "cluster",
            "nodes": len(cluster.nodes),
            "quorate": 1,
            "version": 1,
        }
    ]
    for index, name in enumerate(cluster.nodes, start=1):
        entries.append(
            {
                "id": f"node/{name}",
                "name": name,
                "type": "node",
                "online": 1,
                "local": 1 if index == 1 else 0,
                "nodeid": index,
                "level": "",
                "ip": "127.0.0.1",
            }
        )
    return entries


def nodes(cluster: Cluster, call: Call) -> Any:
    return cluster.nodes_list(call.user)


def node_index(cluster: Cluster, call: Call) -> Any:
    cluster.node(call.node)
    return [{"name": n} for n in ("qemu", "status", "storage", "tasks", "version")]


def node_status(cluster: Cluster, call: Call) -> Any:
    return cluster.node_status(call.node)


def node_storage(cluster: Cluster, call: Call) -> Any:
    return cluster.node_storages(call.node, call.get("content"), call.user)


def node_network(cluster: Cluster, call: Call) -> Any:
    return cluster.node_network(call.node, call.get("type"))


def vm_list(cluster: Cluster, call: Call) -> Any:
    return cluster.vm_list(call.node, call.user)


def vm_index(cluster: Cluster, call: Call) -> Any:
    cluster.vm(call.node, call.vmid)
    return [{"subdir": s} for s in ("config", "pending", "status", "agent", "resize", "clone")]


def create_vm(cluster: Cluster, call: Call) -> Any:
    return cluster.create_vm(call.node, call.user, call.params)


def make_template(cluster: Cluster, call: Call) -> Any:
    return cluster.make_template(call.node, call.vmid, call.user)


def download_url(cluster: Cluster, call: Call) -> Any:
    return cluster.download_url(call.node, call.user, call.params)


def storage_content(cluster: Cluster, call: Call) -> Any:
    return cluster.storage_content(call.node, str(call.get("storage")), call.get("content"))


def clone(cluster: Cluster, call: Call) -> Any:
    return cluster.clone(call.node, call.vmid, call.user, call.params)


def get_config(cluster: Cluster, call: Call) -> Any:
    current = str(call.get("current", "0")) in ("1", "True")
    return cluster.get_config(call.node, call.vmid, current, call.get("snapshot"))


def post_config(cluster: Cluster, call: Call) -> Any:
    return cluster.update_config(call.node, call.vmid, call.user, call.params, asynchronous=True)


def put_config(cluster: Cluster, call: Call) -> Any:
    return cluster.update_config(call.node, call.vmid, call.user, call.params, asynchronous=False)


def pending(cluster: Cluster, call: Call) -> Any:
    return cluster.get_pending(call.node, call.vmid)


def cloudinit(cluster: Cluster, call: Call) -> Any:
    cluster.cloudinit_regenerate(call.node, call.vmid)
    return None


def resize(cluster: Cluster, call: Call) -> Any:
    return cluster.resize(call.node, call.vmid, call.user, call.params)


def status_index(cluster: Cluster, call: Call) -> Any:
    cluster.vm(call.node, call.vmid)
    return [{"subdir": s} for s in ("current", "start", "stop", "shutdown", "reboot")]


def status_current(cluster: Cluster, call: Call) -> Any:
    return cluster.status_current(call.node, call.vmid)


def start(cluster: Cluster, call: Call) -> Any:
    return cluster.start(call.node, call.vmid, call.user, call.params)


def stop(cluster: Cluster, call: Call) -> Any:
    return cluster.stop(call.node, call.vmid, call.user, call.params)


def shutdown(cluster: Cluster, call: Call) -> Any:
    return cluster.shutdown(call.node, call.vmid, call.user, call.params)


def reboot(cluster: Cluster, call: Call) -> Any:
    return cluster.reboot(call.node, call.vmid, call.user, call.params)


def destroy(cluster: Cluster, call: Call) -> Any:
    return cluster.destroy(call.node, call.vmid, call.user, call.params)


def agent_command(command: str) -> Any:
    def handler(cluster: Cluster, call: Call) -> Any:
        return cluster.agent(call.node, call.vmid, command, call.params)

    handler.__name__ = f"agent_{command.replace('-', '_')}"
    return handler


def task_list(cluster: Cluster, call: Call) -> Any:
    entries, total = cluster.task_list(call.node, call.params, call.user)
    return Envelope(entries, {"total": total})


def task_status(cluster: Cluster, call: Call) -> Any:
    return cluster.task(call.node, str(call.get("upid")), call.user).status_json()


def task_log(cluster: Cluster, call: Call) -> Any:
    lines, total = cluster.task_log(
        call.node,
        str(call.get("upid")),
        int(call.get("start", 0)),
        int(call.get("limit", 50)),
        call.user,
    )
    return Envelope(lines, {"total": total})
