"""What the Proxmox checks share: one read of the cluster, the template and the lab file."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from provision.config import LabConfig
from provision.config_vms import VmSpec
from provision.pve.client import PveClient
from provision.pve.doctor.rules import Volume, boot_volume, parse_property_string


@dataclass
class Seen:
    """The lab file, the client, and what was read from PVE (each GET once per run)."""

    config: LabConfig
    client: PveClient
    template: dict[str, Any] | None = None  # its /cluster/resources entry
    template_config: dict[str, Any] = field(default_factory=dict)
    new_vms: dict[str, VmSpec] = field(default_factory=dict)  # lab VMs not made yet
    _cache: dict[str, Any] = field(default_factory=dict)

    def get(self, endpoint: str, **params: Any) -> Any:
        """A GET (each once per run); request(), as `path` may be one of the parameters."""
        key = endpoint + repr(sorted(params.items()))
        if key not in self._cache:
            self._cache[key] = self.client.request("GET", endpoint, params)
        return self._cache[key]

    @property
    def vmid(self) -> int:
        return int(self.template["vmid"]) if self.template else 0

    @property
    def volume(self) -> Volume | None:
        return boot_volume(self.template_config)

    def node_of(self, spec: VmSpec) -> str:
        """Where `up` puts the VM: its own node, proxmox.node, else most free memory."""
        if spec.node:
            return spec.node
        wanted = str(self.config.get("proxmox.node")).strip()
        if wanted:
            return wanted
        online = [n for n in self.get("nodes") or [] if n.get("status") == "online"]
        if not online:
            return ""
        best = max(online, key=lambda n: int(n.get("maxmem", 0)) - int(n.get("mem", 0)))
        return str(best.get("node", ""))

    def nodes(self) -> list[str]:
        """The nodes new VMs go to, else the template's."""
        found = {self.node_of(spec) for spec in self.new_vms.values()}
        if not found and self.template:
            found = {str(self.template["node"])}
        return sorted(n for n in found if n)

    def storage(self, node: str, name: str) -> dict[str, Any] | None:
        """GET /nodes/{node}/storage lists only what the caller may audit or allocate on."""
        entries = self.get(f"nodes/{node}/storage") or []
        return next((s for s in entries if s.get("storage") == name), None)

    def disk_storage(self, spec: VmSpec) -> str:
        """A linked clone's disk stays on the template's storage; a full one goes to
        template.storage (provision/pve/clone.py)."""
        volume = self.volume
        if spec.full or volume is None:
            return str(self.config.get("template.storage"))
        return volume.storage

    def bridge(self) -> str:
        """template.bridge, else the first NIC's bridge (what the clone keeps)."""
        configured = str(self.config.get("template.bridge")).strip()
        if configured:
            return configured
        net0 = parse_property_string(str(self.template_config.get("net0", "")), "model")
        return net0.get("bridge", "")

    def template_bridges(self) -> set[str]:
        """Cloning checks SDN.Use on the bridge of every NIC of the template."""
        return {
            bridge
            for key, value in self.template_config.items()
            if re.match(r"^net\d+$", key)
            and (bridge := parse_property_string(str(value), "model").get("bridge"))
        }
