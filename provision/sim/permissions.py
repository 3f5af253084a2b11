"""Which privilege each simulated PVE API method checks, and the checks made inside handlers.

`ENDPOINT_CHECKS` is the `permissions => {...}` of every method in `urls.ROUTES`, checked by the
server before the node is resolved and before parameters are validated, as pveproxy does
(pve-manager `PVE/HTTPServer.pm:170-174`: `check_api2_permissions` right after the API-token
test). The functions below are the checks PVE makes in the handler code itself (storage,
bridges, per-key config privileges, task ownership, filtered listings); `models.Cluster` calls
them where PVE does, so a failing one is a synchronous 403 or a task error as on PVE.

Short forms: `Qemu.pm` = qemu-server `src/PVE/API2/Qemu.pm` (e6352be, 9.2.6), `Agent.pm` =
qemu-server `src/PVE/API2/Qemu/Agent.pm`, `Cluster.pm`/`Nodes.pm`/`Tasks.pm` = pve-manager
`PVE/API2/*.pm` (14a22df3), `RPCEnvironment.pm` = pve-access-control `src/PVE/RPCEnvironment.pm`
(5ccd07d), `GuestHelpers.pm` = pve-guest-common `src/PVE/GuestHelpers.pm` (4a8f6cb).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from provision.sim import vmconfig
from provision.sim.access import ROOT, Access, normalize_path, permission_denied

EVERYONE = "all"  # permissions => { user => 'all' }


@dataclass(frozen=True)
class Perm:
    """`['perm', path, [privs], any => 1, require_param => p]` (RPCEnvironment.pm:479-492)."""

    path: str
    privs: tuple[str, ...]
    any_of: bool = False
    require_param: str | None = None


@dataclass(frozen=True)
class AllOf:
    """`['and', ...]`: every sub-check, each raising its own 403 (RPCEnvironment.pm:468-472)."""

    checks: tuple[Check, ...]


@dataclass(frozen=True)
class OneOf:
    """`['or', ...]`: one sub-check; if none passes, a bare 403 `Permission check failed`
    naming no privilege (RPCEnvironment.pm:473-478)."""

    checks: tuple[Check, ...]


Check = Perm | AllOf | OneOf | str

VM = "/nodes/{node}/qemu/{vmid}"
AUDIT = Perm("/vms/{vmid}", ("VM.Audit",))
POWER = Perm("/vms/{vmid}", ("VM.PowerMgmt",))
# $vm_config_perm_list (Qemu.pm:2634-2643): any of them lets a caller into config POST/PUT
VM_CONFIG_ANY = Perm(
    "/vms/{vmid}",
    (
        "VM.Config.Disk", "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Memory",
        "VM.Config.Network", "VM.Config.HWType", "VM.Config.Options", "VM.Config.Cloudinit",
    ),
    any_of=True,
)  # fmt: skip
# Agent.pm:25-118 `$guest_agent_commands` perms; register_command adds Unrestricted as an
# alternative (Agent.pm:183-185: check_any on /vms/{vmid}).
AGENT_PRIVILEGE = {
    "ping": ("POST", "VM.GuestAgent.Audit"),  # Agent.pm:26-29
    "info": ("GET", "VM.GuestAgent.Audit"),  # Agent.pm:34-37
    "network-get-interfaces": ("GET", "VM.GuestAgent.Audit"),  # Agent.pm:65-68
    "get-host-name": ("GET", "VM.GuestAgent.Audit"),  # Agent.pm:102-105
    "get-osinfo": ("GET", "VM.GuestAgent.Audit"),  # Agent.pm:106-109
    "file-read": ("GET", "VM.GuestAgent.FileRead"),  # Agent.pm:445-458 (registered by hand)
}

ENDPOINT_CHECKS: dict[tuple[str, str], Check] = {
    ("GET", "/version"): EVERYONE,  # pve-manager PVE/API2.pm:89
    # pve-access-control API2/AccessControl.pm `permissions`: one's own; others: see Access
    ("GET", "/access/permissions"): EVERYONE,
    ("GET", "/cluster"): EVERYONE,  # Cluster.pm:143
    ("GET", "/cluster/nextid"): EVERYONE,  # Cluster.pm:1018
    ("GET", "/cluster/resources"): EVERYONE,  # Cluster.pm:267; entries filtered, see below
    ("GET", "/cluster/status"): Perm("/", ("Sys.Audit",)),  # Cluster.pm:871-873
    ("GET", "/nodes"): EVERYONE,  # Nodes.pm:2912; stats need Sys.Audit (Nodes.pm:2986)
    ("GET", "/nodes/{node}"): EVERYONE,  # Nodes.pm:211
    ("GET", "/nodes/{node}/status"): Perm("/nodes/{node}", ("Sys.Audit",)),  # Nodes.pm:356-358
    # pve-storage src/PVE/API2/Storage/Status.pm:72-76, entries filtered at :244-245
    ("GET", "/nodes/{node}/storage"): EVERYONE,
    ("GET", "/nodes/{node}/network"): EVERYONE,  # pve-manager PVE/API2/Network.pm `index`
    ("GET", "/nodes/{node}/qemu"): EVERYONE,  # Qemu.pm:1078-1081, filtered at :1113
    ("GET", VM): EVERYONE,  # Qemu.pm:1636-1638
    ("DELETE", VM): Perm("/vms/{vmid}", ("VM.Allocate",)),  # Qemu.pm:2784-2786
    # Qemu.pm:4335-4348; storages and bridges are checked in the handler (clone_access)
    ("POST", f"{VM}/clone"): AllOf(
        (
            Perm("/vms/{vmid}", ("VM.Clone",)),
            OneOf(
                (
                    Perm("/vms/{newid}", ("VM.Allocate",)),
                    Perm("/pool/{pool}", ("VM.Allocate",), require_param="pool"),
                )
            ),
        )
    ),
    # Qemu.pm create_vm: VM.Allocate on the new VMID (pools and per-storage checks: see images.py)
    ("POST", "/nodes/{node}/qemu"): Perm("/vms/{vmid}", ("VM.Allocate",)),
    ("POST", f"{VM}/template"): Perm("/vms/{vmid}", ("VM.Allocate",)),  # Qemu.pm `template`
    # pve-storage Status.pm `download_url`: allocation on the storage and Sys.Modify on / (or
    # the newer Sys.AccessNetwork on the node), since it probes the host's network
    ("POST", "/nodes/{node}/storage/{storage}/download-url"): AllOf(
        (
            Perm("/storage/{storage}", ("Datastore.AllocateTemplate",)),
            OneOf(
                (
                    Perm("/", ("Sys.Audit", "Sys.Modify")),
                    Perm("/nodes/{node}", ("Sys.AccessNetwork",)),
                )
            ),
        )
    ),
    ("GET", "/nodes/{node}/storage/{storage}/content"): Perm(  # pve-storage Content.pm `index`
        "/storage/{storage}", ("Datastore.Audit", "Datastore.AllocateSpace"), any_of=True
    ),
    ("GET", f"{VM}/config"): AUDIT,  # Qemu.pm:1793-1795
    ("POST", f"{VM}/config"): VM_CONFIG_ANY,  # Qemu.pm:2652-2654; per key: config_key_access
    ("PUT", f"{VM}/config"): VM_CONFIG_ANY,  # Qemu.pm:2725-2727
    ("GET", f"{VM}/pending"): AUDIT,  # Qemu.pm:1864-1866
    ("PUT", f"{VM}/cloudinit"): Perm("/vms/{vmid}", ("VM.Config.Cloudinit",)),  # Qemu.pm:2023
    # Qemu.pm:5945-5947; the storage is checked inside the task (resize_storage_access)
    ("PUT", f"{VM}/resize"): Perm("/vms/{vmid}", ("VM.Config.Disk",)),
    ("GET", f"{VM}/status"): EVERYONE,  # Qemu.pm:3385-3387
    ("GET", f"{VM}/status/current"): AUDIT,  # Qemu.pm:3432-3434
    ("POST", f"{VM}/status/start"): POWER,  # Qemu.pm:3500-3502
    ("POST", f"{VM}/status/stop"): POWER,  # Qemu.pm:3689-3691
    ("POST", f"{VM}/status/shutdown"): POWER,  # Qemu.pm:3865-3867
    ("POST", f"{VM}/status/reboot"): POWER,  # Qemu.pm:3980-3982
    # Tasks.pm:40-47 / :338-342 / :457-461; owner or Sys.Audit, see task_access
    ("GET", "/nodes/{node}/tasks"): EVERYONE,
    ("GET", "/nodes/{node}/tasks/{upid}/log"): EVERYONE,
    ("GET", "/nodes/{node}/tasks/{upid}/status"): EVERYONE,
}
for _command, (_method, _privilege) in AGENT_PRIVILEGE.items():
    ENDPOINT_CHECKS[(_method, f"{VM}/agent/{_command}")] = Perm(
        "/vms/{vmid}", (_privilege, "VM.GuestAgent.Unrestricted"), any_of=True
    )


def check_endpoint(
    access: Access, authid: str, method: str, template: str, params: dict[str, Any]
) -> None:
    """`check_api2_permissions` (RPCEnvironment.pm:549-566) for one API call."""
    if authid == ROOT:
        return
    check = ENDPOINT_CHECKS.get((method, template))
    if check is None:  # not implemented here: the call ends in 501 anyway
        return
    run_check(access, authid, check, params)


def run_check(
    access: Access, authid: str, check: Check, params: dict[str, Any], noerr: bool = False
) -> bool:
    """`exec_api2_perm_check` (RPCEnvironment.pm:459-547), for the tests PVE's qemu API uses."""
    if check == EVERYONE:
        return True
    if isinstance(check, AllOf):
        for sub in check.checks:
            run_check(access, authid, sub, params)
        return True
    if isinstance(check, OneOf):
        if any(run_check(access, authid, sub, params, noerr=True) for sub in check.checks):
            return True
        if noerr:
            return False
        raise permission_denied()
    assert isinstance(check, Perm)
    if check.require_param and params.get(check.require_param) is None:
        if noerr:
            return False
        raise permission_denied()
    path = re.sub(r"\{(\w+)\}", lambda m: str(params.get(m.group(1), "")), check.path)
    return access.check(authid, normalize_path(path), check.privs, check.any_of, noerr)


