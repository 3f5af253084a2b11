"""Removing a labctl VM: shut it down (graceful, then hard), destroy it with its disks, and
forget its pinned host key."""

from __future__ import annotations

from pathlib import Path

from provision.errors import ProxmoxError, TaskFailed
from provision.guest.known_hosts import forget_host_key
from provision.progress import Stopwatch
from provision.pve.cluster import Cluster, Resource
from provision.pve.shapes import VmInfo
from provision.shape import Shape

# How much longer than its own timeout a graceful shutdown task may take before labctl stops
# the VM hard (PVE's task outlives the guest's timeout by its own bookkeeping).
SHUTDOWN_TASK_SLACK_S = 30.0


class Teardown:
    def __init__(self, cluster: Cluster, known_hosts: Path) -> None:
        self.cluster = cluster
        self.known_hosts = known_hosts

    def down(self, name: str) -> VmInfo:
        """Shut down (graceful, then hard), destroy with purge, forget the pinned key."""
        res = self.cluster.require_managed(name)
        info = VmInfo(
            name=res.name,
            vmid=res.vmid,
            node=res.node,
            status=res.status,
            shape=Shape(1, 512),
            ip=None,
            uptime_s=res.uptime_s,
            tags=res.tags,
            pending=False,
        )
        self.destroy(res)
        self.forget(name)
        return info

    def forget(self, name: str) -> None:
        forget_host_key(self.known_hosts, name)

    def destroy(self, res: Resource) -> None:
        client = self.cluster.client
        status = client.get(f"{res.path}/status/current")
        if status.get("status") == "running":
            self._shutdown(res)
        self.cluster.reporter.stage("destroy")
        upid = client.delete(res.path, purge=True, **{"destroy-unreferenced-disks": True})
        self.cluster.wait(upid, f"destroy of {res.name} (vmid {res.vmid})")
        self.cluster.reporter.step(f"VM {res.name} (vmid {res.vmid}) destroyed")

    def _shutdown(self, res: Resource) -> None:
        reporter = self.cluster.reporter
        reporter.stage("shutdown")
        timeout = int(self.cluster.config.get("timeouts.shutdown"))
        watch = Stopwatch()
        upid = self.cluster.client.post(f"{res.path}/status/shutdown", timeout=timeout)
        try:
            self.cluster.wait(
                upid, f"shutdown of {res.name}", timeout_s=timeout + SHUTDOWN_TASK_SLACK_S
            )
            reporter.step(f"shut down in {watch.elapsed:.1f}s")
            return
        except (TaskFailed, ProxmoxError) as error:
            reporter.step(f"graceful shutdown failed ({error.message}); stopping")
        upid = self.cluster.client.post(f"{res.path}/status/stop")
        self.cluster.wait(upid, f"stop of {res.name}")
        reporter.step(f"stopped in {watch.elapsed:.1f}s")
