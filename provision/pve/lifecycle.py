"""The VM lifecycle on Proxmox VE: up (clone -> shape -> boot -> IP -> pinned key -> SSH), ls,
resize, down. Proxmox is the source of truth: labctl's VMs are found by name and the `labctl` tag.

`up` on an existing labctl VM reconciles it (reshape, start) instead of cloning again. A step that
fails after the clone leaves the VM in place (tagged, so `labctl down NAME` removes it) unless
`rollback` is asked for. Two `up`s at once are safe: a local lock serialises VMID allocation and
the clone request, and a lost race on the VMID (PVE reserves nothing) is retried with a new id.

`Lab` is the facade; each stage lives in its own module: placement (node, template, capacity),
clone (clone, configure, grow the disk, rollback), boot (start, agent address, host key, SSH,
cloud-init), resize (resize, reconcile an existing VM) and teardown (shutdown, destroy).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from provision.config import LabConfig, validate_vm_name
from provision.errors import Interrupted, LabctlError, ProxmoxAPIError
from provision.guest.types import GuestAddress
from provision.progress import Reporter
from provision.pve.agent import GuestAgent
from provision.pve.boot import Boot
from provision.pve.client import PveClient
from provision.pve.clone import Cloner, Rollback
from provision.pve.cloud_image import TemplateRequest
from provision.pve.cluster import Cluster, LocalLocks, Resource, UpContext
from provision.pve.lease import VmLease, lease_holder
from provision.pve.placement import Placement
from provision.pve.resize import Reshaper, resize_request
from provision.pve.shapes import ResizeResult, ShapeRequest, VmInfo, ipconfig
from provision.pve.teardown import Teardown
from provision.shape import NodeCapacity, Shape, check_fits

if TYPE_CHECKING:
    from provision.pve.template import TemplateResult

# The value types are part of Lab's API: callers import them from here.
__all__ = ["Lab", "ResizeResult", "ShapeRequest", "VmInfo"]


@dataclass(frozen=True)
class _UpOptions:
    """How `up` was asked to create a VM (where, what kind of clone, which address)."""

    node: str
    full: bool
    allow_overcommit: bool
    ip: str | None
    gateway: str | None


class Lab:
    """labctl's VMs on one Proxmox VE cluster."""

    def __init__(
        self,
        config: LabConfig,
        state_dir: Path,
        reporter: Reporter,
        *,
        client: PveClient | None = None,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.reporter = reporter
        self.known_hosts = state_dir / "known_hosts"
        self._cluster = Cluster(config, reporter, client=client)
        self._locks = LocalLocks(state_dir / "locks")
        self._agent = GuestAgent(self._cluster, self.known_hosts, self._locks)
        self._placement = Placement(self._cluster)
        self._cloner = Cloner(self._cluster, self._locks)
        self._boot = Boot(self._cluster, self._agent)
        self._reshaper = Reshaper(self._cluster, self._placement, self._cloner, self._boot)
        self._teardown = Teardown(self._cluster, self.known_hosts)
        self._rollback = Rollback(self._cluster, self._teardown)

    @property
    def client(self) -> PveClient:
        return self._cluster.client

    # -- reading -----------------------------------------------------------------------

    def node_capacity(self, node: str) -> NodeCapacity:
        return self._placement.node_capacity(node)

    def choose_node(self, wanted: str = "") -> str:
        """The configured node, else the online node with most free memory."""
        return self._placement.choose_node(wanted)

    def find(self, name: str) -> VmInfo:
        return self._info(self._cluster.require_managed(name), with_ip=True)

    def guest(self, name: str) -> GuestAddress:
        """SSH address of a running labctl VM, its host key pinned (re-pinned via the agent)."""
        return self._boot.guest(name)

    def managed_names(self) -> list[str]:
        return self._cluster.managed_names()

    def lease(self, name: str, command: str, wait_s: float | None = None) -> VmLease:
        """The lease to hold (`with`) while `command` changes or measures VM `name`."""
        res = self._cluster.require_managed(name)
        return VmLease(self.client, res.path, res.name, command, self.reporter, wait_s=wait_s)

    def _info(self, res: Resource, *, with_ip: bool) -> VmInfo:
        shape, later, current, _ = self._cluster.pending(res)
        ip = self._agent.address(res) if with_ip and res.status == "running" else None
        return VmInfo(
            name=res.name,
            vmid=res.vmid,
            node=res.node,
            status=res.status,
            shape=shape,
            ip=ip,
            uptime_s=res.uptime_s,
            tags=res.tags,
            pending=later is not None,
            pending_shape=later,
            lock=res.lock,
            lease=lease_holder(str(current.get("description") or ""), time.time()),
        )

    # -- up ----------------------------------------------------------------------------

    def up(
        self,
        name: str,
        shape: Shape | ShapeRequest | None = None,
        *,
        node: str = "",
        full: bool = False,
        allow_overcommit: bool = False,
        rollback: bool = False,
        ip: str | None = None,
        gateway: str | None = None,
    ) -> VmInfo:
        """Bring VM `name` to `shape` and SSH-ready: create it, or reconcile the existing one."""
        validate_vm_name(name)
        request = (
            ShapeRequest.exactly(shape) if isinstance(shape, Shape) else (shape or ShapeRequest())
        )
        ctx = UpContext(name=name)
        options = _UpOptions(node, full, allow_overcommit, ip, gateway)
        with self._locks.hold(f"vm-{name}"):
            try:
                return self._up(ctx, request, options)
            except KeyboardInterrupt:
                interrupted = Interrupted(f"interrupted during {ctx.stage}")
                raise self._rollback.after_failure(ctx, interrupted, rollback) from None
            except LabctlError as error:
                raise self._rollback.after_failure(ctx, error, rollback) from error

    def _up(self, ctx: UpContext, request: ShapeRequest, options: _UpOptions) -> VmInfo:
        self.reporter.stage("check")
        resources = self._cluster.resources()
        existing = self._cluster.named(resources, ctx.name)
        pubkey = self._cloner.public_key()
        net = self._ipconfig(options)
        if existing is None:
            return self._create(ctx, request, options, resources, pubkey, net)
        ctx.vmid, ctx.node, ctx.tagged = existing.vmid, existing.node, existing.managed
        if options.node and options.node != existing.node:
            self.reporter.warn(
                f"{ctx.name} already runs on {existing.node}; labctl does "
                f"not migrate VMs, so --node {options.node} is ignored"
            )
        return self._reshaper.reconcile(
            ctx, existing, request, options.allow_overcommit, pubkey, net
        )

    def _ipconfig(self, options: _UpOptions) -> str:
        """ipconfig0 from --ip/--gateway, else from the lab file's [network]."""
        ip, gateway = options.ip, options.gateway
        return ipconfig(
            ip if ip is not None else str(self.config.get("network.ip")),
            gateway if gateway is not None else str(self.config.get("network.gateway")),
        )

    def _create(
        self,
        ctx: UpContext,
        request: ShapeRequest,
        options: _UpOptions,
        resources: list[Resource],
        pubkey: str,
        net: str,
    ) -> VmInfo:
        """A new VM: placed and checked first, then cloned, configured and booted."""
        shape = request.over(self.config.default_shape())
        template = self._placement.template(resources, options.full)
        wanted_node = options.node or str(self.config.get("proxmox.node"))
        target = self._placement.choose_node(wanted_node)
        check_fits(shape, self.node_capacity(target), allow_overcommit=options.allow_overcommit)
        template_disk = self._placement.check_disk_request(template, shape)
        self.reporter.step(
            f"{shape.label} on node {target}; template {template.name} (vmid {template.vmid})"
        )
        self._clone_somewhere(ctx, template, target, shape, wanted_node, options)
        disk_gib = self._cloner.configure_new(ctx, shape, pubkey, net, template_disk)
        return self._boot.boot_and_reach(ctx, replace(shape, disk_gib=disk_gib))

    def _clone_somewhere(
        self,
        ctx: UpContext,
        template: Resource,
        target: str,
        shape: Shape,
        wanted_node: str,
        options: _UpOptions,
    ) -> None:
        """Clone to `target`; to the template's own node when its disk is on local storage
        and the node was labctl's choice, not the user's."""
        try:
            self._cloner.clone(ctx, template, target, options.full)
        except ProxmoxAPIError as error:
            if "local storage" not in error.message or target == template.node:
                raise
            if wanted_node:
                error.hint = (
                    f"template {template.name} lives on local storage of "
                    f"{template.node}: use --node {template.node}, or a template on "
                    "shared storage"
                )
                raise
            self.reporter.warn(
                f"template {template.name} is on local storage of "
                f"{template.node}; creating {ctx.name} there instead of {target}"
            )
            capacity = self.node_capacity(template.node)
            check_fits(shape, capacity, allow_overcommit=options.allow_overcommit)
            self._cloner.clone(ctx, template, template.node, options.full)

    # -- resize, down ------------------------------------------------------------------

    def resize(
        self,
        name: str,
        shape: Shape | ShapeRequest,
        reboot: bool = False,
        *,
        allow_overcommit: bool = False,
    ) -> ResizeResult:
        """Change cores/RAM/cpu type; a running VM keeps what PVE cannot hot-plug pending."""
        request = resize_request(shape)
        with self._locks.hold(f"vm-{name}"):
            return self._reshaper.resize(name, request, reboot, allow_overcommit=allow_overcommit)

    def down(self, name: str) -> VmInfo:
        """Shut down (graceful, then hard), destroy with purge, forget the pinned key."""
        with self._locks.hold(f"vm-{name}"):
            return self._teardown.down(name)

    def create_template(self, request: TemplateRequest) -> TemplateResult:
        """A cloud image made a template (or the existing one of that name checked)."""
        from provision.pve.template import TemplateBuilder

        with self._locks.hold(f"vm-{request.name}"):
            return TemplateBuilder(self._cluster, self._teardown, self.state_dir).create(request)

    # last in the class: a method named `list` would shadow the builtin in annotations
    def list(self, *, include_unmanaged: bool = False) -> list[VmInfo]:
        """labctl's VMs (with `include_unmanaged`, every non-template VM), sorted by name."""
        chosen = [
            r
            for r in self._cluster.resources()
            if not r.template and (r.managed or include_unmanaged)
        ]
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(chosen)))) as pool:
            infos = list(pool.map(lambda r: self._info(r, with_ip=r.managed), chosen))
        return sorted(infos, key=lambda i: (i.name, i.vmid))
