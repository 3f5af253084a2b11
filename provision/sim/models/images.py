"""Cloud images into VMs: storage `download-url` and content, VM create with `import-from`, and
conversion to a template.

Sources (pve-storage `src/PVE/API2/Storage/Status.pm` `download_url`, pve-common
`src/PVE/Tools.pm` `download_file_from_url`, qemu-server `src/PVE/API2/Qemu.pm` `create_vm` and
`template`):
- download-url checks synchronously that the storage is file based and has the content type,
  normalises the file name and, for `import`, wants `.qcow2`/`.raw`/`.vmdk`/`.ova`; the task
  (`download`, id = file name) downloads to `<file>.tmp.<pid>`, hashes it, and dies
  `checksum mismatch: got '<got>' != expect '<expected>'` on a mismatch; an existing file with the
  right checksum is kept ("OK, got correct file already, no need to download").
- create (`qmcreate`, id = vmid) allocates `STORAGE:0,import-from=<volid>` by copying the image;
  `STORAGE:cloudinit` becomes the VM's cloud-init drive.
- template (`qmtemplate`) refuses a template and a running VM, sets `template: 1` before the task
  and renames the disks to `base-<vmid>-disk-N`.

Not simulated: `compression`, `verify-certificates` (the simulator downloads over plain HTTP from
loopback only, so no certificate is ever seen), proxies, OVA import, the untrusted-image format
check (`file_size_info`), import from an absolute path, and the per-storage privilege checks
inside create (the endpoint's VM.Allocate is checked).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from provision.sim import vmconfig
from provision.sim.errors import PveError, vm_locked
from provision.sim.models.base import Storage, Vm
from provision.sim.models.tasks import TaskMixin
from provision.sim.tasks import Task, TaskError

# pve-storage src/PVE/Storage.pm: SAFE_CHAR_CLASS_RE and UPLOAD_IMPORT_EXT_RE_1
SAFE_CHARS = r"[a-zA-Z0-9\-\.\+\=\_]"
IMPORT_NAME = re.compile(rf"^{SAFE_CHARS}+\.(ova|qcow2|raw|vmdk)$")
DOWNLOAD_CHUNK = 1024 * 1024
QCOW2_MAGIC = b"QFI\xfb"
IMPORT_VOLID = re.compile(r"^([a-zA-Z][a-zA-Z0-9\-_.]*[a-zA-Z0-9]):import/(.+)$")


def normalize_filename(name: str) -> str:
    """`normalize_content_filename` (Storage.pm): unsafe characters become `_`."""
    return re.sub(r"[^a-zA-Z0-9\-\.\+\=\_]", "_", name)


def virtual_size(path: Path) -> int:
    """A qcow2's virtual disk size from its header (offset 24, big-endian u64); raw: file size."""
    with path.open("rb") as handle:
        header = handle.read(32)
    if header[:4] == QCOW2_MAGIC and len(header) == 32:
        return int(struct.unpack(">Q", header[24:32])[0])
    return path.stat().st_size


