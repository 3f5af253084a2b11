"""The simulated cluster: nodes, storages, VMs and tasks, and every operation the API exposes.

This is moto's `models.py` role: plain typed state plus the PVE rules (which errors are
synchronous HTTP errors and which are task errors, pending changes, locks, digests). The HTTP
layer (`responses.py`) only parses, calls one method here and wraps the result.

Like moto's `EC2Backend`, `Cluster` is one backend composed of per-resource parts, each a mixin
in its own module on top of the shared state:

| module | part |
|---|---|
| `base.py` | `Storage`, `Node`, `Vm` records, the fresh state's template and nodes |
| `state.py` | `ClusterState`: attributes, state.json load/save, lookups, per-VM operation locks |
| `tasks.py` | `TaskMixin`: running work as UPID tasks; task status, lists and logs |
| `vms.py` | `VmMixin`: nextid, VM list, status, config and pending changes |
| `nodes.py` | `NodeMixin`: cluster resources, nodes, node status, storages |
| `clone.py` | `CloneMixin`: full and linked clones |
| `images.py` | `ImageMixin`: download-url, storage content, VM create (import-from), template |
| `config.py` | `ConfigMixin`: config updates (hotplug or pending), cloud-init, resize |
| `power.py` | `PowerMixin`: start, stop, shutdown, reboot, destroy |
| `exits.py` | `GuestExitMixin`: a guest that stops on its own stops its VM (and its start) |
| `agent.py` | `AgentMixin`: guest agent commands |

Concurrency: one re-entrant lock guards all state; each task runs in its own thread, serialised
per VM by an operation lock (PVE's config flock). Guest-backend calls happen outside the state
lock because a real backend can take seconds.

Privileges: `self.access` (access.py) holds the users, tokens, roles and ACLs; the checks PVE
makes inside handlers (storages, bridges, config keys, task owners, filtered listings) are called
from here, the per-endpoint ones by the server (permissions.py).

Not simulated (cluster-wide): HA (`hastart`/`hastop`), groups and pools, snapshots, backups,
replication, migration, shared storage, RRD lag (usage numbers are current, not 10 s old),
`TASK WARNINGS`, paused/suspended VMs.
"""

from __future__ import annotations

from provision.sim.models.agent import AgentMixin
from provision.sim.models.base import (
    GIB,
    STATE_FILE,
    TEMPLATE_NAME,
    TEMPLATE_VMID,
    Node,
    Storage,
    Vm,
    node_names,
)
from provision.sim.models.clone import CloneMixin
from provision.sim.models.config import ConfigMixin
from provision.sim.models.images import ImageMixin
from provision.sim.models.nodes import NodeMixin
from provision.sim.models.power import PowerMixin
from provision.sim.models.state import ClusterState
from provision.sim.models.tasks import TaskMixin
from provision.sim.models.vms import VmMixin

__all__ = [
    "GIB",
    "STATE_FILE",
    "TEMPLATE_NAME",
    "TEMPLATE_VMID",
    "Cluster",
    "Node",
    "Storage",
    "Vm",
    "node_names",
]


class Cluster(
    NodeMixin,
    VmMixin,
    CloneMixin,
    ImageMixin,
    ConfigMixin,
    PowerMixin,
    AgentMixin,
    TaskMixin,
    ClusterState,
):
    """All state of one simulated PVE cluster, persisted as JSON in `state_dir`.

    Not simulated: see the module docstring; each operation's docstring adds its own gaps.
    """
