"""Checks that need no Proxmox: TLS settings and the SSH key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from provision.config import LabConfig
from provision.errors import LabctlError
from provision.pve.client import format_fingerprint, normalize_fingerprint
from provision.pve.doctor.base import OK, PROBLEM, WARNING, Check


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
