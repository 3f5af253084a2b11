"""From a configured VM to one labctl can use: start it, wait for the guest agent's address, pin
the host key read through the agent, wait until SSH answers with key auth and cloud-init has
finished. Also the address of a VM that already runs (`guest`)."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

from provision.errors import CommandFailed, GuestError, HostKeyMismatch
from provision.guest.types import GuestAddress
from provision.progress import Stopwatch
from provision.pve.agent import GuestAgent
from provision.pve.cluster import Cluster, Resource, UpContext
from provision.pve.shapes import LABCTL_TAG, VmInfo
from provision.shape import Shape

# cloud-init may regenerate the host key after the agent showed one: re-read it this often.
HOST_KEY_REREADS = 3


class Boot:
    def __init__(self, cluster: Cluster, agent: GuestAgent) -> None:
        self.cluster = cluster
        self.agent = agent

    @property
    def known_hosts(self) -> Path:
        return self.agent.known_hosts

    def boot_and_reach(self, ctx: UpContext, shape: Shape, *, start: bool = True) -> VmInfo:
        """Start the VM (unless it runs) and wait until SSH and cloud-init are done."""
        assert ctx.vmid is not None
        # paramiko takes a few hundred ms to import: do it while the VM boots, not after.
        threading.Thread(
            target=importlib.import_module, args=("provision.guest.ssh",), daemon=True
        ).start()
        if start:
            self._start(ctx)
        res = ctx.resource(tags=(LABCTL_TAG,))
        ip = self.agent.wait_for_address(ctx, res)
        self.reach(ctx, res, ip)
        return VmInfo(
            name=ctx.name,
            vmid=ctx.vmid,
            node=ctx.node,
            status="running",
            shape=shape,
            ip=ip,
            uptime_s=0,
            tags=(LABCTL_TAG,),
            pending=False,
        )

    def _start(self, ctx: UpContext) -> None:
        ctx.stage = "start"
        self.cluster.reporter.stage("start")
        watch = Stopwatch()
        upid = self.cluster.client.post(f"{ctx.path}/status/start")
        self.cluster.wait(upid, f"start of {ctx.name}")
        self.cluster.reporter.step(f"started in {watch.elapsed:.1f}s")

    def reach(self, ctx: UpContext, res: Resource, ip: str) -> None:
        """Pin the host key from the agent, then wait for SSH and cloud-init."""
        reporter = self.cluster.reporter
        ctx.stage = "host key"
        reporter.stage("host key")
        entry = self.agent.pin_host_key(res, ip)
        reporter.step(
            f"pinned {entry.split()[1]} key of {ip} from the guest agent into {self.known_hosts}"
        )
        ctx.stage = "ssh"
        reporter.stage("ssh")
        watch = Stopwatch()
        timeout = self.cluster.seconds("timeouts.ssh")
        address = self.address(ctx.name, ip)
        self._wait_for_ssh(ctx, res, address, timeout, watch)
        reporter.step(f"{address.user}@{ip} answers (key auth) after {watch.elapsed:.1f}s")
        self._wait_cloud_init(ctx, address, timeout)

    def _wait_for_ssh(
        self, ctx: UpContext, res: Resource, address: GuestAddress, timeout: float, watch: Stopwatch
    ) -> None:
        from provision.guest.ssh import wait_for_ssh

        for _ in range(HOST_KEY_REREADS):
            try:
                wait_for_ssh(
                    address,
                    max(5.0, timeout - watch.elapsed),
                    self.cluster.reporter,
                    check_alive=lambda: self._check_running(ctx, res),
                )
                return
            except HostKeyMismatch:
                # cloud-init regenerates host keys on first boot: the agent may have shown the
                # template's. Read it again through the agent (still no trust on first use).
                self.cluster.reporter.step("host key changed during first boot; re-reading it")
                self.agent.pin_host_key(res, address.host)
        raise GuestError(
            f"the SSH host key of {ctx.name} keeps changing",
            hint="check the guest's /etc/ssh/ssh_host_ed25519_key",
        )

    def _check_running(self, ctx: UpContext, res: Resource) -> None:
        """Fail at once when the VM stopped while labctl waits for it (its guest died)."""
        if self.cluster.live(res).status != "running":
            raise GuestError(
                f"VM {ctx.name} (vmid {ctx.vmid}) stopped while labctl waited for SSH",
                hint="its guest died or powered off: see the VM's console and the start task's "
                "log (PVE UI, `qm status`)",
            )

    def _wait_cloud_init(self, ctx: UpContext, address: GuestAddress, timeout: float) -> None:
        """`cloud-init status --wait` before anything is deployed or measured: cloud-init's
        final stage (a first-boot package upgrade, for one) runs after SSH answers."""
        from provision.guest.cloudinit import wait_for_cloud_init

        reporter = self.cluster.reporter
        ctx.stage = "cloud-init"
        reporter.stage("cloud-init")
        try:
            status = wait_for_cloud_init(address, timeout)
        except CommandFailed as error:
            raise GuestError(
                f"cloud-init of {ctx.name} has not finished within {timeout:g}s",
                hint="see `cloud-init status --long` and /var/log/cloud-init-output.log in the "
                "VM; timeouts.ssh sets the wait; template.ciupgrade = false (the "
                "default) skips the first-boot package upgrade",
            ) from error
        if status.state == "absent":
            reporter.step("no cloud-init in the guest: nothing to wait for")
        elif status.finished_cleanly:
            reporter.step(f"cloud-init {status.state} after {status.waited_s:.1f}s")
        else:
            reporter.warn(
                f"cloud-init of {ctx.name} finished {status.state} "
                f"(exit {status.exit_code}): {status.detail}"
            )

    # -- a VM that already runs ------------------------------------------------------------

    def guest(self, name: str) -> GuestAddress:
        """SSH address of a running labctl VM, its host key pinned (re-pinned via the agent)."""
        res = self.cluster.require_managed(name)
        if res.status != "running":
            raise GuestError(f"VM {name} is {res.status}", hint=f"run `labctl up {name}`")
        ip = self.agent.address(res)
        if ip is None:
            ip = self._address_after_boot(res)
        address = self.address(name, ip)
        if not self.agent.is_pinned(ip):
            self.agent.pin_host_key(res, ip)
        return address

    def _address_after_boot(self, res: Resource) -> str:
        """A VM that has just started (by another command, or by one killed while it waited)
        gets what is left of timeouts.agent for its agent to report an address; one that has
        run longer than that has no agent to wait for."""
        left = self.cluster.seconds("timeouts.agent") - res.uptime_s
        if left <= 0:
            raise GuestError(
                f"the guest agent of {res.name} reports no address",
                hint="is qemu-guest-agent running in the VM?",
            )
        ctx = UpContext(name=res.name, vmid=res.vmid, node=res.node)
        return self.agent.wait_for_address(ctx, res, timeout=left)

    def address(self, name: str, ip: str) -> GuestAddress:
        config = self.cluster.config
        return GuestAddress(
            host=ip,
            user=str(config.get("ssh.user")),
            key_path=Path(str(config.get("ssh.key"))).expanduser(),
            known_hosts=self.known_hosts,
            name=name,
        )
