"""Config changes: PUT/POST config (hotplug or pending), cloud-init regeneration, disk resize."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from provision.sim import permissions, vmconfig
from provision.sim.access import ROOT
from provision.sim.errors import PveError, vm_locked
from provision.sim.models.base import Vm, truthy
from provision.sim.models.tasks import TaskMixin
from provision.sim.tasks import Task, TaskError


class ConfigMixin(TaskMixin):
    """Writing a VM's config: current values, `[PENDING]` ones, and disk sizes."""

    def update_config(
        self, node: str, vmid: int, user: str, params: dict[str, Any], asynchronous: bool
    ) -> str | None:
        """POST (asynchronous, `qmconfig` task) or PUT (synchronous) config.

        Not simulated: `revert` only drops pending values, storage allocation for new disks
        (`local-lvm:32` syntax is stored verbatim), `import-from`, cloud-init ISO regeneration.
        """
        if not asynchronous:
            with self._op_lock(vmid):
                with self.lock:
                    vm = self.vm(node, vmid)
                    change = self._check_update(vm, params, user)
                    permissions.update_access(self.access, user, vmid, vm.merged(), change.values)
                    errors, reshape = self._apply_update(vm, change)
                self.save()
                self._reshape(vm, reshape)
                if errors:
                    raise PveError.params(errors)
            return None
        with self.lock:
            vm = self.vm(node, vmid)
            change = self._check_update(vm, params, user)

        def work(task: Task) -> None:
            with self.lock:
                current = self.vm(node, vmid)
                # in PVE's $updatefn, so inside the task for a POST
                permissions.update_access(self.access, user, vmid, current.merged(), change.values)
                task.say(
                    f"update VM {vmid}: " + " ".join(f"-{k} {v}" for k, v in change.values.items())
                )
                errors, reshape = self._apply_update(current, change)
            self.save()
            self._reshape(current, reshape)
            if errors:
                # a PVE::Exception with errors, flattened into the task's end line
                lines = "\n".join(f"{k}: {v}" for k, v in errors.items())
                raise TaskError(f"Parameter verification failed.\n{lines}")

        task = self._spawn(node, "qmconfig", str(vmid), user, work, lock_vmid=vmid)
        delay = params.get("background_delay")
        if delay is None:
            return task.upid
        if not task.done.wait(timeout=float(delay)):
            return task.upid
        if task.exitstatus != "OK":
            raise PveError.internal(f"failed to update VM {vmid}: {task.exitstatus}")
        return None

    def _check_update(self, vm: Vm, params: dict[str, Any], user: str = ROOT) -> ConfigChange:
        """The early checks of `update_vm_api`, always synchronous."""
        from provision.sim.schema import load_schema

        schema = load_schema()
        control = {
            "node",
            "vmid",
            "delete",
            "revert",
            "digest",
            "skiplock",
            "force",
            "background_delay",
            "import-working-storage",
        }
        values = {k: vmconfig.as_config_text(v) for k, v in params.items() if k not in control}
        deletes: dict[str, int] = {}
        force = 1 if str(params.get("force", "0")) in ("1", "True", "true") else 0
        for option in re.split(r"[,; ]+", str(params.get("delete", ""))):
            if not option:
                continue
            option = "ide2" if option == "cdrom" else option
            if option in values:
                raise PveError.params(
                    {"delete": f"you can't use '-{option}' and -delete {option}' at the same time"}
                )
            if schema.property(vmconfig.CONFIG_PATH, "POST", option) is None:
                raise PveError.params({"delete": f"unknown option '{option}'"})
            deletes[option] = force
        reverts = [r for r in re.split(r"[,; ]+", str(params.get("revert", ""))) if r]
        if not values and not deletes and not reverts:
            raise PveError.internal("no options specified")
        # Qemu.pm:2196-2204: per-key privileges and bridges, before the config is loaded
        permissions.config_key_access(self.access, user, vm.vmid, [*deletes, *values])
        permissions.bridge_access(self.access, user, values)
        digest = params.get("digest")
        if digest and digest != vm.digest():
            raise PveError.internal("checksum mismatch (file change by other user?)")
        if "lock" in vm.config and not truthy(params.get("skiplock")):
            raise vm_locked(vm.config["lock"])
        merged = {**vm.merged(), **values}
        if "balloon" in values and int(values["balloon"]) > vmconfig.memory_mib(merged):
            raise PveError.internal(
                "balloon value too large (must be smaller than assigned memory)"
            )
        if "sshkeys" in values:
            _validate_ssh_keys(unquote(values["sshkeys"]))
        if "cipassword" in values:
            salt = secrets.token_hex(8)
            digest_text = hashlib.sha256((salt + values["cipassword"]).encode()).hexdigest()
            values["cipassword"] = f"$5${salt}${digest_text}"
        return ConfigChange(values, deletes, reverts)

    def _apply_update(self, vm: Vm, change: ConfigChange) -> tuple[dict[str, str], bool]:
        """Write the change; on a running VM apply what hotplugs and keep the rest pending.

        Returns (hotplug errors per key, whether the running guest's shape changed).
        """
        for key in change.reverts:
            vm.pending.pop(key, None)
            vm.pending_delete.pop(key, None)
        if not vm.running:
            for key, force in change.deletes.items():
                vm.pending.pop(key, None)
                vm.pending_delete[key] = force
            vm.pending.update(change.values)
            vm.apply_pending()
            return {}, False
        errors: dict[str, str] = {}
        reshape = False
        for key, value in change.values.items():
            vm.pending_delete.pop(key, None)
            decision = vmconfig.hotplug_decision(key, vm.config)
            if decision == "apply":
                vm.config[key] = value
                vm.pending.pop(key, None)
                reshape = reshape or key in ("vcpus", "memory")
            else:
                vm.pending[key] = value
                if decision != "pending":
                    errors[key] = decision
        for key, force in change.deletes.items():
            vm.pending.pop(key, None)
            if vmconfig.is_fast_plug(key):
                vm.config.pop(key, None)
            elif key in vm.config:
                vm.pending_delete[key] = force
        return errors, reshape

    def _reshape(self, vm: Vm, needed: bool) -> None:
        if needed and vm.running:
            cores = vmconfig.vcpus(vm.config, self.nodes[vm.node].maxcpu)
            self.backend.reshape(vm.vmid, cores, vmconfig.memory_mib(vm.config))

    def cloudinit_regenerate(self, node: str, vmid: int) -> None:
        """PUT cloudinit: checks the lock; the ISO itself is not simulated."""
        with self.lock:
            vm = self.vm(node, vmid)
            if "lock" in vm.config:
                raise vm_locked(vm.config["lock"])

    # --- resize ------------------------------------------------------------------------------

    def resize(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """PUT resize: a `resize` task; every check runs in the worker (PVE >= 8.0)."""
        disk, size = str(params["disk"]), str(params["size"])

        def work(task: Task) -> None:
            with self.lock:
                vm = self.vm(node, vmid)
                if params.get("digest") and params["digest"] != vm.digest():
                    raise TaskError("checksum mismatch (file change by other user?)")
                if "lock" in vm.config and not truthy(params.get("skiplock")):
                    raise TaskError(f"VM is locked ({vm.config['lock']})")
                value = vm.config.get(disk)
                if value is None:
                    raise TaskError(f"disk '{disk}' does not exist")
                if vmconfig.is_cdrom(value):
                    raise TaskError("you can't resize a cdrom")
                permissions.resize_storage_access(self.access, user, value.split(",", 1)[0])
                old = vmconfig.parse_size(vmconfig.drive_option(value, "size") or "0")
                amount = vmconfig.parse_size(size)
                new = old + amount if size.startswith("+") else amount
                if new < old:
                    raise TaskError("shrinking disks is not supported")
                if new == old:
                    task.say("Disk size unchanged.")
                    return
                vm.config[disk] = vmconfig.with_drive_option(
                    value, "size", vmconfig.format_size(new)
                )
                task.say(f"Image resized to {vmconfig.format_size(new)}.")
            self.save()

        return self._spawn(node, "resize", str(vmid), user, work, lock_vmid=vmid).upid


@dataclass(frozen=True)
class ConfigChange:
    values: dict[str, str]
    deletes: dict[str, int]
    reverts: list[str]


SSH_KEY_LINE = re.compile(
    r"^(?:[\w,=\"-]+\s+)?(ssh-(?:rsa|dss|ed25519)|ecdsa-sha2-nistp\d+|sk-\S+)\s+[A-Za-z0-9+/]+={0,3}"
    r"(?:\s.*)?$"
)


def _validate_ssh_keys(text: str) -> None:
    """`PVE::Tools::validate_ssh_public_keys` runs ssh-keygen; a syntax check stands in."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and not SSH_KEY_LINE.match(line):
            raise PveError.internal("SSH public key validation error")
