"""`labctl doctor`: is this Proxmox VE, template and lab file ready for labctl?

Each check is a small function returning a `Check` (ok / warning / problem, what was seen, and
the fix). Only problems make `labctl doctor` fail: a warning is something labctl works with
but that costs speed or safety (a cpu type hiding AVX2, a key readable by others).

The rules and what they rest on:
- Privileges: `NEEDED_PRIVILEGES` is README's LabctlRole, each on the ACL path PVE checks it
  on (the PVE source behind each is cited in provision/sim/permissions.py), read with
  `GET /access/permissions?path=...` (pve-access-control API2/AccessControl.pm `permissions`).
- Linked clones: a clone of a template's base volume is linked when the storage plugin declares
  the `clone` feature for base volumes (`volume_has_feature`; pve-api.md section 10 on
  `Linked clone feature is not supported`): lvmthin, zfspool, zfs (over iSCSI), rbd and btrfs
  do; file storages (dir, nfs, cifs, glusterfs) do for qcow2 images; plain lvm and iSCSI LUNs
  do not, so VMs there need a full clone.
- AVX2: kvm64/qemu64 (and their 32-bit forms) and x86-64-v2(-AES) have no AVX2 (ollama.md
  section 5.5, the x86-64 psABI levels); llama.cpp then runs its SSE paths.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provision.config import LabConfig
from provision.config_vms import VmSpec
from provision.errors import LabctlError
from provision.pve.client import PveClient, format_fingerprint, normalize_fingerprint
from provision.pve.shapes import boot_disk, parse_cpu_type
from provision.shape import DEFAULT_DISK_GIB, format_mib

OK, WARNING, PROBLEM = "ok", "warning", "problem"
GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Check:
    """One row of the report."""

    name: str
    status: str  # OK, WARNING or PROBLEM
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Need:
    """A privilege labctl needs and where PVE checks it: on the template (`/vms/<vmid>`), the
    new VMs (`/vms`), the node, the storage of the disks, or the bridge of the NIC."""

    privilege: str
    on: str


# README's LabctlRole (tests/unit/test_doctor.py keeps the two equal).
NEEDED_PRIVILEGES: tuple[Need, ...] = (
    Need("VM.Audit", "template"),  # find it in /cluster/resources, read its config
    Need("VM.Clone", "template"),
    *(
        Need(privilege, "vms")
        for privilege in (
            "VM.Allocate", "VM.Audit", "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk",
            "VM.Config.Memory", "VM.Config.Options", "VM.GuestAgent.Audit",
            "VM.GuestAgent.FileRead", "VM.PowerMgmt",
        )
    ),
    Need("Sys.Audit", "node"),  # the node's free memory
    Need("Datastore.AllocateSpace", "storage"),  # clone and grow the disk
    Need("SDN.Use", "bridge"),  # every NIC's bridge, when cloning
)  # fmt: skip

LINKED_CLONE_TYPES = frozenset({"lvmthin", "zfspool", "zfs", "rbd", "btrfs"})
FILE_STORAGE_TYPES = frozenset({"dir", "nfs", "cifs", "glusterfs"})
HIDES_AVX2 = frozenset({"kvm32", "kvm64", "qemu32", "qemu64", "x86-64-v2", "x86-64-v2-AES"})
_DRIVE_KEY = re.compile(r"^(ide|sata|scsi|virtio)\d+$")


# --- pure rules -----------------------------------------------------------------------------


def parse_property_string(text: str, default_key: str) -> dict[str, str]:
    """PVE's `key=value,...` with an optional leading bare value for `default_key`:
    `enabled=1,fstrim_cloned_disks=1`, `1`, `local-lvm:base-9000-disk-0,size=3584M`."""
    result: dict[str, str] = {}
    for index, part in enumerate(p for p in str(text).split(",") if p):
        key, eq, value = part.partition("=")
        if eq and not (index == 0 and ":" in key):
            result[key.strip()] = value.strip()
        elif index == 0:
            result[default_key] = part.strip()
    return result


def agent_enabled(value: str | None) -> bool:
    """The `agent` option (`1`, `enabled=1,type=virtio`) turns the guest agent on."""
    enabled = parse_property_string(value or "", "enabled").get("enabled", "0")
    return enabled.lower() in ("1", "on", "yes", "true")


def cloudinit_drive(config: Mapping[str, Any]) -> str | None:
    """The key of the template's cloud-init drive (`ide2: local-lvm:vm-9000-cloudinit,...`)."""
    for key in sorted(config):
        if _DRIVE_KEY.match(key) and "cloudinit" in str(config[key]).split(",", 1)[0]:
            return key
    return None


