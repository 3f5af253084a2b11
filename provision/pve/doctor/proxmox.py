"""Checks against Proxmox: API, template, agent, cloud-init, linked clones, CPU, capacity,
bridge and privileges."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from provision.config import LabConfig
from provision.config_vms import VmSpec
from provision.errors import LabctlError
from provision.pve.client import PveClient
from provision.pve.doctor.base import GIB, MIB, NEEDED_PRIVILEGES, OK, PROBLEM, WARNING, Check
from provision.pve.doctor.rules import (
    agent_enabled,
    cloudinit_drive,
    has_avx2,
    hides_avx2,
    supports_linked_clone,
    thin_provisioned,
)
from provision.pve.doctor.seen import Seen
from provision.pve.shapes import parse_cpu_type
from provision.shape import DEFAULT_DISK_GIB, format_mib


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
