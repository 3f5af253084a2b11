"""Guest root filesystems under the state dir: linked clones (overlayfs) and full clones (copies).

state_dir/disks/<vmid>/disk.json  {"kind": "overlay"|"full", "lowers": [...], "instance_id": ...}
  overlay: upper/ work/ merged/  (merged is mounted while the disk is in use)
  full:    root/
A linked clone of a VM whose disk is itself an overlay stacks on that disk's layers, like a PVE
linked clone of a template; a full clone copies what the source guest sees.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from provision.sim.guests.errors import GuestBackendError
from provision.sim.guests.hostcmd import quiet, run
from provision.sim.guests.lxcfs import is_mountpoint


class DiskStore:
    def __init__(self, state_dir: Path, template: Path) -> None:
        self.base = state_dir / "disks"
        self.base.mkdir(parents=True, exist_ok=True)
        self.template = template

    def _dir(self, vmid: int) -> Path:
        return self.base / str(vmid)

    def meta(self, vmid: int) -> dict[str, Any] | None:
        path = self._dir(vmid) / "disk.json"
        if not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def exists(self, vmid: int) -> bool:
        return self.meta(vmid) is not None

    def instance_id(self, vmid: int) -> str:
        meta = self.meta(vmid)
        if meta is None:
            raise GuestBackendError(f"VM {vmid} has no disk")
        return str(meta["instance_id"])

    def _write_meta(self, vmid: int, meta: dict[str, Any]) -> None:
        (self._dir(vmid) / "disk.json").write_text(json.dumps(meta, indent=2) + "\n")

    def clone(self, source_vmid: int | None, new_vmid: int, linked: bool) -> None:
        if self.exists(new_vmid):
            raise GuestBackendError(f"VM {new_vmid} already has a disk")
        src = self.meta(source_vmid) if source_vmid is not None else None
        dest = self._dir(new_vmid)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        meta: dict[str, Any] = {"instance_id": uuid.uuid4().hex, "source": source_vmid}
        try:
            if linked:
                if src is None:
                    lowers = [str(self.template)]
                elif src["kind"] == "overlay":
                    assert source_vmid is not None
                    lowers = [str(self._dir(source_vmid) / "upper"), *src["lowers"]]
                else:
                    assert source_vmid is not None
                    lowers = [str(self._dir(source_vmid) / "root")]
                for sub in ("upper", "work", "merged"):
                    (dest / sub).mkdir()
                meta.update(kind="overlay", lowers=lowers)
            else:
                self._copy(source_vmid if src is not None else None, dest / "root")
                meta.update(kind="full")
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        self._write_meta(new_vmid, meta)

    def _copy(self, source_vmid: int | None, dest: Path) -> None:
        if source_vmid is None:
            origin, was_mounted = self.template, True
        else:
            was_mounted = is_mountpoint(self._dir(source_vmid) / "merged")
            origin = self.root(source_vmid)
        try:
            run(["cp", "-a", "--reflink=auto", str(origin), str(dest)], timeout=600)
        finally:
            if not was_mounted and source_vmid is not None:
                self.release(source_vmid)

    def users_of(self, vmid: int) -> list[int]:
        """Linked clones stacked on this disk's layers."""
        layers = {str(self._dir(vmid) / "upper"), str(self._dir(vmid) / "root")}
        users = []
        for d in self.base.iterdir():
            if d.name.isdigit() and int(d.name) != vmid:
                meta = self.meta(int(d.name))
                if meta and layers & set(meta.get("lowers", [])):
                    users.append(int(d.name))
        return sorted(users)

    def root(self, vmid: int) -> Path:
        """The disk's root directory, mounting the overlay if needed."""
        meta = self.meta(vmid)
        if meta is None:
            raise GuestBackendError(f"VM {vmid} has no disk")
        d = self._dir(vmid)
        if meta["kind"] == "full":
            return d / "root"
        merged = d / "merged"
        if not is_mountpoint(merged):
            lowers = ":".join(meta["lowers"])
            run(
                [
                    "mount",
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    f"lowerdir={lowers},upperdir={d / 'upper'},workdir={d / 'work'}",
                    str(merged),
                ]
            )
        return merged

    def release(self, vmid: int) -> None:
        """Unmount the overlay (the disk stays)."""
        merged = self._dir(vmid) / "merged"
        if merged.exists() and is_mountpoint(merged) and not quiet(["umount", str(merged)]):
            quiet(["umount", "-l", str(merged)])

    def delete(self, vmid: int) -> None:
        users = self.users_of(vmid)
        if users:
            names = ", ".join(str(u) for u in users)
            raise GuestBackendError(f"disk of VM {vmid} is the base of linked clone(s) {names}")
        self.release(vmid)
        d = self._dir(vmid)
        if d.exists():
            if is_mountpoint(d / "merged"):
                raise GuestBackendError(f"disk of VM {vmid} is still mounted")
            shutil.rmtree(d)
