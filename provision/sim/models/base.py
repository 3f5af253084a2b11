"""The plain state of a simulated cluster: storages, nodes and VMs, and what a fresh state holds.

No rules live here (those are the parts of `Cluster`); these are the records they work on and
persist in state.json.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from provision.sim import vmconfig

STATE_FILE = "state.json"
STATE_VERSION = 1
TEMPLATE_VMID = 9000
TEMPLATE_NAME = "ubuntu-2404-cloud"
GIB = 1024**3
NODE_BASE_MEMORY = 2 * GIB  # what the host itself uses, so free memory is never the full total
KEEP_TASKS = 500


@dataclass
class Storage:
    """A node-local storage. Not simulated: real capacity accounting, shared storages."""

    storage: str
    type: str
    content: tuple[str, ...]
    total: int

    def supports(self, content: str) -> bool:
        return content in self.content


@dataclass
class Node:
    """A cluster node. Usage numbers are derived from the VMs running on it."""

    name: str
    maxcpu: int
    maxmem: int
    booted_at: float
    cpu_model: str = "AMD Ryzen 9 5950X 16-Core Processor"


@dataclass
class Vm:
    """A QEMU VM: its config file (current + [PENDING]) and its run state."""

    vmid: int
    node: str
    config: dict[str, str]
    pending: dict[str, str] = field(default_factory=dict)
    pending_delete: dict[str, int] = field(default_factory=dict)  # key -> 1 if forced
    status: str = "stopped"
    started_at: float | None = None
    linked_base: int | None = None  # template VMID whose base disk this VM's disk is linked to
    # A disk imported from a cloud image has no qemu-guest-agent: the agent answers only once
    # the guest has the binary its package installs (see AgentMixin). Clones inherit this.
    agent_binary_required: bool = False

    @property
    def running(self) -> bool:
        return self.status == "running"

    def merged(self) -> dict[str, str]:
        """Config with pending values applied (what GET config returns without current=1)."""
        merged = {k: v for k, v in self.config.items() if k not in self.pending_delete}
        merged.update(self.pending)
        return merged

    def digest(self) -> str:
        return vmconfig.digest(self.config, self.pending, self.pending_delete)

    def apply_pending(self) -> None:
        """`vmconfig_apply_pending`: everything pending becomes current."""
        for key in self.pending_delete:
            self.config.pop(key, None)
        self.config.update(self.pending)
        self.pending.clear()
        self.pending_delete.clear()

    @property
    def is_template(self) -> bool:
        return self.config.get("template") == "1"

    @property
    def agent_enabled(self) -> bool:
        value = self.config.get("agent")
        if value is None:
            return False
        first = value.split(",")[0]
        enabled = first.split("=", 1)[1] if first.startswith("enabled=") else first
        return enabled in ("1", "on", "yes", "true")


def default_storages() -> list[Storage]:
    return [
        # `import` (PVE 8.2+) is what download-url stores cloud images as, for import-from
        Storage("local", "dir", ("iso", "vztmpl", "snippets", "backup", "import"), 100 * GIB),
        Storage("local-lvm", "lvmthin", ("images", "rootdir"), 400 * GIB),
    ]


def template_config() -> dict[str, str]:
    """VM 9000, a cloud-init Ubuntu 24.04 template as a homelab would prepare it."""
    return {
        "agent": "1",
        "boot": "order=scsi0;ide2;net0",
        "cores": "2",
        "cpu": "x86-64-v2-AES",
        "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
        "ipconfig0": "ip=dhcp",
        "memory": "2048",
        "meta": f"creation-qemu=9.2.0,ctime={int(time.time())}",
        "name": TEMPLATE_NAME,
        "net0": f"virtio={vmconfig.random_mac()},bridge=vmbr0",
        "ostype": "l26",
        "scsi0": "local-lvm:base-9000-disk-0,size=3584M",
        "scsihw": "virtio-scsi-pci",
        "serial0": "socket",
        "smbios1": f"uuid={uuid.uuid4()}",
        "sockets": "1",
        "template": "1",
        "vga": "serial0",
        "vmgenid": str(uuid.uuid4()),
    }


def node_names(count: int) -> list[str]:
    """pve, pve2, pve3, ..."""
    return ["pve" if i == 0 else f"pve{i + 1}" for i in range(count)]


def truthy(value: Any) -> bool:
    """A PVE boolean parameter or config value that is set and true."""
    return value is not None and str(value) in ("1", "True", "true")
