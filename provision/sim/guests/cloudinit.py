"""What cloud-init would do in a freshly cloned guest, applied to its root filesystem before boot.

Per instance (the first boot of a clone): fresh SSH host keys and a fresh machine-id.
Per boot: hostname, /etc/hosts, the `ciuser` (bash, sudo without password) and its authorized
keys (merged like cloud-init: keys already there stay, missing ones are added).

Deviation from a real PVE guest, on purpose: PVE derives cloud-init's instance-id from the
cloud-init config, so changing `sshkeys` there regenerates host keys on the next boot; here the
instance is the clone, so host keys stay stable for the life of the VM (labctl pins them once).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from provision.sim.guests.base import GuestSpec
from provision.sim.guests.errors import GuestBackendError
from provision.sim.guests.hostcmd import run

INSTANCE_MARKER = "var/lib/labctl-sim/instance-id"
DEFAULT_USER = "debian"  # the default user of Debian's cloud images, used when ciuser is unset
SUDOERS_FILE = "etc/sudoers.d/90-cloud-init-users"


def guest_path(root: Path, rel: str) -> Path:
    """root/rel, refusing symlinks on the way (the guest's files must not redirect host writes)."""
    path = root
    for part in Path(rel.lstrip("/")).parts:
        path = path / part
        if path.is_symlink():
            raise GuestBackendError(f"refusing to write through a symlink in the guest: /{rel}")
    return path


def apply(root: Path, spec: GuestSpec, instance_id: str) -> None:
    _per_instance(root, instance_id, spec.name)
    _hostname(root, spec.name)
    if spec.ciuser or spec.sshkeys:
        _user(root, spec.ciuser or DEFAULT_USER, spec.sshkeys)


def _per_instance(root: Path, instance_id: str, name: str) -> None:
    marker = guest_path(root, INSTANCE_MARKER)
    if marker.is_file() and marker.read_text().strip() == instance_id:
        return
    ssh_dir = guest_path(root, "etc/ssh")
    for key in ssh_dir.glob("ssh_host_*"):
        key.unlink()
    run(["ssh-keygen", "-q", "-A", "-f", str(root)])
    for pub in ssh_dir.glob("ssh_host_*.pub"):  # ssh-keygen -A names the *host's* hostname
        kind, blob = pub.read_text().split()[:2]
        pub.write_text(f"{kind} {blob} root@{name}\n")
    guest_path(root, "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(instance_id + "\n")


def _hostname(root: Path, name: str) -> None:
    guest_path(root, "etc/hostname").write_text(name + "\n")
    guest_path(root, "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n"
        f"127.0.1.1\t{name}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )


def _passwd_entry(root: Path, user: str) -> tuple[int, int, str] | None:
    for line in guest_path(root, "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[0] == user:
            return int(fields[2]), int(fields[3]), fields[5]
    return None


def _user(root: Path, user: str, keys: tuple[str, ...]) -> None:
    if _passwd_entry(root, user) is None:
        # the guest's own useradd, so the guest's login.defs and skeleton apply
        run(["chroot", str(root), "useradd", "-m", "-U", "-s", "/bin/bash", "-G", "sudo", user])
    entry = _passwd_entry(root, user)
    if entry is None:
        raise GuestBackendError(f"creating user {user} in the guest failed")
    uid, gid, home = entry
    sudoers = guest_path(root, SUDOERS_FILE)
    sudoers.write_text(f"# created by the simulator's cloud-init\n{user} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    ssh_dir = guest_path(root, f"{home}/.ssh")
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, uid, gid)
    auth = guest_path(root, f"{home}/.ssh/authorized_keys")
    existing = auth.read_text().splitlines() if auth.is_file() else []
    merged = existing + [k.strip() for k in keys if k.strip() and k.strip() not in existing]
    auth.write_text("".join(line + "\n" for line in merged))
    auth.chmod(0o600)
    os.chown(auth, uid, gid)
