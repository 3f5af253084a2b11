"""The VM read side: nextid, the VM list, status, config and pending changes."""

from __future__ import annotations

import time
from typing import Any

from provision.sim import permissions, vmconfig
from provision.sim.access import ROOT
from provision.sim.errors import PveError
from provision.sim.models.base import Vm
from provision.sim.models.state import ClusterState


class VmMixin(ClusterState):
    """GET /cluster/nextid and the VM GETs (list, status/current, config, pending)."""

    def nextid(self, vmid: int | None) -> str:
        """GET /cluster/nextid. Returns a *string*, as PVE's JSON::XS stringifies the hash key."""
        with self.lock:
            if vmid is not None:
                if vmid in self.vms:
                    raise PveError.params({"vmid": f"VM {vmid} already exists"})
                return str(vmid)
            lower, upper = self.settings.nextid_lower, self.settings.nextid_upper
            for candidate in range(lower, upper):
                if candidate not in self.vms:
                    return str(candidate)
        raise PveError.internal(f"unable to get any free VMID in range [{lower}, {upper}]")

    def _vm_resource(self, vm: Vm) -> dict[str, Any]:
        status = self._vm_status(vm)
        entry: dict[str, Any] = {
            "id": f"qemu/{vm.vmid}",
            "vmid": vm.vmid,
            "node": vm.node,
            "type": "qemu",
            "status": status["status"],
            "name": status["name"],
            "template": 1 if vm.is_template else 0,
            "maxcpu": status["cpus"],
            "cpu": status["cpu"],
            "maxmem": status["maxmem"],
            "mem": status["mem"],
            "memhost": status["mem"],
            "maxdisk": status["maxdisk"],
            "disk": 0,
            "netin": 0,
            "netout": 0,
            "diskread": 0,
            "diskwrite": 0,
            "uptime": status["uptime"],
        }
        for key in ("lock", "tags"):
            if key in status:
                entry[key] = status[key]
        return entry

    def vm_list(self, node: str, user: str = ROOT) -> list[dict[str, Any]]:
        """GET /nodes/{node}/qemu: only VMs with VM.Audit (Qemu.pm:1113)."""
        self.node(node)
        with self.lock:
            vms = [
                v
                for v in self.vms.values()
                if v.node == node
                and permissions.sees(self.access, user, f"/vms/{v.vmid}", ["VM.Audit"])
            ]
        result = []
        for vm in sorted(vms, key=lambda v: v.vmid):
            status = self._vm_status(vm)
            entry = {
                k: status[k]
                for k in (
                    "vmid",
                    "status",
                    "name",
                    "cpus",
                    "maxmem",
                    "mem",
                    "maxdisk",
                    "disk",
                    "uptime",
                    "cpu",
                    "netin",
                    "netout",
                    "diskread",
                    "diskwrite",
                )
            }
            for key in ("lock", "tags", "template", "pid"):
                if key in status:
                    entry[key] = status[key]
            result.append(entry)
        return result

    def _disk_bytes(self, vm: Vm) -> int:
        total = 0
        for key, _ in vmconfig.drives(vm.config):
            value = vm.config[key]
            size = vmconfig.drive_option(value, "size")
            if size and not vmconfig.is_cdrom(value):
                total += vmconfig.parse_size(size)
        return total

    def _boot_disk_bytes(self, vm: Vm) -> int:
        for key, _ in vmconfig.drives(vm.config):
            value = vm.config[key]
            size = vmconfig.drive_option(value, "size")
            if size and not vmconfig.is_cdrom(value):
                return vmconfig.parse_size(size)
        return 0

    def _vm_status(self, vm: Vm) -> dict[str, Any]:
        host_cpus = self.nodes[vm.node].maxcpu
        config = dict(vm.config)
        cpus = vmconfig.vcpus(config, host_cpus)
        maxmem = vmconfig.memory_mib(config) * 1024**2
        status: dict[str, Any] = {
            "vmid": vm.vmid,
            "status": vm.status,
            "qmpstatus": vm.status,
            "name": config.get("name", f"VM {vm.vmid}"),
            "cpus": cpus,
            "maxmem": maxmem,
            "mem": 0,
            "memhost": 0,
            "cpu": 0.0,
            "uptime": 0,
            "disk": 0,
            "maxdisk": self._boot_disk_bytes(vm),
            "netin": 0,
            "netout": 0,
            "diskread": 0,
            "diskwrite": 0,
            "ha": {"managed": 0},
        }
        if vm.running:
            cpu, mem = self.backend.usage(vm.vmid)
            status.update(
                {
                    "mem": mem,
                    "memhost": mem,
                    "cpu": round(cpu / max(cpus, 1), 4),
                    "uptime": int(time.time() - (vm.started_at or time.time())),
                    "pid": 100000 + vm.vmid,
                    "running-machine": "pc-i440fx-9.2+pve0",
                    "running-qemu": "9.2.0",
                }
            )
        if "lock" in config:
            status["lock"] = config["lock"]
        if "tags" in config:
            status["tags"] = config["tags"]
        if vm.is_template:
            status["template"] = 1
        if any(k.startswith("serial") for k in config):
            status["serial"] = 1
        if vm.agent_enabled:
            status["agent"] = 1
        return status

    def status_current(self, node: str, vmid: int) -> dict[str, Any]:
        """GET status/current. Not simulated: blockstat, nics, ballooninfo, pressure fields."""
        with self.lock:
            vm = self.vm(node, vmid)
        return self._vm_status(vm)

    def get_config(
        self, node: str, vmid: int, current: bool, snapshot: str | None = None
    ) -> dict[str, Any]:
        """GET config: pending applied unless current=1; `digest` of the whole file.

        Not simulated: snapshots (a `snapshot` parameter always names a missing one).
        """
        with self.lock:
            vm = self.vm(node, vmid)
            if snapshot is not None:
                raise PveError.internal(f"snapshot '{snapshot}' does not exist")
            config = dict(vm.config) if current else vm.merged()
            result = vmconfig.typed(config)
            result["digest"] = vm.digest()
        return result

    def get_pending(self, node: str, vmid: int) -> list[dict[str, Any]]:
        """GET pending: every key with value / pending / delete (GuestHelpers.pm)."""
        with self.lock:
            vm = self.vm(node, vmid)
            current = vmconfig.typed(vm.config)
            pending = vmconfig.typed(vm.pending)
            result: list[dict[str, Any]] = []
            for key in sorted(set(current) | set(pending) | set(vm.pending_delete)):
                entry: dict[str, Any] = {"key": key}
                if key in current:
                    entry["value"] = current[key]
                if key in pending:
                    entry["pending"] = pending[key]
                if key in vm.pending_delete:
                    entry["delete"] = 2 if vm.pending_delete[key] else 1
                result.append(entry)
            result.append({"key": "digest", "value": vm.digest()})
        return result