# --- checks in handler code --------------------------------------------------------------------

# Qemu.pm:789-862: which privilege each config key needs ($check_vm_modify_config_perm)
CPU_KEYS = {"cores", "cpu", "runningcpu", "cpulimit", "cpuunits", "numa", "smp", "sockets",
            "vcpus"}  # fmt: skip
MEMORY_KEYS = {"memory", "balloon", "shares", "allow-ksm"}
HWTYPE_KEYS = {"acpi", "hotplug", "kvm", "machine", "runningmachine", "scsihw", "smbios1",
               "tablet", "vga", "watchdog", "audio0", "rng0"}  # fmt: skip
GENERAL_KEYS = {"agent", "autostart", "bios", "description", "keyboard", "localtime",
                "migrate_downtime", "migrate_speed", "name", "onboot", "ostype", "protection",
                "reboot", "startdate", "startup", "tdf", "template"}  # fmt: skip
DISK_OPTION_KEYS = {"boot", "bootdisk", "vmstatestorage"}
CLOUDINIT_KEYS = {"cicustom", "cipassword", "citype", "ciuser", "ciupgrade", "nameserver",
                  "searchdomain", "sshkeys"}  # fmt: skip


def config_key_access(access: Access, authid: str, vmid: int, keys: list[str]) -> None:
    """$check_vm_modify_config_perm (Qemu.pm:995-1039), called for `delete` and for the set
    keys before the config is even loaded (Qemu.pm:2196-2198): synchronous 403s."""
    if authid == ROOT:
        return
    path = f"/vms/{vmid}"
    for key in sorted(keys):
        if vmconfig.DRIVE_KEY.match(key) or key in ("cdrom", "tags"):
            continue  # checked with the value (drive_access) / tag_access
        if re.match(r"^(?:unused|serial|usb|hostpci|virtiofs)\d+$", key):
            continue  # value-dependent checks in PVE; not simulated (see README)
        if key in CPU_KEYS or re.match(r"^numa\d+$", key):
            access.check(authid, path, ["VM.Config.CPU"])
        elif key in MEMORY_KEYS:
            access.check(authid, path, ["VM.Config.Memory"])
        elif key in HWTYPE_KEYS:
            access.check(authid, path, ["VM.Config.HWType"])
        elif key in GENERAL_KEYS:
            access.check(authid, path, ["VM.Config.Options"])
            if key == "startup":
                access.check(authid, "/", ["Sys.Modify"])
        elif key == "freeze":
            access.check(authid, path, ["VM.PowerMgmt"])
        elif key in DISK_OPTION_KEYS:
            access.check(authid, path, ["VM.Config.Disk"])
        elif re.match(r"^net\d+$", key) or key == "running-nets-host-mtu":
            access.check(authid, path, ["VM.Config.Network"])
        elif key in CLOUDINIT_KEYS or re.match(r"^ipconfig\d+$", key):
            access.check(authid, path, ["VM.Config.Cloudinit", "VM.Config.Network"], True)
        elif key == "vmstate":
            access.check(authid, path, ["VM.Config.Disk", "VM.PowerMgmt"])
        else:
            from provision.sim.errors import PveError

            raise PveError.internal(f"only root can set '{key}' config")


