"""Clone, config, pending changes, resize, power and destroy through real proxmoxer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import proxmoxer
import pytest
from proxmoxer.tools import Tasks

from tests.support.sim_api import Raw, changed_settings, wait

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx/k+abc= me@laptop"
NewVm = Callable[..., int]


def error_of(call: Callable[[], Any]) -> proxmoxer.ResourceException:
    with pytest.raises(proxmoxer.ResourceException) as caught:
        call()
    return caught.value


# --- nextid ---------------------------------------------------------------------------------


def test_nextid_is_a_string(prox: Any) -> None:
    value = prox.cluster.nextid.get()
    assert isinstance(value, str)
    assert int(value) >= 100


def test_nextid_with_a_taken_vmid_is_400(prox: Any) -> None:
    err = error_of(lambda: prox.cluster.nextid.get(vmid=9000))
    assert err.status_code == 400
    assert err.errors == {"vmid": "VM 9000 already exists"}


# --- clone ----------------------------------------------------------------------------------


def test_clone_returns_a_upid_and_the_new_vm_is_locked_until_the_task_ends(
    prox: Any, raw: Raw
) -> None:
    vmid = int(prox.cluster.nextid.get())
    with changed_settings(raw, task_durations={"qmclone": 2.0}):
        upid = prox.nodes("pve").qemu(9000).clone.post(newid=vmid)
    decoded = Tasks.decode_upid(upid)
    assert (decoded["type"], decoded["id"], decoded["node"]) == ("qmclone", "9000", "pve")
    assert prox.nodes("pve").qemu(vmid).config.get()["lock"] == "clone"
    assert prox.nodes("pve").qemu(vmid).status.current.get()["lock"] == "clone"
    start = prox.nodes("pve").qemu(vmid).status.start.post()
    assert wait(prox, start)["exitstatus"] == "VM is locked (clone)"
    assert wait(prox, upid)["exitstatus"] == "OK"
    assert "lock" not in prox.nodes("pve").qemu(vmid).config.get()


def test_a_clone_gets_new_identity_and_loses_the_template_flag(prox: Any, new_vm: NewVm) -> None:
    template = prox.nodes("pve").qemu(9000).config.get()
    vmid = new_vm()
    clone = prox.nodes("pve").qemu(vmid).config.get()
    assert clone["name"] == "Copy-of-VM-ubuntu-2404-cloud"
    assert "template" not in clone
    assert clone["net0"] != template["net0"] and clone["net0"].startswith("virtio=BC:24:11:")
    assert clone["smbios1"] != template["smbios1"]
    assert clone["scsi0"] == f"local-lvm:base-9000-disk-0/vm-{vmid}-disk-0,size=3584M"


def test_a_full_clone_may_choose_its_storage_but_not_a_non_image_one(prox: Any) -> None:
    vmid = int(prox.cluster.nextid.get())
    err = error_of(
        lambda: prox.nodes("pve").qemu(9000).clone.post(newid=vmid, full=1, storage="local")
    )
    assert err.status_code == 400
    assert err.errors == {"storage": "storage 'local' does not support vm images"}
    upid = prox.nodes("pve").qemu(9000).clone.post(newid=vmid, full=1, storage="local-lvm")
    assert wait(prox, upid)["exitstatus"] == "OK"
    assert (
        prox.nodes("pve").qemu(vmid).config.get()["scsi0"].startswith(f"local-lvm:vm-{vmid}-disk-0")
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"full": 0, "storage": "local-lvm"}, "parameter 'storage' not allowed for linked clones"),
        ({"newid": 9000}, "unable to create VM 9000: config file already exists"),
        ({"target": "pve2"}, "can't clone VM to node 'pve2' (VM uses local storage)"),
    ],
)
def test_impossible_clones_fail_synchronously(
    prox: Any, params: dict[str, Any], message: str
) -> None:
    params = {"newid": int(prox.cluster.nextid.get()), **params}
    err = error_of(lambda: prox.nodes("pve").qemu(9000).clone.post(**params))
    assert (err.status_code, err.content) == (500, message)


def test_a_linked_clone_of_a_normal_vm_is_refused(prox: Any, new_vm: NewVm) -> None:
    source = new_vm()
    newid = int(prox.cluster.nextid.get())
    err = error_of(lambda: prox.nodes("pve").qemu(source).clone.post(newid=newid, full=0))
    assert err.content == (
        f"Linked clone feature is not supported for "
        f"'local-lvm:base-9000-disk-0/vm-{source}-disk-0' (scsi0)"
    )


def test_two_clones_racing_for_one_vmid_leave_exactly_one_winner(prox: Any) -> None:
    vmid = int(prox.cluster.nextid.get())
    outcomes: list[str] = []

    def clone() -> None:
        try:
            upid = prox.nodes("pve").qemu(9000).clone.post(newid=vmid)
            outcomes.append(wait(prox, upid)["exitstatus"])
        except proxmoxer.ResourceException as exc:
            outcomes.append(str(exc.content))

    threads = [threading.Thread(target=clone) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["OK", f"unable to create VM {vmid}: config file already exists"]


# --- config ---------------------------------------------------------------------------------


def test_config_types_and_digest(prox: Any, new_vm: NewVm) -> None:
    config = prox.nodes("pve").qemu(new_vm()).config.get()
    assert config["memory"] == "2048"  # a property string since PVE 8.1
    assert config["cores"] == 2 and config["agent"] == "1"
    assert len(config["digest"]) == 40


def test_put_is_synchronous_and_post_is_a_qmconfig_task(prox: Any, new_vm: NewVm) -> None:
    vm = prox.nodes("pve").qemu(new_vm())
    assert vm.config.put(cores=3) is None
    upid = vm.config.post(memory=3072)
    assert Tasks.decode_upid(upid)["type"] == "qmconfig"
    assert wait(prox, upid)["exitstatus"] == "OK"
    assert vm.config.post(cores=1, background_delay=5) is None
    config = vm.config.get()
    assert (config["cores"], config["memory"]) == (1, "3072")


def test_a_stale_digest_is_refused(prox: Any, new_vm: NewVm) -> None:
    vm = prox.nodes("pve").qemu(new_vm())
    digest = vm.config.get()["digest"]
    vm.config.put(cores=4)
    err = error_of(lambda: vm.config.post(cores=2, digest=digest))
    assert (err.status_code, err.content) == (500, "checksum mismatch (file change by other user?)")


def test_deleting_an_unknown_option_is_400_but_an_unset_one_is_fine(
    prox: Any, new_vm: NewVm
) -> None:
    vm = prox.nodes("pve").qemu(new_vm())
    err = error_of(lambda: vm.config.put(delete="bogus"))
    assert (err.status_code, err.errors) == (400, {"delete": "unknown option 'bogus'"})
    assert vm.config.put(delete="balloon,tablet") is None


def test_sshkeys_are_stored_still_encoded(prox: Any, new_vm: NewVm) -> None:
    vm = prox.nodes("pve").qemu(new_vm())
    vm.config.put(sshkeys=quote(KEY, safe=""))
    assert vm.config.get()["sshkeys"] == quote(KEY, safe="")
    err = error_of(lambda: vm.config.put(sshkeys=quote(KEY)))
    assert err.status_code == 400
    assert err.errors is not None and "invalid urlencoded string" in err.errors["sshkeys"]


def test_an_invalid_ssh_key_is_refused(prox: Any, new_vm: NewVm) -> None:
    vm = prox.nodes("pve").qemu(new_vm())
    err = error_of(lambda: vm.config.put(sshkeys=quote("not a key", safe="")))
    assert err.content == "SSH public key validation error"


def test_a_running_vm_keeps_cores_and_memory_pending(prox: Any, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    vm.config.put(cores=4, memory=4096, name="renamed", ciuser="ops")
    pending = {e["key"]: e for e in vm.pending.get()}
    assert pending["cores"] == {"key": "cores", "value": 2, "pending": 4}
    assert pending["memory"] == {"key": "memory", "value": "2048", "pending": "4096"}
    assert "pending" not in pending["name"] and pending["name"]["value"] == "renamed"
    assert pending["ciuser"] == {"key": "ciuser", "value": "ops"}
    assert vm.config.get()["cores"] == 4
    assert vm.config.get(current=1)["cores"] == 2
    status = vm.status.current.get()
    assert (status["cpus"], status["maxmem"], status["name"]) == (2, 2048 * 1024**2, "renamed")


def test_reboot_applies_pending_changes(prox: Any, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    vm.config.put(cores=4)
    assert wait(prox, vm.status.reboot.post())["exitstatus"] == "OK"
    assert [e for e in vm.pending.get() if "pending" in e] == []
    assert vm.status.current.get()["cpus"] == 4


def test_vcpus_hotplug_needs_the_cpu_feature(prox: Any, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    vm.config.put(vcpus=1)
    assert vm.status.current.get()["cpus"] == 2  # pending: default hotplug has no cpu
    vm.config.put(hotplug="network,disk,cpu")  # hotplug itself changes live
    vm.config.put(vcpus=1)
    assert vm.status.current.get()["cpus"] == 1
    assert {"key": "vcpus", "value": 1} in vm.pending.get()


def test_memory_hotplug_without_numa_is_a_hotplug_problem(prox: Any, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    vm.config.put(hotplug="network,disk,memory")
    wait(prox, vm.status.reboot.post())
    err = error_of(lambda: vm.config.put(memory=4096))
    assert err.status_code == 400
    assert err.errors == {"memory": "hotplug problem - NUMA needs to be enabled for memory hotplug"}


# --- resize ---------------------------------------------------------------------------------


def test_resize_is_a_task_that_grows_and_never_shrinks(prox: Any, new_vm: NewVm) -> None:
    vm = prox.nodes("pve").qemu(new_vm())
    upid = vm.resize.put(disk="scsi0", size="+1G")
    assert Tasks.decode_upid(upid)["type"] == "resize"
    assert wait(prox, upid)["exitstatus"] == "OK"
    assert vm.config.get()["scsi0"].endswith("size=4608M")
    assert wait(prox, vm.resize.put(disk="scsi0", size="1G"))["exitstatus"] == (
        "shrinking disks is not supported"
    )
    assert wait(prox, vm.resize.put(disk="scsi5", size="+1G"))["exitstatus"] == (
        "disk 'scsi5' does not exist"
    )


# --- power ----------------------------------------------------------------------------------


def test_start_of_a_running_vm_is_a_task_error(prox: Any, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    assert vm.status.current.get()["status"] == "running"
    assert wait(prox, vm.status.start.post())["exitstatus"] == f"VM {running_vm} already running"


def test_reboot_of_a_stopped_vm_is_a_500(prox: Any, new_vm: NewVm) -> None:
    vmid = new_vm()
    err = error_of(lambda: prox.nodes("pve").qemu(vmid).status.reboot.post())
    assert (err.status_code, err.content) == (500, f"VM {vmid} not running")


def test_stopping_a_stopped_vm_is_ok(prox: Any, new_vm: NewVm) -> None:
    vm = prox.nodes("pve").qemu(new_vm())
    assert wait(prox, vm.status.stop.post())["exitstatus"] == "OK"


def test_templates_cannot_start(prox: Any) -> None:
    upid = prox.nodes("pve").qemu(9000).status.start.post()
    assert wait(prox, upid)["exitstatus"] == "you can't start a vm if it's a template"


def test_a_shutdown_timeout_fails_unless_forced(prox: Any, raw: Raw, running_vm: int) -> None:
    raw("POST", "/_sim/faults", json={"kind": "ignore_shutdown", "vmid": running_vm})
    vm = prox.nodes("pve").qemu(running_vm)
    failed = wait(prox, vm.status.shutdown.post(timeout=1))
    assert failed["exitstatus"] == "VM quit/powerdown failed - got timeout"
    assert vm.status.current.get()["status"] == "running"
    assert wait(prox, vm.status.shutdown.post(timeout=1, forceStop=1))["exitstatus"] == "OK"
    assert vm.status.current.get()["status"] == "stopped"


def test_destroy_refuses_a_running_vm_and_removes_a_stopped_one(prox: Any, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    err = error_of(lambda: vm.delete(purge=1))
    assert (err.status_code, err.content) == (500, f"VM {running_vm} is running - destroy failed")
    wait(prox, vm.status.stop.post())
    upid = vm.delete(purge=1, **{"destroy-unreferenced-disks": 1})
    assert Tasks.decode_upid(upid)["type"] == "qmdestroy"
    assert wait(prox, upid)["exitstatus"] == "OK"
    assert running_vm not in [v["vmid"] for v in prox.nodes("pve").qemu.get()]


def test_a_template_with_linked_clones_cannot_be_destroyed(prox: Any, new_vm: NewVm) -> None:
    new_vm()
    exitstatus = wait(prox, prox.nodes("pve").qemu(9000).delete())["exitstatus"]
    assert exitstatus.startswith("base volume 'local-lvm:base-9000-disk-0' is still in use")


# --- tasks ----------------------------------------------------------------------------------


def test_task_log_lines_are_numbered_with_a_total_and_end_with_task_ok(raw: Raw, prox: Any) -> None:
    vmid = int(prox.cluster.nextid.get())
    upid = prox.nodes("pve").qemu(9000).clone.post(newid=vmid)
    wait(prox, upid)
    body = raw("GET", f"/nodes/pve/tasks/{upid}/log").json()
    assert body["total"] == len(body["data"])
    assert [line["n"] for line in body["data"]] == list(range(1, body["total"] + 1))
    assert body["data"][-1]["t"] == "TASK OK"


def test_task_errors_end_the_log_with_task_error(prox: Any) -> None:
    upid = prox.nodes("pve").qemu(9000).status.start.post()
    wait(prox, upid)
    log = Tasks.decode_log(prox.nodes("pve").tasks(upid).log.get())
    assert log.splitlines()[-1] == "TASK ERROR: you can't start a vm if it's a template"


@pytest.mark.parametrize(
    ("upid", "message"),
    [
        ("garbage", "unable to parse worker upid"),
        ("UPID:pve:00000001:00000001:00000001:qmstart:100:root@pam:", "no such task"),
    ],
)
def test_bad_and_unknown_upids_are_400(prox: Any, upid: str, message: str) -> None:
    err = error_of(lambda: prox.nodes("pve").tasks(upid).status.get())
    assert (err.status_code, err.errors) == (400, {"upid": message})


def test_a_hotplug_problem_in_an_async_update_fails_the_task(prox: Any, running_vm: int) -> None:
    vm = prox.nodes("pve").qemu(running_vm)
    vm.config.put(hotplug="network,disk,memory")
    wait(prox, vm.status.reboot.post())
    status = wait(prox, vm.config.post(memory=4096))
    assert status["exitstatus"] == (
        "Parameter verification failed. "
        "memory: hotplug problem - NUMA needs to be enabled for memory hotplug"
    )
    assert {"key": "memory", "value": "2048", "pending": "4096"} in vm.pending.get()


def test_the_task_list_filters_by_vmid_type_and_source(prox: Any, raw: Raw, new_vm: NewVm) -> None:
    vmid = new_vm()
    wait(prox, prox.nodes("pve").qemu(vmid).status.stop.post())
    body = raw("GET", "/nodes/pve/tasks", params={"vmid": vmid, "source": "all"}).json()
    assert [t["type"] for t in body["data"]] == ["qmstop"]
    assert body["data"][0]["status"] == "OK" and body["total"] == 1
    clones = prox.nodes("pve").tasks.get(typefilter="qmclone", vmid=9000, limit=1)
    assert len(clones) == 1 and clones[0]["type"] == "qmclone"
    with changed_settings(raw, task_durations={"qmstop": 2.0}):
        upid = prox.nodes("pve").qemu(vmid).status.stop.post()
    active = prox.nodes("pve").tasks.get(source="active")
    assert [t["upid"] for t in active] == [upid] and "status" not in active[0]
