"""What cloud-init does in a freshly cloned guest: part before boot, part inside the guest.

Before every boot (here, on the guest's root filesystem):
* per instance (the first boot of a clone): a fresh machine-id;
* the NoCloud seed PVE's cloud-init drive would carry (/var/lib/cloud/seed/nocloud: meta-data
  with the instance-id, user-data rendered as qemu-server's `cloudinit_userdata` does,
  src/PVE/QemuServer/Cloudinit.pm:145-188, `package_upgrade: true` included unless ciupgrade
  is off) and the simulator's timings (labctl-sim.json);
* hostname, /etc/hosts, the `ciuser` (bash, sudo without password) and its authorized keys
  (merged like cloud-init: keys already there stay, missing ones are added);
* the `cloud-init` stand-in (guest_cloud_init.py as /usr/bin/cloud-init) and its two units.

Inside the guest, the stand-in then does what cloud-init does while the VM boots: the SSH host
keys of a new instance appear a moment after boot (sshd waits for them; the guest agent does
not), a requested package upgrade keeps a CPU and the dpkg lock busy after SSH answers, and
`cloud-init status --wait` tells when all that is over. See guest_cloud_init.py.

Deviation from a real PVE guest, on purpose: PVE derives cloud-init's instance-id from the
cloud-init config, so changing `sshkeys` there regenerates host keys on the next boot; here the
instance is the clone, so host keys stay stable for the life of the VM (labctl pins them once).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from provision.sim.guests.base import GuestSpec
from provision.sim.guests.errors import GuestBackendError
from provision.sim.guests.hostcmd import run

INSTANCE_MARKER = "var/lib/labctl-sim/instance-id"
DEFAULT_USER = "debian"  # the default user of Debian's cloud images, used when ciuser is unset
SUDOERS_FILE = "etc/sudoers.d/90-cloud-init-users"
SEED_DIR = "var/lib/cloud/seed/nocloud"
STANDIN = Path(__file__).with_name("guest_cloud_init.py")
STANDIN_PATH = "usr/bin/cloud-init"
# Once-per-instance modules of the stand-in; their semaphores mark them done for an instance.
PER_INSTANCE_MODULES = ("ssh", "package_update_upgrade_install")

# The stand-in's units, ordered like cloud-init's own (canonical/cloud-init
# systemd/cloud-init-network.service.tmpl:32 Before=sshd.service, systemd/cloud-final.service:5
# After=multi-user.target).
UNITS = {
    "cloud-init.service": """[Unit]
Description=Cloud-init: Network Stage (PVE simulator stand-in)
Before=ssh.service systemd-user-sessions.service

[Service]
Type=oneshot
ExecStart=/usr/bin/cloud-init init
RemainAfterExit=yes
TimeoutSec=0

[Install]
WantedBy=multi-user.target
""",
    "cloud-final.service": """[Unit]
Description=Cloud-init: Final Stage (PVE simulator stand-in)
After=multi-user.target cloud-init.service

[Service]
Type=oneshot
ExecStart=/usr/bin/cloud-init modules --mode=final
RemainAfterExit=yes
TimeoutSec=0
TasksMax=infinity

[Install]
WantedBy=multi-user.target
""",
}


def guest_path(root: Path, rel: str) -> Path:
    """root/rel, refusing symlinks on the way (the guest's files must not redirect host writes)."""
    path = root
    for part in Path(rel.lstrip("/")).parts:
        path = path / part
        if path.is_symlink():
            raise GuestBackendError(f"refusing to write through a symlink in the guest: /{rel}")
    return path


def apply(root: Path, spec: GuestSpec, instance_id: str) -> None:
    # A clone first booted by an older simulator got its host keys here, before boot, and never
    # had a seed: mark its once-per-instance modules done so its keys stay.
    legacy = _booted(root, instance_id) and not guest_path(root, "var/lib/cloud").exists()
    _per_instance(root, instance_id)
    _seed(root, spec, instance_id)
    if legacy:
        for module in PER_INSTANCE_MODULES:
            sem = guest_path(root, f"var/lib/cloud/instances/{instance_id}/sem/config_{module}")
            sem.parent.mkdir(parents=True, exist_ok=True)
            sem.write_text("done before boot by an older simulator\n")
    _install_standin(root)
    _hostname(root, spec.name)
    if spec.ciuser or spec.sshkeys:
        _user(root, spec.ciuser or DEFAULT_USER, spec.sshkeys)


def _booted(root: Path, instance_id: str) -> bool:
    marker = guest_path(root, INSTANCE_MARKER)
    return marker.is_file() and marker.read_text().strip() == instance_id


def _per_instance(root: Path, instance_id: str) -> None:
    if _booted(root, instance_id):
        return
    guest_path(root, "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    marker = guest_path(root, INSTANCE_MARKER)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(instance_id + "\n")


def user_data(spec: GuestSpec) -> str:
    """The #cloud-config PVE renders for the VM (qemu-server Cloudinit.pm:145-188; no password:
    the simulator's VMs get none from labctl)."""
    lines = [
        "#cloud-config",
        f"hostname: {spec.name}",
        "manage_etc_hosts: true",
        f"fqdn: {spec.name}",
    ]
    if spec.ciuser:
        lines.append(f"user: {spec.ciuser}")
        if spec.ciuser == "root":
            lines.append("disable_root: False")
    if spec.sshkeys:
        lines.append("ssh_authorized_keys:")
        lines.extend(f"  - {key}" for key in spec.sshkeys)
    lines += ["chpasswd:", "  expire: False"]
    if spec.ciuser != "root":
        lines += ["users:", "  - default"]
    if spec.package_upgrade:  # Cloudinit.pm:186, unless ciupgrade=0
        lines.append("package_upgrade: true")
    return "\n".join(lines) + "\n"


def _seed(root: Path, spec: GuestSpec, instance_id: str) -> None:
    seed = guest_path(root, SEED_DIR)
    seed.mkdir(parents=True, exist_ok=True)
    guest_path(root, f"{SEED_DIR}/meta-data").write_text(
        f"instance-id: {instance_id}\nlocal-hostname: {spec.name}\n"
    )
    guest_path(root, f"{SEED_DIR}/user-data").write_text(user_data(spec))
    timings = {"ssh_delay": spec.ssh_keys_delay, "upgrade_seconds": spec.upgrade_seconds}
    guest_path(root, f"{SEED_DIR}/labctl-sim.json").write_text(json.dumps(timings) + "\n")


def _install_standin(root: Path) -> None:
    command = guest_path(root, STANDIN_PATH)
    command.write_text("#!/usr/bin/python3\n" + STANDIN.read_text())
    command.chmod(0o755)
    for unit, text in UNITS.items():
        guest_path(root, f"etc/systemd/system/{unit}").write_text(text)
        wants = guest_path(root, "etc/systemd/system/multi-user.target.wants")
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit  # `systemctl enable`: a link into the guest's own tree
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(f"/etc/systemd/system/{unit}")


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
