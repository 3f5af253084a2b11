"""Clone: POST /nodes/{node}/qemu/{vmid}/clone, a full or linked copy of a VM or template."""

from __future__ import annotations

from typing import Any

from provision.sim import permissions, vmconfig
from provision.sim.errors import PveError, vm_locked
from provision.sim.models.base import Vm
from provision.sim.models.tasks import TaskMixin
from provision.sim.tasks import Task, TaskError


class CloneMixin(TaskMixin):
    """The synchronous clone checks and the `qmclone` task."""

    def clone(self, node: str, vmid: int, user: str, params: dict[str, Any]) -> str:
        """POST clone. Synchronous checks, then a `qmclone` task (id = source VMID).

        The new VM appears with `lock: clone` at once and is unlocked when the task ends.
        Not simulated: `snapname` (no snapshots), `pool`, `bwlimit`, cross-node clones
        (all storage is local, so `target` other than this node fails as in PVE).
        """
        newid = int(params["newid"])
        with self.lock:
            source = self.vm(node, vmid)
            if "lock" in source.config:
                raise vm_locked(source.config["lock"])
            if newid in self.vms:
                raise PveError.internal(f"unable to create VM {newid}: config file already exists")
            linked = self._clone_mode(source, params)
            permissions.clone_access(self.access, user, source.config, params.get("storage"))
            target = params.get("target")
            if target and target not in (node, "localhost"):
                self.node(target)
                raise PveError.internal(
                    f"can't clone VM to node '{target}' (VM uses local storage)"
                )
            if params.get("snapname"):
                raise PveError.internal(f"snapshot '{params['snapname']}' does not exist")
            if params.get("pool"):
                raise PveError.internal(f"pool '{params['pool']}' does not exist")
            new_config = vmconfig.clone_config(
                source.config,
                vmid,
                newid,
                params.get("name"),
                params.get("description"),
                linked,
                params.get("storage"),
            )
            new_config["lock"] = "clone"

        def work(task: Task) -> None:
            with self.lock:
                if newid in self.vms:  # lost the race for newid (worker-side re-check)
                    raise TaskError(f"unable to create VM {newid}: config file already exists")
                self.vms[newid] = Vm(
                    newid,
                    node,
                    new_config,
                    linked_base=vmid if linked else None,
                    agent_binary_required=source.agent_binary_required,
                )
            self.save()
            task.begun.set()
            for key, volid in vmconfig.drives(source.config):
                if vmconfig.is_cdrom(source.config[key]) and not vmconfig.is_cloudinit(
                    source.config[key]
                ):
                    continue
                full_copy = not linked or vmconfig.is_cloudinit(source.config[key])
                verb = "create full clone of" if full_copy else "create linked clone of"
                task.say(f"{verb} drive {key} ({volid})")
            try:
                self.backend.clone_disk(vmid, newid, linked)
            except Exception as exc:
                with self.lock:
                    self.vms.pop(newid, None)
                raise TaskError(f"clone failed: {exc}") from exc

        def finish(task: Task) -> None:
            with self.lock:
                vm = self.vms.get(newid)
                if vm is not None:
                    vm.config.pop("lock", None)

        # No operation lock on newid while copying: other workers see `lock: clone` instead.
        task = self._spawn(node, "qmclone", str(vmid), user, work, finish)
        task.begun.wait(timeout=5.0)
        return task.upid

    def _clone_mode(self, source: Vm, params: dict[str, Any]) -> bool:
        """True for a linked clone; raises PVE's synchronous errors for impossible requests."""
        full_param = params.get("full")
        full = bool(int(full_param)) if full_param is not None else not source.is_template
        if not full:
            for option in ("storage", "format"):
                if params.get(option) is not None:
                    raise PveError.internal(f"parameter '{option}' not allowed for linked clones")
            if not source.is_template:
                for key, volid in vmconfig.drives(source.config):
                    if not vmconfig.is_cdrom(source.config[key]):
                        raise PveError.internal(
                            f"Linked clone feature is not supported for '{volid}' ({key})"
                        )
        storage_name = params.get("storage")
        if storage_name is not None:
            storage = self.storage(storage_name)
            if not storage.supports("images"):
                raise PveError.params(
                    {"storage": f"storage '{storage_name}' does not support vm images"}
                )
        return not full
