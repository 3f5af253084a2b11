"""SHA-256 fingerprints of the Proxmox server's TLS certificate: what proxmox.fingerprint pins,
as users paste it (colons, any case) and as `pvenode cert info` shows it."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl

from provision.errors import ConfigError, ProxmoxError

_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")


def normalize_fingerprint(text: str) -> str:
    """'AB:CD:...' or 'abcd...' -> 64 lowercase hex digits; ConfigError otherwise."""
    hexdigits = text.replace(":", "").replace(" ", "").strip().lower()
    if hexdigits.startswith("sha256"):
        hexdigits = hexdigits.removeprefix("sha256").lstrip("=")
    if not _FINGERPRINT_RE.match(hexdigits):
        raise ConfigError(
            f"proxmox.fingerprint {text!r} is not a SHA-256 fingerprint",
            hint="64 hex digits, colons allowed; on the PVE host: pvenode cert info",
        )
    return hexdigits


def format_fingerprint(hexdigits: str) -> str:
    """64 hex digits -> 'AB:CD:...' as PVE's `pvenode cert info` shows it."""
    upper = hexdigits.upper()
    return ":".join(upper[i : i + 2] for i in range(0, len(upper), 2))


def server_fingerprint(host: str, port: int, timeout: float = 10.0) -> str:
    """The SHA-256 fingerprint of the certificate the server presents (no verification)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ProxmoxError(f"{host}:{port} presented no TLS certificate")
    return format_fingerprint(hashlib.sha256(der).hexdigest())
