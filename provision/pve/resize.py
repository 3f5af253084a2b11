"""Changing an existing VM: `resize` (cores, RAM, cpu type; a running VM keeps what PVE cannot
hot-plug pending until a reboot) and `up` on a VM that exists already (reshape, grow the disk,
start it; or finish one an interrupted `up` left untagged)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from provision.errors import NotLabctlVm, ProxmoxError, UsageError
from provision.progress import Stopwatch
from provision.pve.boot import Boot
from provision.pve.clone import Cloner
from provision.pve.cluster import Cluster, Resource, UpContext
from provision.pve.placement import Placement
from provision.pve.shapes import (
    CLONE_MARK,
    LABCTL_TAG,
    ResizeResult,
    ShapeRequest,
    VmInfo,
    boot_disk,
    changed_params,
    describe_shape_change,
    same_cpu_and_memory,
    shape_params,
)
from provision.shape import Shape, check_fits


def resize_request(shape: Shape | ShapeRequest) -> ShapeRequest:
    """What `resize` is asked to change; refuses a disk size (only `up` grows disks)."""
    if isinstance(shape, Shape):  # a whole Shape (e.g. from find()): its disk is not asked
        request = ShapeRequest(shape.cores, shape.memory_mib, shape.cpu_type, None)
    else:
        request = shape
    if request.disk_gib is not None:
        raise UsageError(
            "resize changes cores, RAM and cpu type; grow the disk with "
            "`labctl up NAME --disk SIZE`"
        )
    return request


class Reshaper:
    def __init__(self, cluster: Cluster, placement: Placement, cloner: Cloner, boot: Boot) -> None:
        self.cluster = cluster
        self.placement = placement
        self.cloner = cloner
        self.boot = boot

    # -- resize ----------------------------------------------------------------------------

    def resize(
        self, name: str, request: ShapeRequest, reboot: bool, *, allow_overcommit: bool
    ) -> ResizeResult:
        """Change cores/RAM/cpu type; a running VM keeps what PVE cannot hot-plug pending."""
        res = self.cluster.live(self.cluster.require_managed(name))
        before, pending_before, _, merged = self.cluster.pending(res)
        base = pending_before or before
        want = request.over(base)
        running = res.status == "running"
        if not same_cpu_and_memory(want, base):
            check_fits(
                want,
                self.placement.node_capacity(res.node),
                allow_overcommit=allow_overcommit,
                already_reserved_mib=before.memory_mib if running else 0,
            )
            self.cluster.reporter.stage("resize")
            self.cluster.apply_config(res, changed_params(shape_params(want), merged))
            self.cluster.reporter.step(describe_shape_change(base, want))
        pending = self.cluster.pending_keys(res) if running else ()
        rebooted = False
        if running and pending and reboot:
            self._reboot_and_reach(res)
            rebooted, pending = True, ()
        return ResizeResult(
            name=name,
            vmid=res.vmid,
            before=before,
            after=want,
            running=running,
            pending_keys=pending,
            rebooted=rebooted,
        )

    def _reboot_and_reach(self, res: Resource) -> None:
        self._reboot(res)
        ctx = UpContext(name=res.name, vmid=res.vmid, node=res.node)
        self.boot.reach(ctx, res, self.boot.agent.wait_for_address(ctx, res))

    def _reboot(self, res: Resource) -> None:
        self.cluster.reporter.stage("reboot")
        watch = Stopwatch()
        upid = self.cluster.client.post(f"{res.path}/status/reboot")
        self.cluster.wait(
            upid,
            f"reboot of {res.name}",
            timeout_s=self.cluster.seconds("timeouts.shutdown")
            + self.cluster.seconds("timeouts.task"),
        )
        self.cluster.reporter.step(f"rebooted (pending changes applied) in {watch.elapsed:.1f}s")

    # -- up on an existing VM --------------------------------------------------------------

    def reconcile(
        self,
        ctx: UpContext,
        res: Resource,
        request: ShapeRequest,
        allow_overcommit: bool,
        pubkey: str,
        net: str,
    ) -> VmInfo:
        """Bring an existing VM to the requested shape and SSH-ready, cloning nothing."""
        if res.lock == "clone":
            res = self._wait_unlocked(res)
        res = self.cluster.live(res)
        current_shape, _, config, merged = self.cluster.pending(res)
        adopting = not res.managed
        shape = self._target_shape(res, request, current_shape, config, adopting)
        ctx.created = True
        _refuse_shrinking(current_shape, shape)
        reshape = not same_cpu_and_memory(shape, current_shape)
        if reshape or adopting:
            reserved = current_shape.memory_mib if res.status == "running" else 0
            check_fits(
                shape,
                self.placement.node_capacity(res.node),
                allow_overcommit=allow_overcommit,
                already_reserved_mib=reserved,
            )
        if adopting:
            disk_gib = self.cloner.configure_new(ctx, shape, pubkey, net, None)
            shape = replace(shape, disk_gib=disk_gib)
        else:
            if reshape:
                self._reshape(ctx, res, current_shape, shape, merged)
            self._grow_if_asked(ctx, current_shape, shape, config)
        return self.boot.boot_and_reach(ctx, shape, start=res.status != "running")

    def _target_shape(
        self,
        res: Resource,
        request: ShapeRequest,
        current_shape: Shape,
        config: dict[str, Any],
        adopting: bool,
    ) -> Shape:
        """The shape to reach; a VM without the tag only when an interrupted `up` left it."""
        reporter = self.cluster.reporter
        if not adopting:
            reporter.step(
                f"VM {res.name} exists (vmid {res.vmid} on {res.node}, {res.status}): reconciling"
            )
            return request.over(current_shape)
        if CLONE_MARK not in str(config.get("description", "")):
            raise NotLabctlVm(
                f"a VM named {res.name} (vmid {res.vmid}) exists but labctl did not create "
                f"it (no '{LABCTL_TAG}' tag); choose another name"
            )
        reporter.step(f"finishing VM {res.name} (vmid {res.vmid}) left by an interrupted `up`")
        return request.over(self.cluster.config.default_shape())

    def _reshape(
        self, ctx: UpContext, res: Resource, current: Shape, shape: Shape, merged: dict[str, Any]
    ) -> None:
        ctx.stage = "reshape"
        self.cluster.reporter.stage("reshape")
        self.cluster.apply_config(res, changed_params(shape_params(shape), merged))
        self.cluster.reporter.step(f"{current.label} -> {shape.label}")
        if res.status == "running" and self.cluster.pending_keys(res):
            self._reboot(res)

    def _grow_if_asked(
        self, ctx: UpContext, current: Shape, shape: Shape, config: dict[str, Any]
    ) -> None:
        if shape.disk_gib is None or current.disk_gib is None or shape.disk_gib <= current.disk_gib:
            return
        disk = boot_disk(config)
        if disk:
            self.cloner.grow_disk(ctx, disk[0], disk[1], shape.disk_gib)

    def _wait_unlocked(self, res: Resource) -> Resource:
        """A VM still being cloned (by another `up`): wait until PVE unlocks it."""
        self.cluster.reporter.step(f"VM {res.name} is being cloned (lock: clone); waiting")
        deadline = time.monotonic() + self.cluster.seconds("timeouts.clone")
        delay = 0.2
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)
            found = self.cluster.named(self.cluster.resources(), res.name)
            if found is None:
                raise ProxmoxError(
                    f"the clone that was creating {res.name} failed; run "
                    f"`labctl up {res.name}` again"
                )
            if found.lock != "clone":
                return found
        raise ProxmoxError(
            f"VM {res.name} stays locked (clone)", hint="see the clone task in the PVE task log"
        )


def _refuse_shrinking(current: Shape, shape: Shape) -> None:
    if (
        shape.disk_gib is not None
        and current.disk_gib is not None
        and shape.disk_gib < current.disk_gib
    ):
        raise UsageError(
            f"--disk {shape.disk_gib}G is smaller than the VM's disk "
            f"({current.disk_gib}G): disks only grow"
        )
