"""How labctl names a VM it will not touch: one that exists without the `labctl` tag, a
template, or none at all; each says which it is."""

from __future__ import annotations

from typing import Any

import pytest

from provision.config import KEYS, LabConfig
from provision.errors import ExitCode, NotLabctlVm, VmNotFound
from provision.progress import NullReporter
from provision.pve.cluster import Cluster

RESOURCES = [
    {"type": "qemu", "vmid": 9000, "node": "pve", "name": "ubuntu", "template": 1},
    {"type": "qemu", "vmid": 101, "node": "pve2", "name": "foreign", "tags": "web"},
    {"type": "qemu", "vmid": 102, "node": "pve", "name": "ours", "tags": "labctl"},
]


class ResourcesClient:
    def get(self, path: str, **_params: Any) -> Any:
        assert path == "cluster/resources"
        return RESOURCES


def cluster() -> Cluster:
    config = LabConfig(values={k.path: k.default for k in KEYS})
    return Cluster(config, NullReporter(), client=ResourcesClient())  # type: ignore[arg-type]


def test_a_vm_without_the_tag_is_said_to_exist_and_refused() -> None:
    with pytest.raises(NotLabctlVm) as caught:
        cluster().require_managed("foreign")
    assert caught.value.message == (
        "VM foreign exists (vmid 101 on pve2) but lacks the 'labctl' tag: labctl did not "
        "create it and will not touch it"
    )
    assert caught.value.exit_code == ExitCode.PROXMOX


def test_a_template_is_refused_as_a_template_not_called_missing() -> None:
    with pytest.raises(NotLabctlVm, match=r"ubuntu \(vmid 9000 on pve\) is a template"):
        cluster().require_managed("ubuntu")


def test_only_a_name_no_vm_has_is_not_found() -> None:
    with pytest.raises(VmNotFound, match="no VM named ghost"):
        cluster().require_managed("ghost")
    assert cluster().require_managed("ours").vmid == 102
