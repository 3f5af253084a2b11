"""labctl's own known_hosts: guest host keys pinned from the guest agent, never learnt over SSH.

Lines use OpenSSH's format (`host[,alias...] keytype base64`), so `ssh -o UserKnownHostsFile=...`
and Ansible read the same file. Edits take a lock and replace the file atomically, because two
`labctl up` may pin keys at the same time.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from provision.errors import GuestError

_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
)


def host_entry(host: str, port: int = 22) -> str:
    """How OpenSSH names a host in known_hosts: bare for port 22, else [host]:port."""
    return host if port == 22 else f"[{host}]:{port}"


def parse_public_key(text: str) -> tuple[str, str]:
    """'ssh-ed25519 AAAA... root@x' -> ('ssh-ed25519', 'AAAA...'); GuestError if it is not one."""
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and parts[0] in _KEY_TYPES and len(parts[1]) > 16:
            return parts[0], parts[1]
    raise GuestError(f"not an SSH public key: {text.strip()[:60]!r}")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _names(line: str) -> set[str]:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return set()
    first = stripped.split()[0]
    if first.startswith("@"):  # @cert-authority / @revoked markers: not ours
        return set()
    return set(first.split(","))


def pin_host_key(
    known_hosts: Path, host: str, key_line: str, *, port: int = 22, aliases: Sequence[str] = ()
) -> str:
    """Make `key_line` the only key known for host (and aliases). Returns the line written."""
    key_type, key_b64 = parse_public_key(key_line)
    names = [host_entry(host, port), *(host_entry(a, port) for a in aliases if a and a != host)]
    entry = f"{','.join(names)} {key_type} {key_b64}"
    with _locked(known_hosts):
        kept = [line for line in _read_lines(known_hosts) if not (_names(line) & set(names))]
        _write_lines(known_hosts, [*kept, entry])
    return entry


def forget_host_key(known_hosts: Path, host: str, *, port: int = 22) -> bool:
    """Drop every line naming host (as address or alias). True if something was removed."""
    name = host_entry(host, port)
    with _locked(known_hosts):
        lines = _read_lines(known_hosts)
        kept = [line for line in lines if name not in _names(line)]
        if len(kept) == len(lines):
            return False
        _write_lines(known_hosts, kept)
    return True


def pinned_hosts(known_hosts: Path) -> list[str]:
    """Every host name in the file (for tests and `labctl ls`)."""
    names: list[str] = []
    for line in _read_lines(known_hosts):
        names.extend(sorted(_names(line)))
    return names