@dataclass(frozen=True)
class Volume:
    key: str  # scsi0
    storage: str  # local-lvm
    name: str  # base-9000-disk-0
    size_gib: int


def boot_volume(config: Mapping[str, Any]) -> Volume | None:
    """The boot disk's storage and volume name, from `scsi0: local-lvm:base-9000-disk-0,...`."""
    found = boot_disk(config)
    if found is None:
        return None
    key, size_gib = found
    volume_id = parse_property_string(str(config[key]), "file").get("file", "")
    storage, sep, name = volume_id.partition(":")
    return Volume(key, storage, name, size_gib) if sep else None


def supports_linked_clone(storage_type: str, volume_name: str) -> bool:
    """Whether a template's base volume there can be cloned linked (module docstring)."""
    if storage_type in LINKED_CLONE_TYPES:
        return True
    return storage_type in FILE_STORAGE_TYPES and volume_name.endswith(".qcow2")


def thin_provisioned(storage_type: str, volume_name: str) -> bool:
    """Space is taken as the guest writes, so a full disk size need not be free up front."""
    return supports_linked_clone(storage_type, volume_name)


def hides_avx2(cpu_type: str) -> bool:
    """A PVE cpu type (`host`, `cputype=kvm64,flags=...`) that keeps AVX2 from the guest."""
    return parse_cpu_type(cpu_type) in HIDES_AVX2


def has_avx2(flags: str) -> bool:
    """/proc/cpuinfo-style flags (the node's `cpuinfo.flags`) include avx2."""
    return "avx2" in str(flags).split()


# --- what the Proxmox checks share ----------------------------------------------------------


@dataclass
class Seen:
    """The lab file, the client, and what was read from PVE (each GET once per run)."""

    config: LabConfig
    client: PveClient
    template: dict[str, Any] | None = None  # its /cluster/resources entry
    template_config: dict[str, Any] = field(default_factory=dict)
    new_vms: dict[str, VmSpec] = field(default_factory=dict)  # lab VMs not made yet
    _cache: dict[str, Any] = field(default_factory=dict)

    def get(self, endpoint: str, **params: Any) -> Any:
        """A GET (each once per run); request(), as `path` may be one of the parameters."""
        key = endpoint + repr(sorted(params.items()))
        if key not in self._cache:
            self._cache[key] = self.client.request("GET", endpoint, params)
        return self._cache[key]

    @property
    def vmid(self) -> int:
        return int(self.template["vmid"]) if self.template else 0

    @property
    def volume(self) -> Volume | None:
        return boot_volume(self.template_config)

    def node_of(self, spec: VmSpec) -> str:
        """Where `up` puts the VM: its own node, proxmox.node, else most free memory."""
        if spec.node:
            return spec.node
        wanted = str(self.config.get("proxmox.node")).strip()
        if wanted:
            return wanted
        online = [n for n in self.get("nodes") or [] if n.get("status") == "online"]
        if not online:
            return ""
        best = max(online, key=lambda n: int(n.get("maxmem", 0)) - int(n.get("mem", 0)))
        return str(best.get("node", ""))

    def nodes(self) -> list[str]:
        """The nodes new VMs go to, else the template's."""
        found = {self.node_of(spec) for spec in self.new_vms.values()}
        if not found and self.template:
            found = {str(self.template["node"])}
        return sorted(n for n in found if n)

    def storage(self, node: str, name: str) -> dict[str, Any] | None:
        """GET /nodes/{node}/storage lists only what the caller may audit or allocate on."""
        entries = self.get(f"nodes/{node}/storage") or []
        return next((s for s in entries if s.get("storage") == name), None)

    def disk_storage(self, spec: VmSpec) -> str:
        """A linked clone's disk stays on the template's storage; a full one goes to
        template.storage (provision/pve/clone.py)."""
        volume = self.volume
        if spec.full or volume is None:
            return str(self.config.get("template.storage"))
        return volume.storage

    def bridge(self) -> str:
        """template.bridge, else the first NIC's bridge (what the clone keeps)."""
        configured = str(self.config.get("template.bridge")).strip()
        if configured:
            return configured
        net0 = parse_property_string(str(self.template_config.get("net0", "")), "model")
        return net0.get("bridge", "")

    def template_bridges(self) -> set[str]:
        """Cloning checks SDN.Use on the bridge of every NIC of the template."""
        return {
            bridge
            for key, value in self.template_config.items()
            if re.match(r"^net\d+$", key)
            and (bridge := parse_property_string(str(value), "model").get("bridge"))
        }


