"""`labctl template create`: a cloud image becomes a Proxmox VE template, through the API only.

download-url (content `import`, PVE checks the SHA-256 from the image's SHA256SUMS) -> create the
VM with `import-from`, a cloud-init drive, a serial console, agent=1 and cpu host -> boot it once
at the static address given -> trust its SSH host key on first use (printed, pinned) -> the
template_prep role (qemu-guest-agent, kubuntu-desktop for the kubuntu flavor, cloud-init and
machine-id cleaned, power off) -> POST template.

Run again with the same name, it checks the template instead of rebuilding it; a VM of that name
that labctl did not make is refused. A failure after the VM exists destroys it (or says that it
could not, and how to remove it by hand).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from provision.deploy.inventory import DeployHost, SshSettings
from provision.deploy.runner import run_playbook
from provision.errors import GuestError, LabctlError, NotLabctlVm, ProxmoxError, TaskFailed
from provision.guest.cloudinit import wait_for_cloud_init
from provision.guest.known_hosts import forget_host_key
from provision.guest.ssh import first_contact
from provision.guest.types import GuestAddress
from provision.pve.clone import read_public_key
from provision.pve.cloud_image import TemplateRequest, fetch_checksum
from provision.pve.cluster import Cluster, Resource
from provision.pve.shapes import LABCTL_TAG, parse_tags
from provision.pve.teardown import Teardown

MARKER = "made by labctl template create"
PLAYBOOK = "template.yml"
DOWNLOAD_TIMEOUT_S = 3600.0  # a ~600 MB image on a slow line; the task fails earlier on errors
MEMORY_MIB = {"server": 2048, "kubuntu": 4096}  # kubuntu-desktop's install needs the room
STOP_POLL_S = 1.0
# What `template_problems` finds true of a usable labctl template (after a build, and on a re-run)
CHECKED = ("template", "agent=1", "cloud-init drive", "made by labctl")


@dataclass(frozen=True)
class TemplateResult:
    """What `template create` did: built a template, or found one and checked it."""

    name: str
    vmid: int
    node: str
    created: bool
    image_url: str
    checks: tuple[str, ...]  # what a re-run checked, or what the build made sure of
    host_key_fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vmid": self.vmid,
            "node": self.node,
            "created": self.created,
            "image_url": self.image_url,
            "checks": list(self.checks),
            "host_key_fingerprint": self.host_key_fingerprint or None,
        }


def template_problems(config: dict[str, Any], tags: tuple[str, ...]) -> list[str]:
    """Why an existing VM is not a usable labctl template (empty: it is one)."""
    problems = []
    if str(config.get("template", "0")) != "1":
        problems.append("it is not a template")
    agent = str(config.get("agent", "0")).split(",")[0].removeprefix("enabled=")
    if agent not in ("1", "on", "yes", "true"):
        problems.append("its guest agent is not enabled (agent=1)")
    if not any("cloudinit" in str(v) for k, v in config.items() if k[:3] in ("ide", "scs", "sat")):
        problems.append("it has no cloud-init drive")
    if LABCTL_TAG not in tags or MARKER not in str(config.get("description", "")):
        problems.append("labctl did not make it")
    return problems


class TemplateBuilder:
    def __init__(self, cluster: Cluster, teardown: Teardown, state_dir: Path) -> None:
        self.cluster = cluster
        self.teardown = teardown
        self.state_dir = state_dir
        self.known_hosts = state_dir / "known_hosts"
        self.reporter = cluster.reporter

    def create(self, request: TemplateRequest) -> TemplateResult:
        existing = self._existing(request.name)
        if existing is not None:
            return self._check_existing(existing, request)
        self.reporter.stage("image")
        checksum = fetch_checksum(request)
        self.reporter.step(f"{request.image_file}: sha256 {checksum} (from {request.sums_url})")
        node = self._node()
        volid = self._download(node, request, checksum)
        res, upid = self._create_vm(node, request, volid, checksum)
        try:
            self.cluster.wait(upid, f"create of {res.name} (vmid {res.vmid})")
            self.reporter.step(f"vmid {res.vmid} on {res.node}: disk imported from {volid}")
            fingerprint = self._build(res, request)
        except TaskFailed as error:
            if self._exists(res):  # a failed qmcreate removes its VM itself (Qemu.pm create_vm)
                self._clean_up(res, error.message)
            raise
        except (LabctlError, KeyboardInterrupt) as error:
            self._clean_up(res, error.message if isinstance(error, LabctlError) else "interrupted")
            raise
        return TemplateResult(
            name=request.name,
            vmid=res.vmid,
            node=node,
            created=True,
            image_url=request.image_url,
            checks=(*CHECKED, "qemu-guest-agent installed"),
            host_key_fingerprint=fingerprint,
        )

    # -- an existing VM of that name -------------------------------------------------------

    def _existing(self, name: str) -> Resource | None:
        found = [r for r in self.cluster.resources() if r.name == name]
        if len(found) > 1:
            ids = ", ".join(str(r.vmid) for r in found)
            raise ProxmoxError(f"several VMs are named {name} (vmids {ids}): pick another name")
        return found[0] if found else None

    def _check_existing(self, res: Resource, request: TemplateRequest) -> TemplateResult:
        """The same name again: check the template instead of rebuilding it."""
        problems = self._problems(res)
        if "labctl did not make it" in problems:
            raise NotLabctlVm(
                f"VM {res.name} (vmid {res.vmid} on {res.node}) exists and is not a template "
                "labctl made: labctl will not touch it",
                hint="choose another name for the template",
            )
        if problems:
            raise ProxmoxError(
                f"VM {res.name} (vmid {res.vmid}) is labctl's but not a usable template: "
                + "; ".join(problems),
                hint="a template create that did not finish? remove the VM in the PVE UI "
                "(or `labctl down` it) and run again",
            )
        self.reporter.step(f"{res.name} (vmid {res.vmid}) is already a labctl template: checked")
        return TemplateResult(
            name=res.name,
            vmid=res.vmid,
            node=res.node,
            created=False,
            image_url=request.image_url,
            checks=CHECKED,
        )

    def _problems(self, res: Resource) -> list[str]:
        config = self.cluster.client.get(f"{res.path}/config") or {}
        return template_problems(config, parse_tags(config.get("tags")))

    # -- the image and the VM ----------------------------------------------------------------

    def _node(self) -> str:
        nodes = self.cluster.client.get("nodes") or []
        online = sorted(str(n["node"]) for n in nodes if n.get("status", "online") == "online")
        if not online:
            raise ProxmoxError("no Proxmox VE node is online")
        return online[0]

    def _import_storage(self, node: str) -> str:
        storages = self.cluster.client.get(f"nodes/{node}/storage", content="import") or []
        if not storages:
            raise ProxmoxError(
                f"no storage on node {node} holds content 'import' (cloud images to import)",
                hint="enable it on a file storage, e.g. `pvesm set local --content "
                "iso,vztmpl,backup,import`",
            )
        return str(storages[0]["storage"])

    def _download(self, node: str, request: TemplateRequest, checksum: str) -> str:
        storage = self._import_storage(node)
        filename = request.import_filename(checksum)
        self.reporter.stage("download")
        upid = self.cluster.client.post(
            f"nodes/{node}/storage/{storage}/download-url",
            url=request.image_url,
            content="import",
            filename=filename,
            checksum=checksum,
            **{"checksum-algorithm": "sha256"},
        )
        self.cluster.wait(upid, f"download of {request.image_file}", timeout_s=DOWNLOAD_TIMEOUT_S)
        volid = f"{storage}:import/{filename}"
        self.reporter.step(f"{volid}: checksum verified by Proxmox VE")
        return volid

    def _create_vm(
        self, node: str, request: TemplateRequest, volid: str, checksum: str
    ) -> tuple[Resource, str]:
        """POST the VM: from here on it exists (PVE writes its config, locked, before the
        task), so a failure from here on is cleaned up."""
        self.reporter.stage("create")
        vmid = int(self.cluster.client.get("cluster/nextid"))
        upid = self.cluster.client.post(
            f"nodes/{node}/qemu", **self._vm_params(vmid, request, volid, checksum)
        )
        res = Resource(vmid, node, request.name, "stopped", (LABCTL_TAG,), False, None, 0, 0)
        return res, str(upid)

    def _exists(self, res: Resource) -> bool:
        return any(r.vmid == res.vmid for r in self.cluster.resources())

    def _vm_params(
        self, vmid: int, request: TemplateRequest, volid: str, checksum: str
    ) -> dict[str, Any]:
        config = self.cluster.config
        storage = request.storage
        params: dict[str, Any] = {
            "vmid": vmid,
            "name": request.name,
            "tags": LABCTL_TAG,
            "description": f"{MARKER} ({request.flavor}) from {request.image_url} "
            f"sha256:{checksum}",
            "ostype": "l26",
            "agent": "enabled=1",
            "cpu": "host",
            "cores": 2,
            "memory": MEMORY_MIB[request.flavor],
            "scsihw": "virtio-scsi-pci",
            "scsi0": f"{storage}:0,import-from={volid}",
            "ide2": f"{storage}:cloudinit",
            "boot": "order=scsi0",
            "serial0": "socket",
            "vga": "serial0",
            "net0": f"virtio,bridge={config.get('template.bridge')}",
            "ipconfig0": request.ipconfig0,
            "ciuser": str(config.get("ssh.user")),
            "sshkeys": quote(self._public_key() + "\n", safe=""),
            "ciupgrade": bool(config.get("template.ciupgrade")),
        }
        nameserver = str(config.get("network.nameserver")).strip()
        if nameserver:
            params["nameserver"] = nameserver
        return params

    def _public_key(self) -> str:
        return read_public_key(Path(str(self.cluster.config.get("ssh.key"))))

    # -- the one boot ------------------------------------------------------------------------

    def _build(self, res: Resource, request: TemplateRequest) -> str:
        """Boot, first SSH contact, the role, wait for the power-off, convert. The fingerprint."""
        self.reporter.stage("boot")
        self.cluster.wait(self.cluster.client.post(f"{res.path}/status/start"), "start")
        address = self._address(request)
        forget_host_key(self.known_hosts, address.host)  # an earlier VM at this address
        line, fingerprint = first_contact(address, self.cluster.seconds("timeouts.ssh"))
        self.reporter.warn(
            f"trusted {request.name}'s SSH host key on first use: {fingerprint} "
            f"({line.split()[0]}, a VM labctl just created; pinned in {self.known_hosts})"
        )
        wait_for_cloud_init(address, self.cluster.seconds("timeouts.ssh"))
        run_playbook(
            PLAYBOOK,
            DeployHost(name=request.name, address=address.host, user=address.user),
            SshSettings(private_key=address.key_path, known_hosts=self.known_hosts),
            state_dir=self.state_dir,
            variables={
                "template_prep_flavor": request.flavor,
                "template_prep_local_debs": list(self.cluster.config.get("template.local_debs")),
            },
            reporter=self.reporter,
            stage="prepare",
        )
        self._wait_stopped(res)
        self.reporter.stage("template")
        self.cluster.wait(self.cluster.client.post(f"{res.path}/template"), "template conversion")
        problems = self._problems(res)
        if problems:  # what a re-run would refuse: say so now
            raise ProxmoxError(f"{request.name} (vmid {res.vmid}): " + "; ".join(problems))
        self.reporter.step(f"{request.name} (vmid {res.vmid}) is a template")
        return fingerprint

    def _address(self, request: TemplateRequest) -> GuestAddress:
        return GuestAddress(
            host=request.address,
            user=str(self.cluster.config.get("ssh.user")),
            key_path=Path(str(self.cluster.config.get("ssh.key"))).expanduser(),
            known_hosts=self.known_hosts,
            name=request.name,
        )

    def _wait_stopped(self, res: Resource) -> None:
        """The role powers the guest off; PVE sees the VM stop."""
        timeout = self.cluster.seconds("timeouts.shutdown")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.cluster.client.get(f"{res.path}/status/current", poll=True) or {}
            if status.get("status") == "stopped":
                return
            time.sleep(STOP_POLL_S)
        raise GuestError(
            f"{res.name} did not power off within {timeout:g}s after the template role",
            hint="see the VM's console; timeouts.shutdown sets the wait",
        )

    def _clean_up(self, res: Resource, why: str) -> None:
        """Destroy the half-made VM, or say it could not and how to remove it."""
        self.reporter.warn(f"template create failed ({why}); destroying vmid {res.vmid}")
        try:
            self.teardown.destroy(res)
        except (LabctlError, KeyboardInterrupt) as cleanup_error:
            self.reporter.warn(
                f"could not destroy vmid {res.vmid} on {res.node} ({cleanup_error}); remove it "
                f"with `qm destroy {res.vmid}` on the node or in the PVE UI"
            )
