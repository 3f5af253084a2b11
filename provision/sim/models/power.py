"""Power: start, stop, shutdown and reboot a VM through the guest backend; destroy it."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import unquote

from provision.sim import vmconfig
from provision.sim.errors import PveError
from provision.sim.guests.base import GuestSpec
from provision.sim.guests.errors import GuestExited, HostCapacityError
from provision.sim.models.base import Vm, truthy
from provision.sim.models.exits import GuestExitMixin
from provision.sim.models.tasks import TaskMixin
from provision.sim.tasks import Task, TaskError


class PowerMixin(GuestExitMixin, TaskMixin):
    """The `qmstart`, `qmstop`, `qmshutdown`, `qmreboot` and `qmdestroy` tasks."""

    def _spec(self, vm: Vm) -> GuestSpec:
        config = vm.config
        keys = unquote(config.get("sshkeys", ""))
        net0 = config.get("net0", "")
        mac = re.search(r"([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})", net0)
        return GuestSpec(
            vmid=vm.vmid,
            name=config.get("name", f"vm{vm.vmid}"),
            cores=vmconfig.vcpus(config, self.nodes[vm.node].maxcpu),
            memory_mib=vmconfig.memory_mib(config),
            ciuser=config.get("ciuser"),
            sshkeys=tuple(k.strip() for k in keys.splitlines() if k.strip()),
            ipconfig0=config.get("ipconfig0"),
            macaddr=mac.group(1).lower() if mac else "bc:24:11:00:00:00",
            # qemu-server src/PVE/QemuServer/Cloudinit.pm:186 writes `package_upgrade: true`
            # unless ciupgrade is set and false; its schema default is 1 (QemuServer.pm:805-810)
            package_upgrade=config.get("ciupgrade") is None or truthy(config["ciupgrade"]),
            ssh_keys_delay=self.settings.cloudinit_ssh_delay,
            upgrade_seconds=self.settings.cloudinit_upgrade_seconds,
            init_failure=self.faults.take_boot_failure(vm.vmid),
            extra={"node": vm.node, "tags": config.get("tags", "")},
        )

    def start(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST status/start: no synchronous checks at all; errors are task errors.

        Not simulated: `machine`, `timeout`, migration parameters.
        """
        self.node(node)

        def work(task: Task) -> None:
            with self.lock:
                vm = self.vm(node, vmid)
                self._check_startable(vm, params)
                vm.apply_pending()
                vm.status, vm.started_at = "running", time.time()
                spec = self._spec(vm)
            self.save()
            task.say(f"start VM {vmid}: UPID {task.upid}")
            with self._watching_boot(vmid) as watch:
                self._boot(vm, spec, task)
                self._await_start_window(task, vmid, watch)

        return self._spawn(node, "qmstart", str(vmid), user, work, lock_vmid=vmid).upid

    def _check_startable(self, vm: Vm, params: dict[str, Any]) -> None:
        if "lock" in vm.config and not truthy(params.get("skiplock")):
            raise TaskError(f"VM is locked ({vm.config['lock']})")
        if vm.is_template:
            raise TaskError("you can't start a vm if it's a template")
        if vm.running:
            raise TaskError(f"VM {vm.vmid} already running")

    def _boot(self, vm: Vm, spec: GuestSpec, task: Task) -> None:
        try:
            self.backend.start(spec)
        except Exception as exc:
            with self.lock:
                vm.status, vm.started_at = "stopped", None
            self.save()
            if isinstance(exc, GuestExited):
                raise self._start_failed(task, exc.exit) from exc
            if isinstance(exc, HostCapacityError):
                # refused before anything runs, like PVE's checks before QEMU is launched,
                # whose errors carry no "start failed:" prefix
                raise TaskError(str(exc)) from exc
            raise TaskError(f"start failed: {exc}") from exc

    def stop(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST status/stop: stopping a stopped VM is OK. Not simulated: keepActive."""
        self.node(node)

        def work(task: Task) -> None:
            with self.lock:
                vm = self.vm(node, vmid)
                if "lock" in vm.config and not truthy(params.get("skiplock")):
                    raise TaskError(f"VM is locked ({vm.config['lock']})")
                was_running = vm.running
            if was_running:
                self.backend.stop(vmid)
            self._mark_stopped(vm)

        return self._spawn(node, "qmstop", str(vmid), user, work, lock_vmid=vmid).upid

    def _mark_stopped(self, vm: Vm) -> None:
        with self.lock:
            vm.status, vm.started_at = "stopped", None
        self.save()

    def shutdown(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST status/shutdown: without forceStop a timeout is a task error; with it, the VM
        is stopped hard and the task ends OK. Shutting down a stopped VM is OK."""
        with self.lock:
            self.vm(node, vmid)
        timeout = float(params.get("timeout", 60))
        force = truthy(params.get("forceStop"))

        def work(task: Task) -> None:
            with self.lock:
                vm = self.vm(node, vmid)
                if "lock" in vm.config and not truthy(params.get("skiplock")):
                    raise TaskError(f"VM is locked ({vm.config['lock']})")
                running = vm.running
            if running:
                self._power_down(vm, timeout, force, task)
            self._mark_stopped(vm)

        return self._spawn(node, "qmshutdown", str(vmid), user, work, lock_vmid=vmid).upid

    def _power_down(self, vm: Vm, timeout: float, force: bool, task: Task) -> None:
        if vm.vmid in self.faults.ignore_shutdown:
            time.sleep(timeout)
            stopped = False
        else:
            stopped = self.backend.shutdown(vm.vmid, timeout)
        if stopped:
            return
        if not force:
            raise TaskError("VM quit/powerdown failed - got timeout")
        task.say("VM still running - terminating now with SIGTERM")
        self.backend.stop(vm.vmid)

    def reboot(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST status/reboot: 500 if the VM is not running; applies pending changes."""
        with self.lock:
            vm = self.vm(node, vmid)
            if not vm.running:
                raise PveError.internal(f"VM {vmid} not running")
        timeout = float(params.get("timeout", 60))

        def work(task: Task) -> None:
            with self.lock:
                current = self.vm(node, vmid)
                if "lock" in current.config:
                    raise TaskError(f"VM is locked ({current.config['lock']})")
            self._power_down(current, timeout, False, task)
            with self.lock:
                current.apply_pending()
                current.started_at = time.time()
                spec = self._spec(current)
            self.save()
            with self._watching_boot(vmid) as watch:
                self._boot(current, spec, task)
                self._await_start_window(task, vmid, watch)

        return self._spawn(node, "qmreboot", str(vmid), user, work, lock_vmid=vmid).upid

    def destroy(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """DELETE the VM: 500 if running or protected; the config disappears when the task ends.

        Not simulated: `purge` (no HA/backup/replication jobs exist), unreferenced disks.
        """
        with self.lock:
            vm = self.vm(node, vmid)
            if vm.running:
                raise PveError.internal(f"VM {vmid} is running - destroy failed")
            if vm.config.get("protection") == "1":
                raise PveError.internal(f"can't remove VM {vmid} - protection mode enabled")

        def work(task: Task) -> None:
            with self.lock:
                current = self.vm(node, vmid)
                if "lock" in current.config and not truthy(params.get("skiplock")):
                    raise TaskError(f"VM is locked ({current.config['lock']})")
                if current.running:
                    raise TaskError(f"VM {vmid} is running - destroy failed")
                users = [v.vmid for v in self.vms.values() if v.linked_base == vmid]
                if users:
                    volid = next(
                        (
                            v
                            for k, v in vmconfig.drives(current.config)
                            if not vmconfig.is_cdrom(current.config[k])
                        ),
                        "",
                    )
                    raise TaskError(
                        f"base volume '{volid}' is still in use by linked cloned VM {users[0]}"
                    )
            self.backend.delete_disk(vmid)
            task.say(f"destroying VM {vmid}")

        def finish(task: Task) -> None:
            with self.lock:
                self.vms.pop(vmid, None)

        return self._spawn(node, "qmdestroy", str(vmid), user, work, finish, lock_vmid=vmid).upid