def bridge_access(access: Access, authid: str, config: dict[str, str]) -> None:
    """check_bridge_access (qemu-server QemuServer.pm:6417-6429) -> check_vnet_access
    (GuestHelpers.pm:397-421): SDN.Use on /sdn/zones/localnetwork/<bridge>[/<vlan tag>]."""
    if authid == ROOT:
        return
    for key in sorted(config):
        if not vmconfig.NET_KEY.match(key):
            continue
        options = dict(p.partition("=")[::2] for p in config[key].split(",") if "=" in p)
        bridge = options.get("bridge")
        if not bridge:
            continue
        zone_path = f"/sdn/zones/localnetwork/{bridge}"
        tag, trunks = options.get("tag"), options.get("trunks")
        if tag:
            access.check(authid, f"{zone_path}/{tag}", ["SDN.Use"])
        for vlan in sorted(set(re.split(r";", trunks or "")) - {""}):
            access.check(authid, f"{zone_path}/{vlan}", ["SDN.Use"])
        if not (tag or trunks):
            access.check(authid, zone_path, ["SDN.Use"])


def clone_access(access: Access, authid: str, config: dict[str, str], storage: str | None) -> None:
    """The clone handler's own checks (Qemu.pm:4490-4494): Datastore.AllocateSpace on the
    storage of every disk that is not a CD-ROM, or on the target `storage` of a full clone
    ($check_storage_access_clone, Qemu.pm:282-323), then SDN.Use on every bridge."""
    if authid == ROOT:
        return
    for key, volid in vmconfig.drives(config):
        if vmconfig.is_cdrom(config[key]):  # cloud-init drives are media=cdrom: allowed
            continue
        access.check(
            authid, f"/storage/{storage or volid.split(':', 1)[0]}", ["Datastore.AllocateSpace"]
        )
    if "vmstatestorage" in config:
        access.check(authid, f"/storage/{config['vmstatestorage']}", ["Datastore.AllocateSpace"])
    bridge_access(access, authid, config)


