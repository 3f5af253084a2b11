"""Making a new VM: clone the template under a freshly allocated VMID, configure it in one call
(shape, `labctl` tag, agent, cloud-init user, key and network), grow its boot disk; and, when a
later step fails, say what was left behind or remove it (--rollback).

Two `up`s at once are safe: a local lock serialises VMID allocation and the clone request, and a
lost race on the VMID (PVE reserves nothing) is retried with a new id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from provision.errors import (
    ConfigError,
    Interrupted,
    LabctlError,
    ProxmoxAPIError,
    ProxmoxError,
    TaskFailed,
)
from provision.guest.known_hosts import parse_public_key
from provision.progress import Stopwatch
from provision.pve.cluster import Cluster, LocalLocks, Resource, UpContext
from provision.pve.shapes import CLONE_MARK, LABCTL_TAG, boot_disk, grown_disk_gib, shape_params
from provision.pve.teardown import Teardown
from provision.shape import Shape

VMID_ATTEMPTS = 8


def is_race(error: LabctlError) -> bool:
    """Whether PVE refused because another client took the VMID first."""
    return "already exists" in str(error).lower()


def read_public_key(key_path: Path) -> str:
    """The `.pub` beside the private key ssh.key names (what cloud-init gets as sshkeys)."""
    key = key_path.expanduser()
    pub = key.with_name(key.name + ".pub")
    if pub.is_file():
        text = pub.read_text(encoding="utf-8").strip()
        parse_public_key(text)
        return text
    if not key.is_file():
        raise ConfigError(
            f"SSH key {key} does not exist",
            hint=f"create one: ssh-keygen -t ed25519 -f {key} -N ''",
        )
    raise ConfigError(
        f"{pub} is missing (labctl gives it to cloud-init)",
        hint=f"ssh-keygen -y -f {key} > {pub}",
    )


class Cloner:
    def __init__(self, cluster: Cluster, locks: LocalLocks) -> None:
        self.cluster = cluster
        self.locks = locks

    def public_key(self) -> str:
        """The public half of ssh.key, which cloud-init installs for ssh.user."""
        return read_public_key(Path(str(self.cluster.config.get("ssh.key"))))

    # -- clone -----------------------------------------------------------------------------

    def clone(self, ctx: UpContext, template: Resource, target: str, full: bool) -> None:
        ctx.stage = "clone"
        self.cluster.reporter.stage("clone")
        watch = Stopwatch()
        params = self._clone_params(ctx, template, target, full)
        for _attempt in range(VMID_ATTEMPTS):
            if self._clone_once(ctx, template, target, params):
                kind = "full" if full else "linked"
                self.cluster.reporter.step(
                    f"vmid {ctx.vmid} on {target} ({kind} clone) in {watch.elapsed:.1f}s"
                )
                ctx.timings["clone"] = watch.elapsed
                return
        raise ProxmoxError(
            f"could not allocate a VMID after {VMID_ATTEMPTS} attempts "
            "(other clients keep taking them)"
        )

    def _clone_params(
        self, ctx: UpContext, template: Resource, target: str, full: bool
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "name": ctx.name,
            "description": f"{CLONE_MARK} (labctl up)",
            "full": full,
        }
        if full:
            params["storage"] = str(self.cluster.config.get("template.storage")) or None
        if target != template.node:
            params["target"] = target
        return params

    def _clone_once(
        self, ctx: UpContext, template: Resource, target: str, params: dict[str, Any]
    ) -> bool:
        """One clone under a new VMID; False when another client took that VMID first."""
        client = self.cluster.client
        with self.locks.hold("nextid"):
            vmid = int(client.get("cluster/nextid"))
            ctx.clone_sent = True
            try:
                upid = client.post(f"{template.path}/clone", newid=vmid, **params)
            except ProxmoxAPIError as error:
                if is_race(error):
                    return False
                raise
        ctx.vmid, ctx.node, ctx.created = vmid, target, True
        try:
            self.cluster.wait(
                upid,
                f"clone of {template.name} to {ctx.name} (vmid {vmid})",
                timeout_s=self.cluster.seconds("timeouts.clone"),
            )
        except TaskFailed as error:
            ctx.created = False  # PVE removes the half-made VM when the clone task fails
            if is_race(error):
                return False
            raise
        return True

    # -- configure -------------------------------------------------------------------------

    def configure_new(
        self,
        ctx: UpContext,
        shape: Shape,
        pubkey: str,
        net: str,
        template_disk: tuple[str, int] | None,
    ) -> int | None:
        """Shape, tag and cloud-init in one call, then grow the boot disk; returns its size."""
        ctx.stage = "configure"
        self.cluster.reporter.stage("configure")
        current = self.cluster.client.get(f"{ctx.path}/config")
        params = self._config_params(shape, pubkey, net, current)
        self.cluster.client.put(f"{ctx.path}/config", **params)
        ctx.tagged = True
        self.cluster.reporter.step(
            f"{shape.label}, tag {LABCTL_TAG}, agent on, cloud-init user {params['ciuser']}, {net}"
        )
        disk = boot_disk(current) or template_disk
        if disk is None:
            return shape.disk_gib
        grow_to = grown_disk_gib(shape.disk_gib, disk[1])
        if grow_to is not None:
            self.grow_disk(ctx, disk[0], disk[1], grow_to)
        return grow_to or disk[1]

    def _config_params(
        self, shape: Shape, pubkey: str, net: str, current: dict[str, Any]
    ) -> dict[str, Any]:
        config = self.cluster.config
        params = shape_params(shape)
        params.update(
            {
                "tags": LABCTL_TAG,
                "agent": "enabled=1",
                "ciuser": str(config.get("ssh.user")),
                "sshkeys": quote(pubkey + "\n", safe=""),
                "ipconfig0": net,
                # PVE's default (1) has cloud-init upgrade every package at first boot, while labctl
                # deploys and measures (qemu-server src/PVE/QemuServer/Cloudinit.pm:186)
                "ciupgrade": bool(config.get("template.ciupgrade")),
                "digest": current.get("digest"),
            }
        )
        nameserver = str(config.get("network.nameserver")).strip()
        if nameserver:
            params["nameserver"] = nameserver
        net0 = self._net0_with_bridge(str(current.get("net0", "")))
        if net0:
            params["net0"] = net0
        return params

    def _net0_with_bridge(self, net0: str) -> str | None:
        bridge = str(self.cluster.config.get("template.bridge")).strip()
        if not net0 or not bridge:
            return None
        parts = net0.split(",")
        if f"bridge={bridge}" in parts:
            return None
        parts = [p for p in parts if not p.startswith("bridge=")] + [f"bridge={bridge}"]
        return ",".join(parts)

    def grow_disk(self, ctx: UpContext, disk: str, old_gib: int, new_gib: int) -> None:
        self.cluster.reporter.stage("disk")
        upid = self.cluster.client.put(f"{ctx.path}/resize", disk=disk, size=f"{new_gib}G")
        if upid:
            self.cluster.wait(upid, f"resize of {disk}")
        self.cluster.reporter.step(f"{disk} grown from {old_gib}G to {new_gib}G")


class Rollback:
    """After a failed `up`: name what was left behind, or destroy it when asked to."""

    def __init__(self, cluster: Cluster, teardown: Teardown) -> None:
        self.cluster = cluster
        self.teardown = teardown

    def after_failure(self, ctx: UpContext, error: LabctlError, rollback: bool) -> LabctlError:
        """Say what was left behind, or remove it with --rollback."""
        if ctx.clone_sent and not ctx.created:
            self._find_unanswered_clone(ctx)
        if not ctx.created or ctx.vmid is None:
            if isinstance(error, Interrupted):
                error.hint = "nothing was created"
            return error
        note = self._roll_back(ctx) if rollback else _left_in_place(ctx)
        error.hint = "; ".join(h for h in (error.hint, note) if h)
        return error

    def _roll_back(self, ctx: UpContext) -> str:
        where = f"VM {ctx.name} (vmid {ctx.vmid})"
        try:
            self.teardown.destroy(ctx.resource(tags=()))
            self.teardown.forget(ctx.name)
        except (LabctlError, KeyboardInterrupt) as cleanup:
            return f"rollback of {where} failed too: {cleanup}"
        return f"rolled back: {where} was destroyed"

    def _find_unanswered_clone(self, ctx: UpContext) -> None:
        """Interrupted while the clone request was in flight: PVE may have made the VM before
        its answer arrived; if a VM by that name exists now, it is ours to report."""
        try:
            found = self.cluster.named(self.cluster.resources(), ctx.name)
        except (LabctlError, KeyboardInterrupt):
            return
        if found is not None:
            ctx.vmid, ctx.node, ctx.created = found.vmid, found.node, True


def _left_in_place(ctx: UpContext) -> str:
    where = f"VM {ctx.name} (vmid {ctx.vmid})"
    if ctx.tagged:
        return (
            f"{where} was left in place; `labctl up {ctx.name}` retries, "
            f"`labctl down {ctx.name}` removes it"
        )
    return (
        f"{where} was left in place, not yet tagged; `labctl up {ctx.name}` "
        f"finishes it (then `labctl down {ctx.name}` can remove it)"
    )
