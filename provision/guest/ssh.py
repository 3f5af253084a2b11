"""SSH to guests: the only module that imports paramiko.

Host keys are checked against labctl's own known_hosts (pinned from the guest agent before the
first connection) with RejectPolicy: an unknown or different key is refused, never learnt. The
one exception is `first_contact`: `labctl template create` boots a cloud image that has no guest
agent yet, so the key of that VM (which labctl has just created) is trusted on first use.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import paramiko

from provision.errors import (
    CommandFailed,
    ConfigError,
    GuestUnreachable,
    HostKeyMismatch,
)
from provision.guest.known_hosts import host_entry, pin_host_key
from provision.guest.types import CommandResult, GuestAddress, short_command
from provision.progress import NullReporter, Reporter

_READ_CHUNK = 65536

# paramiko logs a failed connection (e.g. "Error reading SSH protocol banner" while a guest's
# sshd starts) with its traceback at ERROR; without a handler Python would print it on stderr.
# labctl reports such failures itself, as one line; -vv shows paramiko's log (log_setup.py).
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class SshSession:
    """An open SSH connection to one guest. Use through `connect()` as a context manager."""

    def __init__(self, address: GuestAddress, client: paramiko.SSHClient) -> None:
        self.address = address
        self._client = client
        self.last_exit_code: int | None = None
        self.last_stderr = ""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _open(self, command: str, stdin: bytes | None) -> paramiko.Channel:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise GuestUnreachable(f"SSH connection to {self.address.label} is closed")
        try:
            channel = transport.open_session(timeout=10)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise GuestUnreachable(f"SSH to {self.address.label} failed: {error}") from error
        return channel

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run a command; its output is collected. CommandFailed if check and it exits non-zero."""
        started = time.monotonic()
        channel = self._open(command, stdin)
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else started + timeout
        try:
            idle = 0.002
            while True:
                got = False
                while channel.recv_ready():
                    out += channel.recv(_READ_CHUNK)
                    got = True
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(_READ_CHUNK)
                    got = True
                if (
                    channel.exit_status_ready()
                    and not channel.recv_ready()
                    and not channel.recv_stderr_ready()
                ):
                    break
                if channel.closed and not got:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise CommandFailed(
                        f"`{short_command(command)}` on {self.address.label} did not finish "
                        f"within {timeout:g}s"
                    )
                idle = 0.002 if got else min(0.05, idle * 2)
                if not got:
                    time.sleep(idle)
            code = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise GuestUnreachable(
                f"SSH connection to {self.address.label} dropped: {error}"
            ) from error
        finally:
            channel.close()
        if code == -1:
            raise GuestUnreachable(
                f"SSH connection to {self.address.label} dropped while running "
                f"`{short_command(command)}`"
            )
        result = CommandResult(
            command,
            code,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
            time.monotonic() - started,
        )
        self.last_exit_code, self.last_stderr = code, result.stderr
        if check and not result.ok:
            raise CommandFailed(f"on {self.address.label}: {result.describe()}")
        return result

    def stream_lines(
        self, command: str, *, stdin: bytes | None = None, timeout: float | None = None
    ) -> Iterator[str]:
        """Yield stdout lines as they arrive; exit code in `.last_exit_code` afterwards."""
        self.last_exit_code = None
        channel = self._open(command, stdin)
        channel.settimeout(0.5)
        started = time.monotonic()
        pending = b""
        err = bytearray()
        try:
            while True:
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(_READ_CHUNK)
                try:
                    chunk = channel.recv(_READ_CHUNK)
                except TimeoutError:
                    chunk = None
                if chunk == b"":
                    break
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8", "replace")
                if timeout is not None and time.monotonic() - started > timeout:
                    raise CommandFailed(
                        f"`{short_command(command)}` on {self.address.label} did not finish "
                        f"within {timeout:g}s"
                    )
            if pending:
                yield pending.decode("utf-8", "replace")
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(_READ_CHUNK)
            code = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise GuestUnreachable(
                f"SSH connection to {self.address.label} dropped: {error}"
            ) from error
        finally:
            channel.close()
        self.last_stderr = err.decode("utf-8", "replace")
        if code == -1:
            raise GuestUnreachable(
                f"SSH connection to {self.address.label} dropped while running "
                f"`{short_command(command)}`"
            )
        self.last_exit_code = code


def _client_for(address: GuestAddress) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if not address.known_hosts.exists():
        raise GuestUnreachable(
            f"no pinned host key for {address.label}: {address.known_hosts} does not exist",
            hint=f"run `labctl up {address.name or 'NAME'}` to pin it from the guest agent",
        )
    client.load_host_keys(str(address.known_hosts))
    if client.get_host_keys().lookup(host_entry(address.host, address.port)) is None:
        raise GuestUnreachable(
            f"no pinned host key for {address.host} in {address.known_hosts}",
            hint=f"run `labctl up {address.name or 'NAME'}` to pin it from the guest agent",
        )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def _load_key(path: Path) -> paramiko.PKey:
    expanded = path.expanduser()
    if not expanded.is_file():
        raise ConfigError(f"SSH key {expanded} does not exist", hint="set ssh.key in labctl.toml")
    try:
        return paramiko.PKey.from_path(expanded)
    except paramiko.PasswordRequiredException:
        raise ConfigError(
            f"SSH key {expanded} is passphrase-protected",
            hint="point ssh.key at a key without a passphrase for labctl",
        ) from None
    except (paramiko.SSHException, ValueError, OSError) as error:
        raise ConfigError(f"cannot read SSH key {expanded}: {error}") from None