# --- checks without Proxmox -----------------------------------------------------------------


def check_tls(config: LabConfig) -> Check:
    """Which of the two safe answers to PVE's certificate the lab file uses."""
    pin = str(config.get("proxmox.fingerprint")).strip()
    bundle = str(config.get("proxmox.ca_bundle")).strip()
    if pin:
        return Check("TLS", OK, f"certificate pinned: SHA-256 {_short_pin(pin)}")
    if not config.get("proxmox.verify"):
        return Check(
            "TLS",
            WARNING,
            "certificate neither verified nor pinned",
            "pin it: proxmox.fingerprint (`pvenode cert info` on the node shows it)",
        )
    if bundle:
        if not os.access(Path(bundle).expanduser(), os.R_OK):
            return Check(
                "TLS",
                PROBLEM,
                f"CA bundle {bundle} is not readable",
                "fix proxmox.ca_bundle, or pin proxmox.fingerprint instead",
            )
        return Check("TLS", OK, f"certificate verified against the CA bundle {bundle}")
    return Check("TLS", OK, "certificate verified against the system's CAs")


def _short_pin(pin: str) -> str:
    try:
        text = format_fingerprint(normalize_fingerprint(pin))
    except LabctlError:
        return pin
    return text[:23] + "..." if len(text) > 26 else text


def check_ssh_key(config: LabConfig) -> Check:
    """ssh.key and its .pub (given to cloud-init) readable; the key private."""
    key = Path(str(config.get("ssh.key"))).expanduser()
    for path, what in ((key, "private key"), (Path(f"{key}.pub"), "public key")):
        try:
            with path.open("rb"):
                pass
        except OSError as error:
            fix = (
                f"ssh-keygen -t ed25519 -f {key}, or set ssh.key"
                if path == key
                else f"ssh-keygen -y -f {key} > {key}.pub"
            )
            return Check("SSH key", PROBLEM, f"{what} {path}: {error.strerror}", fix)
    mode = key.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Check(
            "SSH key",
            WARNING,
            f"{key} is readable by others (mode {stat.S_IMODE(mode):o}); OpenSSH "
            "refuses such a key",
            f"chmod 600 {key}",
        )
    return Check("SSH key", OK, f"{key} and {key}.pub readable")


# --- checks against Proxmox -----------------------------------------------------------------


def check_api(
    config: LabConfig, connect: Callable[[LabConfig], PveClient]
) -> tuple[Check, PveClient | None]:
    """The API answers, through TLS as configured, and takes the credentials."""
    try:
        client = connect(config)
        version = client.get("version") or {}
        client.get("cluster/resources", type="node")  # an authenticated call
    except LabctlError as error:
        return Check(
            "API",
            PROBLEM,
            str(error.message),
            error.hint or "check proxmox.host, proxmox.port and the token",
        ), None
    who = client.settings.token_id or client.settings.user
    where = f"{client.settings.host}:{client.settings.port}"
    return Check("API", OK, f"Proxmox VE {version.get('version', '?')} at {where} as {who}"), client


