"""The simulator's big classes are composed of per-resource parts, and its modules stay small.

`Cluster` (models/) and `ContainerBackend` (guests/) are built from mixins the way moto builds
`EC2Backend`. A method defined in two parts would silently shadow the other through the MRO, so
every method has exactly one home.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import provision.sim
from provision.sim.guests.container import ContainerBackend
from provision.sim.guests.null import NoGuestBackend
from provision.sim.models import GIB, Cluster, node_names
from provision.sim.models.agent import AgentMixin
from provision.sim.models.clone import CloneMixin
from provision.sim.models.config import ConfigMixin
from provision.sim.models.nodes import NodeMixin
from provision.sim.models.power import PowerMixin
from provision.sim.models.state import ClusterState
from provision.sim.models.tasks import TaskMixin
from provision.sim.models.vms import VmMixin

MODULE_LINE_BUDGET = 400


def _homes(cls: type) -> dict[str, list[str]]:
    """Each attribute defined in the class or its parts -> the classes that define it."""
    homes: dict[str, list[str]] = {}
    for part in cls.__mro__:
        if part is object:
            continue
        for name in vars(part):
            if not (name.startswith("__") and name.endswith("__")):
                homes.setdefault(name, []).append(part.__name__)
    return homes


@pytest.mark.parametrize("composed", [Cluster, ContainerBackend], ids=lambda c: c.__name__)
def test_every_method_of_a_composed_class_has_exactly_one_home(composed: type) -> None:
    shadowed = {name: parts for name, parts in _homes(composed).items() if len(parts) > 1}
    assert shadowed == {}


def test_cluster_is_one_backend_of_the_per_resource_parts() -> None:
    parts = {NodeMixin, VmMixin, CloneMixin, ConfigMixin, PowerMixin, AgentMixin, TaskMixin}
    assert parts <= set(Cluster.__mro__)
    assert all(issubclass(part, ClusterState) for part in parts)
    assert [name for name, value in vars(Cluster).items() if callable(value)] == []


def test_a_cluster_built_directly_answers_through_its_parts(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, NoGuestBackend(), nodes=2, node_memory=8 * GIB)
    try:
        assert list(cluster.nodes) == node_names(2) == ["pve", "pve2"]
        assert [vm["vmid"] for vm in cluster.vm_list("pve")] == [9000]  # VmMixin
        assert cluster.nextid(None) == "100"
        storages = {s["storage"] for s in cluster.node_storages("pve2", "images")}  # NodeMixin
        assert storages == {"local-lvm"}
        assert cluster.node_status("pve")["memory"]["total"] == 8 * GIB
    finally:
        cluster.close()
    assert (tmp_path / "state.json").exists()  # ClusterState


def test_no_simulator_module_is_over_the_line_budget() -> None:
    root = Path(provision.sim.__file__).parent
    sizes = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in root.rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > MODULE_LINE_BUDGET} == {}