def loopback_only(url: str) -> None:
    """The simulator never reaches past this machine: a non-loopback URL fails like wget does."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise TaskError(f"download failed: the simulator downloads from loopback only ({host})")


class ImageMixin(TaskMixin):
    """POST download-url, GET storage content, POST /nodes/{node}/qemu and POST template."""

    def storage_dir(self, storage: Storage) -> Path:
        return self.state_dir / "storage" / storage.storage

    def _import_dir(self, name: str) -> tuple[Storage, Path]:
        storage = self.storage(name)
        return storage, self.storage_dir(storage) / "import"

    def download_url(self, node: str, user: str, params: dict[str, Any]) -> str:
        """POST /nodes/{node}/storage/{storage}/download-url: checks, then a `download` task."""
        self.node(node)
        storage, directory = self._import_dir(str(params["storage"]))
        content = str(params["content"])
        if storage.type != "dir":
            raise PveError.internal(
                f"can't upload to storage type '{storage.type}', not a file based storage!"
            )
        if not storage.supports(content):
            raise PveError.internal(
                f"storage '{storage.storage}' is not configured for content-type '{content}'"
            )
        if content != "import":
            raise PveError.params({"content": f"upload content-type '{content}' is not allowed"})
        filename = normalize_filename(str(params["filename"]))
        if not IMPORT_NAME.match(filename):
            raise PveError.params({"filename": "invalid filename or wrong extension"})
        url = str(params["url"])
        algorithm = params.get("checksum-algorithm")
        expected = params.get("checksum")

        def work(task: Task) -> None:
            directory.mkdir(parents=True, exist_ok=True)
            self._download(task, url, directory / filename, algorithm, expected)

        return self._spawn(node, "download", filename, user, work).upid

    def _download(
        self, task: Task, url: str, dest: Path, algorithm: str | None, expected: str | None
    ) -> None:
        """`download_file_from_url` (pve-common Tools.pm), with wget replaced by urllib."""
        task.say(f"downloading {url} to {dest}")
        if dest.exists():
            if algorithm and expected:
                got = file_hash(algorithm, dest)
                if got == expected.lower():
                    task.say("calculating checksum of existing file...OK, got correct file "
                             "already, no need to download")  # fmt: skip
                    return
                raise TaskError(f"checksum mismatch: got '{got}' != expect '{expected}', aborting")
            raise TaskError(f"refusing to override existing file '{dest}'")
        tmp = dest.with_name(f"{dest.name}.tmp.{os.getpid()}")
        try:
            loopback_only(url)
            fetch(url, tmp)
            if algorithm and expected:
                got = file_hash(algorithm, tmp)
                if got != expected.lower():
                    task.say("calculating checksum...")
                    raise TaskError(f"checksum mismatch: got '{got}' != expect '{expected}'")
                task.say("calculating checksum...OK, checksum verified")
            tmp.rename(dest)
        finally:
            tmp.unlink(missing_ok=True)
        task.say(f"download of '{url}' to '{dest}' finished")

    def storage_content(self, node: str, name: str, content: str | None) -> list[dict[str, Any]]:
        """GET /nodes/{node}/storage/{storage}/content: the storage's `import` files.

        Not simulated: VM disk images (`images`), ISOs and templates (nothing stores them).
        """
        self.node(node)
        storage, directory = self._import_dir(name)
        if content not in (None, "import") or not directory.is_dir():
            return []
        entries = []
        for path in sorted(directory.iterdir()):
            match = IMPORT_NAME.match(path.name)
            if not match:  # a download's temporary file
                continue
            entries.append(
                {
                    "volid": f"{storage.storage}:import/{path.name}",
                    "content": "import",
                    "format": match.group(1),
                    "size": path.stat().st_size,
                    "ctime": int(path.stat().st_mtime),
                }
            )
        return entries

    def _import_source(self, volid: str) -> Path:
        """The file behind `local:import/x.qcow2`, or PVE's error for a missing volume."""
        match = IMPORT_VOLID.match(volid)
        if match is None:
            raise TaskError(f"unable to parse volume ID '{volid}'")
        _, directory = self._import_dir(match.group(1))
        path = directory / match.group(2)
        if not path.is_file():
            raise TaskError(f"volume '{volid}' does not exist")
        return path

    def create_vm(self, node: str, user: str, params: dict[str, Any]) -> str:
        """POST /nodes/{node}/qemu (qemu-server Qemu.pm `create_vm`): the config is created at
        once with `lock: create` (`create_and_lock_config`, synchronous: an existing VMID is a
        500); the `qmcreate` task allocates the disks (`import-from` copies the image) and writes
        the config; on an error it frees them, removes the config and dies
        `unable to create VM <vmid> - <error>`.

        Not simulated: restore (`archive`), `start`, pools, disks allocated by size alone.
        """
        self.node(node)
        vmid = int(params["vmid"])
        prefix = f"unable to create VM {vmid} -"
        with self.lock:
            if vmid in self.vms:  # pve-cluster PVE/Cluster.pm check_vmid_unused
                owner = self.vms[vmid].node
                raise PveError.internal(f"{prefix} VM {vmid} already exists on node '{owner}'")
            self.vms[vmid] = Vm(vmid, node, {"lock": "create"})
        self.save()
        config = {k: str(v) for k, v in params.items() if k not in ("node", "vmid")}
        config.setdefault("smbios1", f"uuid={uuid.uuid4()}")
        config.setdefault("vmgenid", str(uuid.uuid4()))
        config["meta"] = f"creation-qemu=9.2.0,ctime={int(time.time())}"

        def work(task: Task) -> None:
            try:
                imported = self._allocate_drives(task, vmid, config)
                if imported:
                    self.backend.clone_disk(None, vmid, False)
            except Exception as exc:
                with self.lock:
                    self.vms.pop(vmid, None)
                self.backend.delete_disk(vmid)
                raise TaskError(f"{prefix} {exc}") from exc
            with self.lock:
                self.vms[vmid] = Vm(vmid, node, config, agent_binary_required=imported)
            self.save()

        return self._spawn(node, "qmcreate", str(vmid), user, work).upid

    def _allocate_drives(self, task: Task, vmid: int, config: dict[str, str]) -> bool:
        """Rewrites the drive keys to allocated volumes; True if a disk came from an image."""
        imported = False
        for key in sorted(k for k in config if vmconfig.DRIVE_KEY.match(k)):
            value = config[key]
            storage_name, _, rest = value.partition(":")
            if rest.startswith("cloudinit"):
                self.storage(storage_name)
                volid = f"{storage_name}:vm-{vmid}-cloudinit"
                config[key] = f"{volid},media=cdrom"
                task.say(f"{key}: successfully created disk '{config[key]}'")
                continue
            source = vmconfig.drive_option(value, "import-from")
            if source is None:
                continue  # an existing volume or a CD-ROM: kept as given
            storage = self.storage(storage_name)
            if not storage.supports("images"):
                raise TaskError(f"storage '{storage_name}' does not support vm images")
            path = self._import_source(source)
            size_mib = max(1, virtual_size(path) // (1024 * 1024))
            task.say(f"importing disk '{source}' to VM {vmid} ...")
            task.say(f"transferred {size_mib} MiB of {size_mib} MiB (100.00%)")
            options = [o for o in value.split(",")[1:] if not o.startswith("import-from=")]
            drive = ",".join([f"{storage_name}:vm-{vmid}-disk-0", *options, f"size={size_mib}M"])
            config[key] = drive
            task.say(f"{key}: successfully created disk '{drive}'")
            imported = True
        return imported

    def make_template(self, node: str, vmid: int, user: str) -> str:
        """POST template: synchronous refusals, `template: 1` at once, disks renamed in the task."""
        with self.lock:
            vm = self.vm(node, vmid)
            if "lock" in vm.config:
                raise vm_locked(vm.config["lock"])
            if vm.is_template:
                raise PveError.internal("you can't convert a template to a template")
            if vm.running:
                raise PveError.internal("you can't convert a VM to template if VM is running")
            vm.config["template"] = "1"
        self.save()

        def work(task: Task) -> None:
            with self.lock:
                for key, volid in list(vmconfig.drives(vm.config)):
                    if vmconfig.is_cdrom(vm.config[key]):
                        continue
                    base = volid.replace(f"vm-{vmid}-disk-", f"base-{vmid}-disk-")
                    vm.config[key] = vm.config[key].replace(volid, base, 1)
                    task.say(f"{key}: {volid} -> {base}")
            self.save()

        return self._spawn(node, "qmtemplate", str(vmid), user, work, lock_vmid=vmid).upid


def file_hash(algorithm: str, path: Path) -> str:
    """`get_file_hash` (Tools.pm): lower-case hex digest."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while chunk := handle.read(DOWNLOAD_CHUNK):
            digest.update(chunk)
    return digest.hexdigest().lower()


def fetch(url: str, dest: Path) -> None:
    """GET url into dest; an HTTP or connection error fails like `run_command(wget)` does."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response, dest.open("wb") as out:
            while chunk := response.read(DOWNLOAD_CHUNK):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise TaskError(f"download failed: {exc}") from exc
