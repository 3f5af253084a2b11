"""`labctl up / ls / resize / down`: parsing and rendering; the work is in provision.pve.

Heavy imports (proxmoxer, requests, paramiko) happen inside the commands, so `labctl --help`
stays about as fast as starting Python.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provision.cli import cli
from provision.cli.app import AppContext, jobs_option, pass_app, wait_option
from provision.errors import UsageError

if TYPE_CHECKING:
    from provision.pve.lifecycle import Lab, ShapeRequest, VmInfo


def _shape_request(
    cores: str | None, ram: str | None, cpu_type: str | None, disk: str | None
) -> ShapeRequest:
    from provision.pve.lifecycle import ShapeRequest
    from provision.shape import parse_cores, parse_disk_gib, parse_ram

    return ShapeRequest(
        cores=parse_cores(cores) if cores is not None else None,
        memory_mib=parse_ram(ram) if ram is not None else None,
        cpu_type=_cpu_type(cpu_type) if cpu_type is not None else None,
        disk_gib=parse_disk_gib(disk) if disk is not None else None,
    )


def _cpu_type(text: str) -> str:
    value = text.strip()
    if not value or any(c in value for c in ",= "):
        raise UsageError(
            f"invalid cpu type {text!r}: give a Proxmox CPU model such as host, "
            "x86-64-v3 or x86-64-v2-AES"
        )
    return value


# -- up ----------------------------------------------------------------------------------------


@cli.command()
@click.argument("name", required=False)
@click.option("--cores", help="vCPUs (1..node CPUs)")
@click.option("--ram", help="RAM: 512M, 8G, 8GiB, 1.5G or plain MiB")
@click.option("--disk", help="grow the boot disk to this size (grow only), e.g. 40G")
@click.option("--cpu-type", help="Proxmox CPU type (default: host)")
@click.option("--node", default="", help="node to create the VM on")
@click.option("--full", is_flag=True, help="full clone onto template.storage (default: linked)")
@click.option(
    "--allow-overcommit",
    is_flag=True,
    help="allow more cores than the node has or more RAM than it has free",
)
@click.option("--rollback", is_flag=True, help="destroy the new VM if a later step fails")
@click.option("--no-deploy", is_flag=True, help="stop once SSH answers (skip Ollama)")
@wait_option
@jobs_option
@pass_app
def up(
    app: AppContext,
    name: str | None,
    cores: str | None,
    ram: str | None,
    disk: str | None,
    cpu_type: str | None,
    node: str,
    full: bool,
    allow_overcommit: bool,
    rollback: bool,
    no_deploy: bool,
    wait: str | None,
    jobs_text: str | None,
) -> None:
    """Create (or reconcile) VM NAME at a shape until SSH answers; no NAME = every [vm.*],
    --jobs at a time (one VM failing does not stop the others)."""
    from provision.batch import each_vm, first_error, parse_jobs
    from provision.pve.lease import parse_wait

    parse_wait(wait)  # a bad --wait or --jobs is refused before anything is touched
    jobs = parse_jobs(jobs_text)
    flags = _shape_request(cores, ram, cpu_type, disk)
    config = app.config
    if name is None:
        if not config.vms:
            raise UsageError("no VM named, and the lab file declares no [vm.NAME] tables")
        if not flags.empty or node:
            raise UsageError(
                "shape and --node flags need a VM name; the lab file gives shapes "
                "when no name is given"
            )
        names = list(config.vms)
    else:
        names = [name]
    lab = app.lab()
    started = time.monotonic()
    existing = set(lab.managed_names())
    deploying = threading.Lock()  # one Ansible run at a time: they share the inventory file

    def bring_up(vm_name: str) -> dict[str, Any]:
        # an existing VM is changed (reshaped, started, deployed): hold its lease meanwhile
        with (
            app.hold(lab, vm_name, f"up {vm_name}", wait) if vm_name in existing else nullcontext()
        ):
            info = _up_one(
                app,
                lab,
                vm_name,
                flags,
                node=node,
                full=full,
                allow_overcommit=allow_overcommit,
                rollback=rollback,
            )
            entry = info.to_json()
            with deploying:
                entry["deploy"] = None if no_deploy else _deploy(app, info)
        entry["ssh"] = _ssh_command(app, info)
        return entry

    outcomes = each_vm(names, bring_up, jobs)
    results = [o.result for o in outcomes if o.result is not None]
    ready = [
        f"{e['name']} is ready (vmid {e['vmid']} on {e['node']}, {_label(e)}): {e['ssh']}"
        for e in results
    ]
    failures = [o for o in outcomes if o.error is not None]
    error = first_error(outcomes)
    if error is not None and name is not None:
        raise error
    for failed in failures:
        app.reporter.warn(f"{failed.name}: not up: {failed.error}")
    elapsed = time.monotonic() - started
    stats = lab.client.stats.as_dict()
    document: dict[str, Any] = {"vms": results, "elapsed_s": round(elapsed, 3), "api": stats}
    if name is not None:
        document = {"vm": results[0], "elapsed_s": round(elapsed, 3), "api": stats}
    else:
        document["failed"] = [{"name": f.name, "error": str(f.error)} for f in failures]
    app.emit(document, "\n".join(ready))
    if error is not None:
        raise error


def _label(entry: dict[str, Any]) -> str:
    from provision.shape import Shape

    return Shape(entry["cores"], entry["memory_mib"], entry["cpu_type"]).label


def _ssh_command(app: AppContext, info: VmInfo) -> str:
    """How to log in by hand with the same pinned host key labctl uses."""
    key = Path(str(app.config.get("ssh.key"))).expanduser()
    known = app.state_dir / "known_hosts"
    return (
        f"ssh -i {key} -o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes "
        f"{app.config.get('ssh.user')}@{info.ip}"
    )


def _up_one(
    app: AppContext,
    lab: Lab,
    name: str,
    flags: ShapeRequest,
    *,
    node: str,
    full: bool,
    allow_overcommit: bool,
    rollback: bool,
) -> VmInfo:
    from provision.config import validate_vm_name
    from provision.pve.lifecycle import ShapeRequest

    validate_vm_name(name)
    spec = app.config.vm_spec(name)
    request = flags
    if spec is not None:
        declared = ShapeRequest.exactly(spec.shape)
        request = ShapeRequest(
            cores=flags.cores if flags.cores is not None else declared.cores,
            memory_mib=flags.memory_mib if flags.memory_mib is not None else declared.memory_mib,
            cpu_type=flags.cpu_type if flags.cpu_type is not None else declared.cpu_type,
            disk_gib=flags.disk_gib if flags.disk_gib is not None else declared.disk_gib,
        )
    return lab.up(
        name,
        request,
        node=node or (spec.node if spec else ""),
        full=full or bool(spec and spec.full),
        allow_overcommit=allow_overcommit,
        rollback=rollback,
        ip=spec.ip if spec else None,
        gateway=spec.gateway if spec else None,
    )


def _deploy(app: AppContext, info: VmInfo) -> dict[str, Any]:
    """`up` deploys Ollama and the models once SSH answers (--no-deploy skips it)."""
    from provision.deploy import deploy_after_up
    from provision.errors import DeployError

    app.reporter.stage("deploy")
    try:
        return deploy_after_up(app, info).to_json()
    except DeployError as error:
        # The VM itself is fine: say how to retry the deploy or remove the VM.
        raise DeployError(
            error.message,
            hint=f"VM {info.name} is up; re-run `labctl deploy "
            f"{info.name}` or remove it with `labctl down {info.name}`",
        ) from error


# -- ls ----------------------------------------------------------------------------------------


@cli.command("ls")
@click.option("--all", "show_all", is_flag=True, help="also VMs labctl does not manage")
@pass_app
def ls(app: AppContext, show_all: bool) -> None:
    """List labctl's VMs: name, vmid, node, status, shape, IP, uptime."""
    from provision.cli.render import render_vms

    vms = app.lab().list(include_unmanaged=show_all)
    app.emit({"vms": [vm.to_json() for vm in vms]}, render_vms(vms, show_all=show_all))