def update_access(
    access: Access, authid: str, vmid: int, old: dict[str, str], values: dict[str, str]
) -> None:
    """Checks Qemu.pm makes while writing the change (its $updatefn, so inside the task for a
    POST): drives by kind ($check_drive_perms, Qemu.pm:2273-2288) and tags
    (assert_tag_permissions, Qemu.pm:2491-2494 -> GuestHelpers.pm:314-347)."""
    if authid == ROOT:
        return
    path = f"/vms/{vmid}"
    for key in sorted(values):
        value = values[key]
        if vmconfig.DRIVE_KEY.match(key):
            if vmconfig.is_cloudinit(value):
                access.check(authid, path, ["VM.Config.Cloudinit", "VM.Config.CDROM"])
            elif vmconfig.is_cdrom(value):
                access.check(authid, path, ["VM.Config.CDROM"])
            else:
                access.check(authid, path, ["VM.Config.Disk"])
        elif key == "tags" and value != old.get("tags", ""):
            # Only VM.Config.Options: datacenter.cfg's tag access rules are not simulated.
            access.check(authid, path, ["VM.Config.Options"])


def resize_storage_access(access: Access, authid: str, volid: str) -> None:
    """Datastore.AllocateSpace on the disk's storage, checked inside the resize task
    (Qemu.pm:6025), so a missing one is a task error, not a 403."""
    if authid != ROOT:
        access.check(authid, f"/storage/{volid.split(':', 1)[0]}", ["Datastore.AllocateSpace"])


def task_access(access: Access, authid: str, node: str, task_user: str) -> None:
    """Tasks.pm:27-37 $check_task_user and :527-528: the owner (a token's user sees its
    tokens' tasks too) or Sys.Audit on /nodes/<node>."""
    if authid == ROOT or owns_task(authid, task_user):
        return
    access.check(authid, f"/nodes/{node}", ["Sys.Audit"])


def owns_task(authid: str, task_user: str) -> bool:
    return authid == task_user or ("!" in task_user and authid == task_user.split("!", 1)[0])


def sees(access: Access, authid: str, path: str, privs: list[str], any_of: bool = False) -> bool:
    """A noerr check, for listings PVE filters instead of refusing."""
    return authid == ROOT or access.check(authid, path, privs, any_of, noerr=True)