def find_template(seen: Seen) -> Check:
    """template.name (a name or VMID) exists and is a template; reads its config."""
    wanted = str(seen.config.get("template.name")).strip()
    resources = [
        r for r in seen.get("cluster/resources", type="vm") or [] if r.get("type") == "qemu"
    ]
    if wanted.isdigit():
        found = [r for r in resources if int(r.get("vmid", 0)) == int(wanted)]
    else:
        found = sorted(
            (r for r in resources if r.get("name") == wanted),
            key=lambda r: not int(r.get("template", 0) or 0),
        )
    existing = {str(r.get("name")) for r in resources if not int(r.get("template", 0) or 0)}
    specs = list(seen.config.vms.values()) or [
        VmSpec("(default shape)", seen.config.default_shape())
    ]
    seen.new_vms = {s.name: s for s in specs if s.name not in existing}
    if not found:
        return Check(
            "template",
            PROBLEM,
            f"template {wanted!r} not found on the cluster",
            "set template.name to the template's name or VMID; a token sees only "
            "the VMs it has VM.Audit on",
        )
    seen.template = found[0]
    node, vmid = str(found[0]["node"]), int(found[0]["vmid"])
    seen.template_config = seen.get(f"nodes/{node}/qemu/{vmid}/config") or {}
    label = f"{found[0].get('name', '')} (vmid {vmid} on {node})"
    if not int(found[0].get("template", 0) or 0):
        return Check(
            "template",
            PROBLEM,
            f"{label} is a VM, not a template",
            f"make it one: qm template {vmid} (or clone it with full = true)",
        )
    return Check("template", OK, f"{label} is a template")


def check_agent(seen: Seen) -> Check:
    value = seen.template_config.get("agent")
    if agent_enabled(value):
        return Check("guest agent", OK, f"enabled on the template (agent: {value})")
    return Check(
        "guest agent",
        PROBLEM,
        f"the template's agent option is off (agent: {value or 'not set'}); labctl "
        "reads the VM's IP and SSH host key through it",
        f"qm set {seen.vmid} --agent enabled=1 (and install qemu-guest-agent)",
    )


def check_cloudinit(seen: Seen) -> Check:
    key = cloudinit_drive(seen.template_config)
    if key:
        return Check("cloud-init drive", OK, f"{key}: {seen.template_config[key]}")
    volume = seen.volume
    storage = volume.storage if volume else "local-lvm"
    return Check(
        "cloud-init drive",
        PROBLEM,
        "the template has no cloud-init drive: the SSH key and user cannot be set",
        f"qm set {seen.vmid} --ide2 {storage}:cloudinit",
    )


def check_linked_clone(seen: Seen) -> Check:
    volume = seen.volume
    if volume is None:
        return Check(
            "linked clone",
            PROBLEM,
            "the template has no boot disk",
            "attach the cloud image as scsi0 and set boot order=scsi0",
        )
    entry = seen.storage(str(seen.template["node"]) if seen.template else "", volume.storage)
    if entry is None:
        return Check(
            "linked clone",
            WARNING,
            f"storage {volume.storage} of {volume.key} is not visible to this token",
            f"grant Datastore.AllocateSpace on /storage/{volume.storage}",
        )
    kind = str(entry.get("type", "?"))
    where = f"{volume.key} on {volume.storage} ({kind})"
    if supports_linked_clone(kind, volume.name):
        return Check("linked clone", OK, f"{where} supports linked clones")
    if seen.new_vms and all(spec.full for spec in seen.new_vms.values()):
        return Check("linked clone", OK, f"{where} has no linked clones; the lab's VMs are full")
    return Check(
        "linked clone",
        PROBLEM,
        f"{where} cannot make linked clones",
        "clone in full: `labctl up --full`, or full = true in [vm.NAME]",
    )


