"""Values every check shares: the report row, the privilege needs, the storage rules' tables."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

OK, WARNING, PROBLEM = "ok", "warning", "problem"
GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Check:
    """One row of the report."""

    name: str
    status: str  # OK, WARNING or PROBLEM
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Need:
    """A privilege labctl needs and where PVE checks it: on the template (`/vms/<vmid>`), the
    new VMs (`/vms`), the node, the storage of the disks, or the bridge of the NIC."""

    privilege: str
    on: str


# README's LabctlRole (tests/unit/test_doctor.py keeps the two equal).
NEEDED_PRIVILEGES: tuple[Need, ...] = (
    Need("VM.Audit", "template"),  # find it in /cluster/resources, read its config
    Need("VM.Clone", "template"),
    *(
        Need(privilege, "vms")
        for privilege in (
            "VM.Allocate", "VM.Audit", "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk",
            "VM.Config.Memory", "VM.Config.Options", "VM.GuestAgent.Audit",
            "VM.GuestAgent.FileRead", "VM.PowerMgmt",
        )
    ),
    Need("Sys.Audit", "node"),  # the node's free memory
    Need("Datastore.AllocateSpace", "storage"),  # clone and grow the disk
    Need("SDN.Use", "bridge"),  # every NIC's bridge, when cloning
)  # fmt: skip

LINKED_CLONE_TYPES = frozenset({"lvmthin", "zfspool", "zfs", "rbd", "btrfs"})
FILE_STORAGE_TYPES = frozenset({"dir", "nfs", "cifs", "glusterfs"})
HIDES_AVX2 = frozenset({"kvm32", "kvm64", "qemu32", "qemu64", "x86-64-v2", "x86-64-v2-AES"})
_DRIVE_KEY = re.compile(r"^(ide|sata|scsi|virtio)\d+$")