def connect(address: GuestAddress, timeout: float = 10.0) -> SshSession:
    """Open an SSH session with key auth; the host key must match the pinned one."""
    client = _client_for(address)
    key = _load_key(address.key_path)
    try:
        client.connect(
            address.host,
            port=address.port,
            username=address.user,
            pkey=key,
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException as error:
        client.close()
        raise HostKeyMismatch(
            f"SSH host key of {address.label} does not match the key pinned in "
            f"{address.known_hosts} (got {error.key.get_name()} "
            f"{error.key.fingerprint})",
        ) from error
    except paramiko.AuthenticationException as error:
        client.close()
        raise GuestUnreachable(
            f"SSH key authentication as {address.user} on {address.label} failed: {error}",
            hint="is the key's .pub in the VM's sshkeys (cloud-init)?",
        ) from error
    except (paramiko.SSHException, OSError, EOFError) as error:
        client.close()
        raise GuestUnreachable(f"cannot open SSH to {address.label}: {_reason(error)}") from error
    return SshSession(address, client)


def _reason(error: BaseException) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return "timed out"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


ALIVE_CHECK_S = 2.0  # how often a failing SSH wait asks whether the VM still runs


def wait_for_ssh(
    address: GuestAddress,
    timeout_s: float,
    reporter: Reporter | None = None,
    *,
    note_every_s: float = 5.0,
    check_alive: Callable[[], None] | None = None,
) -> None:
    """Retry until SSH answers with key auth and runs `true`; a changed host key fails at once.

    check_alive (called every ALIVE_CHECK_S while SSH fails) raises when the VM has stopped,
    so a guest that died does not cost the whole timeout.
    """
    reporter = reporter or NullReporter()
    start = time.monotonic()
    deadline = start + timeout_s
    next_note = start + note_every_s
    next_alive_check = start + ALIVE_CHECK_S
    last_error = "no attempt yet"
    delay = 0.1
    while True:
        remaining = deadline - time.monotonic()
        try:
            with connect(address, timeout=max(1.0, min(10.0, remaining))) as session:
                session.run("true", timeout=max(1.0, min(30.0, remaining)), check=True)
            return
        except HostKeyMismatch:
            raise
        except (GuestUnreachable, CommandFailed) as error:
            last_error = error.message
        now = time.monotonic()
        if now >= deadline:
            raise GuestUnreachable(
                f"SSH to {address.label} did not answer within {timeout_s:g}s: {last_error}",
                hint="check that sshd runs in the guest and that the VM's network reaches it",
            )
        if check_alive is not None and now >= next_alive_check:
            check_alive()
            next_alive_check = now + ALIVE_CHECK_S
        if now >= next_note:
            reporter.step(
                f"waiting for SSH on {address.host}:{address.port} ({deadline - now:.0f}s left)"
            )
            next_note = now + note_every_s
        time.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(1.0, delay * 1.5)


class _RecordFirstKey(paramiko.MissingHostKeyPolicy):
    """Accepts the server's key and keeps it: trust on first use, for `first_contact` only."""

    def __init__(self) -> None:
        self.key: paramiko.PKey | None = None

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        self.key = key


def fingerprint_sha256(key_b64: str) -> str:
    """OpenSSH's `SHA256:...` fingerprint of a base64 public key blob."""
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def first_contact(address: GuestAddress, timeout_s: float) -> tuple[str, str]:
    """Trust-on-first-use: retry until SSH with key auth works, accept the host key it shows
    and pin it in address.known_hosts. Returns (the key line, its SHA256 fingerprint).

    Only for a VM labctl has just created from a cloud image (no guest agent to read the key
    from); every other connection goes through `connect`, which refuses unknown keys.
    """
    key = _load_key(address.key_path)
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt yet"
    while time.monotonic() < deadline:
        client = paramiko.SSHClient()
        policy = _RecordFirstKey()
        client.set_missing_host_key_policy(policy)
        wait = max(1.0, min(10.0, deadline - time.monotonic()))
        try:
            client.connect(address.host, port=address.port, username=address.user, pkey=key,
                           look_for_keys=False, allow_agent=False, timeout=wait,
                           banner_timeout=wait, auth_timeout=wait)  # fmt: skip
            seen = policy.key or client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
        except (paramiko.SSHException, OSError, EOFError) as error:
            last_error = _reason(error)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            continue
        finally:
            client.close()
        line = f"{seen.get_name()} {seen.get_base64()}"
        pin_host_key(address.known_hosts, address.host, line, port=address.port)
        return line, fingerprint_sha256(seen.get_base64())
    raise GuestUnreachable(
        f"SSH to {address.label} did not answer within {timeout_s:g}s: {last_error}",
        hint="the first boot uses the static --ip given: is it free and reachable from here?",
    )
