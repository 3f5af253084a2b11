"""Which PVE API methods the simulator implements: (method, schema path template) -> handler.

Paths are the templates of the official schema, so routing is the schema lookup itself. A method
that exists in PVE but not here answers 501 like an unknown one (see README "Not simulated").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from provision.sim import responses as r
from provision.sim.models import Cluster

Handler = Callable[[Cluster, r.Call], Any]

VM = "/nodes/{node}/qemu/{vmid}"
AGENT_COMMANDS = {
    "ping": "POST",
    "network-get-interfaces": "GET",
    "get-host-name": "GET",
    "get-osinfo": "GET",
    "info": "GET",
    "file-read": "GET",
}

ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/version"): r.version,
    ("GET", "/access/permissions"): r.access_permissions,
    ("GET", "/cluster"): r.cluster_index,
    ("GET", "/cluster/nextid"): r.nextid,
    ("GET", "/cluster/resources"): r.resources,
    ("GET", "/cluster/status"): r.cluster_status,
    ("GET", "/nodes"): r.nodes,
    ("GET", "/nodes/{node}"): r.node_index,
    ("GET", "/nodes/{node}/status"): r.node_status,
    ("GET", "/nodes/{node}/storage"): r.node_storage,
    ("GET", "/nodes/{node}/network"): r.node_network,
    ("GET", "/nodes/{node}/qemu"): r.vm_list,
    ("POST", "/nodes/{node}/qemu"): r.create_vm,
    ("POST", f"{VM}/template"): r.make_template,
    ("POST", "/nodes/{node}/storage/{storage}/download-url"): r.download_url,
    ("GET", "/nodes/{node}/storage/{storage}/content"): r.storage_content,
    ("GET", VM): r.vm_index,
    ("DELETE", VM): r.destroy,
    ("POST", f"{VM}/clone"): r.clone,
    ("GET", f"{VM}/config"): r.get_config,
    ("POST", f"{VM}/config"): r.post_config,
    ("PUT", f"{VM}/config"): r.put_config,
    ("GET", f"{VM}/pending"): r.pending,
    ("PUT", f"{VM}/cloudinit"): r.cloudinit,
    ("PUT", f"{VM}/resize"): r.resize,
    ("GET", f"{VM}/status"): r.status_index,
    ("GET", f"{VM}/status/current"): r.status_current,
    ("POST", f"{VM}/status/start"): r.start,
    ("POST", f"{VM}/status/stop"): r.stop,
    ("POST", f"{VM}/status/shutdown"): r.shutdown,
    ("POST", f"{VM}/status/reboot"): r.reboot,
    ("GET", "/nodes/{node}/tasks"): r.task_list,
    ("GET", "/nodes/{node}/tasks/{upid}/status"): r.task_status,
    ("GET", "/nodes/{node}/tasks/{upid}/log"): r.task_log,
}
for _command, _method in AGENT_COMMANDS.items():
    ROUTES[(_method, f"{VM}/agent/{_command}")] = r.agent_command(_command)