def check_cpu_type(seen: Seen) -> Check:
    """labctl sets every VM's cpu type itself, so the lab file's types are what count."""
    types = {str(seen.config.get("defaults.cpu_type"))} | {
        spec.shape.cpu_type for spec in seen.config.vms.values()
    }
    hiding = sorted(t for t in types if hides_avx2(t))
    template_cpu = parse_cpu_type(seen.template_config.get("cpu"))
    note = f" (the template's {template_cpu} is replaced)" if template_cpu not in types else ""
    if hiding:
        return Check(
            "cpu type",
            WARNING,
            f"cpu type {', '.join(hiding)} hides AVX2 from the guest: llama.cpp runs "
            "its slow paths",
            'set defaults.cpu_type = "host" (or x86-64-v3)',
        )
    return Check("cpu type", OK, f"VMs get cpu {', '.join(sorted(types))}{note}")


def check_node_avx2(seen: Seen) -> Check:
    lacking: list[str] = []
    for node in seen.nodes():
        flags = (seen.get(f"nodes/{node}/status").get("cpuinfo") or {}).get("flags")
        if flags is not None and not has_avx2(flags):
            lacking.append(node)
    if lacking:
        return Check(
            "node AVX2",
            WARNING,
            f"the CPU of {', '.join(lacking)} has no AVX2",
            "expect slow generation, or set proxmox.node to a node with AVX2",
        )
    return Check("node AVX2", OK, f"{', '.join(seen.nodes())}: the CPU has AVX2")


def check_memory(seen: Seen) -> Check:
    """The RAM of the lab's VMs not made yet fits in each node's free memory."""
    if not seen.new_vms:
        return Check("node RAM", OK, "every VM of the lab file exists already")
    wanted: dict[str, int] = {}
    for spec in seen.new_vms.values():
        node = seen.node_of(spec)
        wanted[node] = wanted.get(node, 0) + spec.shape.memory_mib
    short: list[str] = []
    seen_text: list[str] = []
    for node, mib in sorted(wanted.items()):
        memory = seen.get(f"nodes/{node}/status").get("memory") or {}
        free = int(memory.get("available", memory.get("free", 0)) or memory.get("free", 0)) // MIB
        seen_text.append(f"{node}: {format_mib(mib)} wanted, {format_mib(free)} free")
        if mib > free:
            short.append(node)
    if short:
        return Check(
            "node RAM",
            PROBLEM,
            "; ".join(seen_text),
            "lower ram in [vm.NAME], free memory on the node, or place VMs on another "
            "node (node in [vm.NAME])",
        )
    return Check("node RAM", OK, "; ".join(seen_text))


def check_disk_space(seen: Seen) -> Check:
    """The new VMs' disks fit on the storages they go to."""
    if not seen.new_vms:
        return Check("storage space", OK, "every VM of the lab file exists already")
    template_gib = seen.volume.size_gib if seen.volume else 0
    wanted: dict[tuple[str, str], int] = {}
    for spec in seen.new_vms.values():
        where = (seen.node_of(spec), seen.disk_storage(spec))
        size = max(spec.shape.disk_gib or DEFAULT_DISK_GIB, template_gib)
        wanted[where] = wanted.get(where, 0) + size
    status, lines = OK, []
    for (node, name), gib in sorted(wanted.items()):
        entry = seen.storage(node, name)
        if entry is None:
            status = PROBLEM
            lines.append(f"storage {name} not found on {node} (or not visible to this token)")
            continue
        avail = int(entry.get("avail", 0)) // GIB
        lines.append(f"{name} on {node}: {gib} GiB of disks, {avail} GiB free")
        if gib > avail:
            thin = thin_provisioned(str(entry.get("type")), seen.volume.name if seen.volume else "")
            status = PROBLEM if status == PROBLEM or not thin else WARNING
    fix = (
        ""
        if status == OK
        else "free space, use smaller disks (disk in [vm.NAME]) or another storage"
    )
    return Check("storage space", status, "; ".join(lines), fix)