# -- resize ------------------------------------------------------------------------------------


@cli.command()
@click.argument("name")
@click.option("--cores", help="vCPUs")
@click.option("--ram", help="RAM: 512M, 8G, 8GiB, 1.5G or plain MiB")
@click.option("--cpu-type", help="Proxmox CPU type")
@click.option("--reboot", is_flag=True, help="reboot a running VM to apply what cannot hot-plug")
@click.option(
    "--allow-overcommit",
    is_flag=True,
    help="allow more cores than the node has or more RAM than it has free",
)
@wait_option
@pass_app
def resize(
    app: AppContext,
    name: str,
    cores: str | None,
    ram: str | None,
    cpu_type: str | None,
    reboot: bool,
    allow_overcommit: bool,
    wait: str | None,
) -> None:
    """Change the cores / RAM / cpu type of VM NAME (running: hot-plug or pending)."""
    request = _shape_request(cores, ram, cpu_type, None)
    if request.empty:
        raise UsageError("nothing to change: give --cores, --ram and/or --cpu-type")
    from provision.cli.render import render_resize

    lab = app.lab()
    with app.hold(lab, name, f"resize {name}", wait):
        result = lab.resize(name, request, reboot, allow_overcommit=allow_overcommit)
    app.emit(result.to_json(), render_resize(result))


