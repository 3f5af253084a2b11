"""The simulator's GET /access/permissions and GET /nodes/{node}/network, which `labctl doctor`
reads: answers shaped as PVE's, privileges as the checks of every other method see them."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.sim.access import Access
from provision.sim.errors import PveError
from provision.sim.guests.null import NoGuestBackend
from provision.sim.models import Cluster

SPEC = {
    "roles": {"Lab": "VM.Audit VM.Clone", "Node": "Sys.Audit"},
    "users": ["lab@pve", "other@pve"],
    "tokens": {"lab@pve!tok": {"privsep": 1}},
    "acl": [
        {"path": "/vms", "roles": "Lab", "users": "lab@pve", "tokens": "lab@pve!tok"},
        {"path": "/nodes", "roles": "Node", "users": "lab@pve"},
    ],
}


def test_permissions_for_a_path_and_the_whole_tree(tmp_path: Path) -> None:
    access = Access(tmp_path)
    access.configure(SPEC)
    assert access.permissions_of("lab@pve!tok", "/vms/9000", None) == {
        "/vms/9000": {"VM.Audit": 1, "VM.Clone": 1}
    }
    # privilege separation: the token holds on /nodes only what its own ACLs give
    assert access.permissions_of("lab@pve!tok", "/nodes/pve", None) == {"/nodes/pve": {}}
    assert access.permissions_of("lab@pve", None, None) == {
        "/nodes": {"Sys.Audit": 1},
        "/vms": {"VM.Audit": 1, "VM.Clone": 1},
    }
    assert access.permissions_of("lab@pve", "/vms", "lab@pve!tok")  # one's own token
    with pytest.raises(PveError) as refused:
        access.permissions_of("other@pve", "/vms", "lab@pve")
    assert refused.value.status == 403


def test_network_lists_vmbr0_and_the_bridges_vms_use(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, NoGuestBackend())
    bridges = [i["iface"] for i in cluster.node_network("pve", "bridge")]
    assert bridges == ["vmbr0"]
    every = cluster.node_network("pve", None)
    assert {i["type"] for i in every} == {"eth", "bridge"}
    template = cluster.vms[9000]
    template.config["net1"] = "virtio=BC:24:11:00:00:01,bridge=vmbr7"
    assert [i["iface"] for i in cluster.node_network("pve", "any_bridge")] == ["vmbr0", "vmbr7"]