def check_bridge(seen: Seen) -> Check:
    bridge = seen.bridge()
    missing: list[str] = []
    for node in seen.nodes():
        names = {
            str(i.get("iface"))
            for i in seen.get(f"nodes/{node}/network") or []
            if i.get("type") in ("bridge", "OVSBridge")
        }
        if bridge not in names:
            missing.append(f"{node} (bridges: {', '.join(sorted(names)) or 'none'})")
    if missing:
        return Check(
            "bridge",
            PROBLEM,
            f"bridge {bridge!r} does not exist on {'; '.join(missing)}",
            "set template.bridge to one of the node's bridges",
        )
    return Check("bridge", OK, f"{bridge} exists on {', '.join(seen.nodes())}")


def check_privileges(seen: Seen) -> Check:
    """NEEDED_PRIVILEGES on their paths, as GET /access/permissions reports them."""
    missing: list[str] = []
    for path, privileges in sorted(needed_by_path(seen).items()):
        held = seen.get("access/permissions", path=path).get(path) or {}
        lacking = [p for p in privileges if p not in held]
        if lacking:
            missing.append(f"{' '.join(lacking)} on {path}")
    who = seen.client.settings.token_id or seen.client.settings.user
    if missing:
        return Check(
            "privileges",
            PROBLEM,
            f"{who} lacks {'; '.join(missing)}",
            "grant them (README: LabctlRole and its pveum acl commands)",
        )
    return Check("privileges", OK, f"{who} holds every privilege labctl needs")


def needed_by_path(seen: Seen) -> dict[str, list[str]]:
    """NEEDED_PRIVILEGES resolved to ACL paths for this lab."""
    paths: dict[str, Iterable[str]] = {
        "template": [f"/vms/{seen.vmid}" if seen.vmid else "/vms"],
        "vms": ["/vms"],
        "node": [f"/nodes/{n}" for n in seen.nodes()] or ["/nodes"],
        "storage": sorted({f"/storage/{seen.disk_storage(s)}" for s in seen.new_vms.values()}),
        "bridge": sorted(
            f"/sdn/zones/localnetwork/{b}" for b in seen.template_bridges() | {seen.bridge()} if b
        ),
    }
    result: dict[str, list[str]] = {}
    for need in NEEDED_PRIVILEGES:
        for path in paths[need.on]:
            result.setdefault(path, []).append(need.privilege)
    if seen.bridge() not in seen.template_bridges() | {""}:
        result.setdefault("/vms", []).append("VM.Config.Network")  # a new bridge on net0
    return result


# --- the run --------------------------------------------------------------------------------


def run_checks(
    config: LabConfig, connect: Callable[[LabConfig], PveClient] = PveClient.from_config
) -> list[Check]:
    """Every check, in the order of the report; without the API only the local ones."""
    api, client = check_api(config, connect)
    checks = [check_tls(config), api]
    if client is not None:
        checks += proxmox_checks(Seen(config, client))
    checks.append(check_ssh_key(config))
    return checks


def proxmox_checks(seen: Seen) -> list[Check]:
    # The template comes first: the privileges' paths and most rows depend on it.
    template = _guarded("template", lambda: find_template(seen))
    later: list[tuple[str, Callable[[Seen], Check]]] = [
        ("cpu type", check_cpu_type),
        ("node AVX2", check_node_avx2),
        ("node RAM", check_memory),
        ("storage space", check_disk_space),
        ("bridge", check_bridge),
    ]
    if seen.template_config:
        later[:0] = [
            ("guest agent", check_agent),
            ("cloud-init drive", check_cloudinit),
            ("linked clone", check_linked_clone),
        ]
    rows = [_guarded("privileges", lambda: check_privileges(seen)), template]
    return rows + [_guarded(name, functools.partial(check, seen)) for name, check in later]


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """A check whose API call failed says so as a warning: the failure itself (a privilege,
    a missing template) has its own row."""
    try:
        return check()
    except LabctlError as error:
        return Check(name, WARNING, f"could not check: {error.message}", error.hint or "")