def _forget_deployed(app: AppContext, names: list[str]) -> None:
    """Destroyed VMs leave the shared Ansible inventory too."""
    from provision.deploy import forget_hosts, ssh_settings

    forget_hosts(app.state_dir, names, ssh_settings(app.config, app.state_dir))


# -- down --------------------------------------------------------------------------------------


@cli.command()
@click.argument("name", required=False)
@click.option("--all", "down_all", is_flag=True, help="every VM tagged labctl")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@wait_option
@jobs_option
@pass_app
def down(
    app: AppContext,
    name: str | None,
    down_all: bool,
    yes: bool,
    wait: str | None,
    jobs_text: str | None,
) -> None:
    """Shut down and destroy VM NAME (only VMs tagged labctl); its pinned host key goes too.

    With --all, the VMs are removed --jobs at a time; one that fails does not stop the others,
    and each VM's outcome is listed.
    """
    if bool(name) == down_all:
        raise UsageError("give a VM name or --all (not both)")
    from provision.batch import each_vm, first_error, parse_jobs
    from provision.pve.lease import parse_wait

    parse_wait(wait)  # a bad --wait or --jobs is refused before anything is touched
    jobs = parse_jobs(jobs_text)
    lab = app.lab()
    if down_all:
        targets = lab.list()
    else:
        assert name is not None
        targets = [lab.find(name)]  # refuses a VM without the labctl tag, --yes or not
    if not targets:
        app.say("no labctl VMs to remove")
        app.emit({"destroyed": []}, None)
        return
    listing = ", ".join(f"{vm.name} (vmid {vm.vmid} on {vm.node})" for vm in targets)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"refusing to destroy {listing} without confirmation: no terminal "
                "to ask on; pass --yes"
            )
        if not click.confirm(f"Destroy {listing} and its disks?", default=False, err=True):
            app.say("nothing destroyed")
            app.emit({"destroyed": []}, None)
            return
    by_name = {vm.name: vm for vm in targets}

    def remove(vm_name: str) -> None:
        with app.hold(lab, vm_name, f"down {vm_name}", wait):
            lab.down(vm_name)

    outcomes = each_vm(list(by_name), remove, jobs)
    gone = [o.name for o in outcomes if o.ok]
    if gone:
        _forget_deployed(app, gone)  # once, after the concurrent removals: one shared file
    for outcome in outcomes:
        vm = by_name[outcome.name]
        if outcome.error is None:
            app.say(f"{vm.name} (vmid {vm.vmid}) destroyed")
        elif down_all:
            app.reporter.warn(f"{vm.name} (vmid {vm.vmid}) not destroyed: {outcome.error}")
    error = first_error(outcomes)
    if error is not None and not down_all:
        raise error
    app.emit(
        {
            "destroyed": [
                {"name": n, "vmid": by_name[n].vmid, "node": by_name[n].node} for n in gone
            ],
            "failed": [
                {"name": o.name, "error": str(o.error)} for o in outcomes if o.error is not None
            ],
        },
        None,
    )
    if error is not None:
        raise error
