"""Nodes and storage: cluster resources, the node list and status, storage lists."""

from __future__ import annotations

import functools
import time
from typing import Any

from provision.sim import permissions, vmconfig
from provision.sim.access import ROOT
from provision.sim.models.base import GIB, NODE_BASE_MEMORY, Node, Storage
from provision.sim.models.vms import VmMixin


class NodeMixin(VmMixin):
    """GET /cluster/resources, /nodes, /nodes/{node}/status and /nodes/{node}/storage.

    Builds on the VM read side: resources list VMs, and storage usage counts their disks.
    """

    def resources(self, kind: str | None, user: str = ROOT) -> list[dict[str, Any]]:
        """GET /cluster/resources: VMs only with VM.Audit (Cluster.pm:588), node usage only with
        Sys.Audit (Cluster.pm:622), storages only with Datastore.Audit (Cluster.pm:647).

        Not simulated: pool/network/sdn entries, RRD lag, lxc.
        """
        with self.lock:
            vms = sorted(self.vms.values(), key=lambda v: v.vmid)
            nodes = list(self.nodes.values())
        sees = functools.partial(permissions.sees, self.access, user)
        result: list[dict[str, Any]] = []
        if kind in (None, "vm"):
            result += [self._vm_resource(vm) for vm in vms if sees(f"/vms/{vm.vmid}", ["VM.Audit"])]
        if kind in (None, "node"):
            for node in nodes:
                entry = self._node_resource(node)
                result.append(
                    entry if sees(f"/nodes/{node.name}", ["Sys.Audit"]) else _without_stats(entry)
                )
        if kind in (None, "storage"):
            for node in nodes:
                result += [
                    self._storage_json(node.name, s, resource=True)
                    for s in self.storages
                    if sees(f"/storage/{s.storage}", ["Datastore.Audit"])
                ]
        return result

    def _node_usage(self, node: Node) -> tuple[float, int]:
        with self.lock:
            running = [v for v in self.vms.values() if v.node == node.name and v.running]
        used = NODE_BASE_MEMORY + sum(vmconfig.memory_mib(v.config) * 1024**2 for v in running)
        cpu = min(1.0, 0.01 + 0.02 * len(running))
        return cpu, min(used, node.maxmem)

    def _node_resource(self, node: Node) -> dict[str, Any]:
        cpu, used = self._node_usage(node)
        return {
            "id": f"node/{node.name}",
            "node": node.name,
            "type": "node",
            "status": "online",
            "cpu": cpu,
            "maxcpu": node.maxcpu,
            "mem": used,
            "maxmem": node.maxmem,
            "disk": 8 * GIB,
            "maxdisk": 100 * GIB,
            "uptime": int(time.time() - node.booted_at),
            "level": "",
            "cgroup-mode": 2,
        }

    def _storage_json(self, node: str, storage: Storage, resource: bool) -> dict[str, Any]:
        used = 0
        if storage.supports("images"):
            with self.lock:
                used = sum(self._disk_bytes(v) for v in self.vms.values() if v.node == node)
        common = {
            "storage": storage.storage,
            "content": ",".join(sorted(storage.content)),
            "shared": 0,
        }
        if resource:
            return {
                **common,
                "id": f"storage/{node}/{storage.storage}",
                "node": node,
                "type": "storage",
                "status": "available",
                "plugintype": storage.type,
                "disk": used,
                "maxdisk": storage.total,
            }
        return {
            **common,
            "type": storage.type,
            "active": 1,
            "enabled": 1,
            "total": storage.total,
            "used": used,
            "avail": storage.total - used,
            "used_fraction": used / storage.total,
        }

    def nodes_list(self, user: str = ROOT) -> list[dict[str, Any]]:
        """GET /nodes; usage numbers only with Sys.Audit on the node (Nodes.pm:2986-2987)."""
        from provision.sim.tls import current_fingerprint

        result = []
        for node in self.nodes.values():
            entry = self._node_resource(node)
            if not permissions.sees(self.access, user, f"/nodes/{node.name}", ["Sys.Audit"]):
                entry = _without_stats(entry)
            entry["ssl_fingerprint"] = current_fingerprint(self.state_dir)
            result.append(entry)
        return result

    def node_status(self, name: str) -> dict[str, Any]:
        """GET /nodes/{node}/status. Not simulated: ksm, swap use, boot-info details."""
        node = self.node(name)
        cpu, used = self._node_usage(node)
        return {
            "cpu": cpu,
            "wait": 0.0,
            "uptime": int(time.time() - node.booted_at),
            "idle": 0,
            "loadavg": ["0.10", "0.15", "0.20"],
            "memory": {
                "total": node.maxmem,
                "used": used,
                "free": node.maxmem - used,
                "available": node.maxmem - used,
            },
            "swap": {"total": 8 * GIB, "used": 0, "free": 8 * GIB},
            "rootfs": {"total": 100 * GIB, "used": 8 * GIB, "free": 92 * GIB, "avail": 92 * GIB},
            "cpuinfo": {
                "cpus": node.maxcpu,
                "cores": node.maxcpu // 2 or 1,
                "sockets": 1,
                "model": node.cpu_model,
                "mhz": "3400.000",
                "hvm": "1",
                "flags": "fpu sse sse2 avx avx2",
                "user_hz": 100,
            },
            "ksm": {"shared": 0},
            "kversion": "Linux 6.14.8-2-pve #1 SMP PREEMPT_DYNAMIC",
            "current-kernel": {
                "sysname": "Linux",
                "release": "6.14.8-2-pve",
                "machine": "x86_64",
                "version": "#1 SMP PREEMPT_DYNAMIC",
            },
            "boot-info": {"mode": "efi", "secureboot": 0},
            "pveversion": "pve-manager/9.2.0/simulated",
        }

    def node_storages(
        self, name: str, content: str | None, user: str = ROOT
    ) -> list[dict[str, Any]]:
        """GET /nodes/{node}/storage: only storages with Datastore.Audit or .AllocateSpace
        (pve-storage src/PVE/API2/Storage/Status.pm:244-245)."""
        self.node(name)
        privs = ["Datastore.Audit", "Datastore.AllocateSpace"]
        return [
            self._storage_json(name, s, resource=False)
            for s in self.storages
            if (content is None or s.supports(content))
            and permissions.sees(self.access, user, f"/storage/{s.storage}", privs, any_of=True)
        ]

    def node_network(self, name: str, kind: str | None) -> list[dict[str, Any]]:
        """GET /nodes/{node}/network (pve-manager PVE/API2/Network.pm `index`): the node's
        interfaces from /etc/network/interfaces, `lo` left out, filtered by `type`. Here: eno1,
        the bridge vmbr0 on it, and a bridge for every other one the node's VMs' NICs name.

        Not simulated: bonds, VLANs, OVS, addresses beyond vmbr0's, pending `changes`.
        """
        self.node(name)
        with self.lock:
            configs = [v.config for v in self.vms.values() if v.node == name]
        bridges = {"vmbr0"} | {
            bridge
            for config in configs
            for key, value in config.items()
            if vmconfig.NET_KEY.match(key) and (bridge := vmconfig.drive_option(value, "bridge"))
        }
        eth = {"iface": "eno1", "type": "eth", "active": 1, "exists": 1, "families": ["inet"],
               "method": "manual", "priority": 1}  # fmt: skip
        interfaces: list[dict[str, Any]] = [eth]
        for index, bridge in enumerate(sorted(bridges), start=2):
            ports = "eno1" if bridge == "vmbr0" else ""
            interfaces.append(
                {
                    "iface": bridge,
                    "type": "bridge",
                    "active": 1,
                    "autostart": 1,
                    "families": ["inet"],
                    "method": "manual",
                    "priority": index,
                    "bridge_ports": ports,
                    "bridge_stp": "off",
                    "bridge_fd": "0",
                }
            )
        wanted = {"any_bridge": {"bridge", "OVSBridge"}}.get(kind or "", {kind})
        return [i for i in interfaces if kind is None or i["type"] in wanted]


def _without_stats(entry: dict[str, Any]) -> dict[str, Any]:
    """A node entry as a caller without Sys.Audit sees it (pve-manager API2Tools.pm:38-79)."""
    hidden = {"uptime", "cpu", "mem", "disk", "maxcpu", "maxmem", "maxdisk"}
    return {k: v for k, v in entry.items() if k not in hidden}
