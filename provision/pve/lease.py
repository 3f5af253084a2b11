"""One owner per VM: a lease kept in the VM's own Notes, taken with PVE's digest compare-and-swap.

Commands that change or measure a VM hold its lease for their whole run. The lease lives where
every controller sees it: a marked block in the VM's `description` (the Notes panel), next to
whatever the user wrote there, which is kept as it is. It is written with `PUT .../config`
carrying the `digest` of the config it was computed from; PVE refuses the write with
"checksum mismatch (file change by other user?)" when anyone changed the config in between
(qemu-server `PVE/API2/Qemu.pm` update_vm_api, pve-api.md §4), so two writers cannot both win.
The holder renews it while it runs and removes it at the end; a holder that crashed stops
renewing, and once the lease expires anyone may take it over, saying so.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, Self

from provision.errors import LeaseHeld, ProxmoxAPIError, UsageError
from provision.progress import Reporter

DEFAULT_TTL_S = 120.0
RENEW_EVERY = 3  # renew at a third of the TTL: two missed renewals still leave it ours
_BLOCK = re.compile(r"<!-- labctl-lease (.*?) -->\n?", re.DOTALL)
_MISMATCH = "checksum mismatch"


class ConfigApi(Protocol):
    """What the lease needs of the PVE client: read a config, write it synchronously."""

    def get(self, path: str, **params: Any) -> Any: ...

    def put(self, path: str, **data: Any) -> Any: ...


@dataclass(frozen=True)
class Lease:
    """Who holds a VM, for what, since when and until when (epoch seconds, holder's clock)."""

    holder: str
    command: str
    since: float
    expires: float
    token: str

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def describe(self) -> str:
        return (
            f"held by `labctl {self.command}` on {self.holder} since {_clock(self.since)} "
            f"(expires {_clock(self.expires)} unless renewed)"
        )

    def block(self) -> str:
        return f"<!-- labctl-lease {json.dumps(asdict(self), sort_keys=True)} -->\n"


@dataclass(frozen=True)
class UnreadableLease:
    """A lease block someone edited into something labctl cannot read."""

    text: str


def read_lease(description: str) -> Lease | UnreadableLease | None:
    """The lease in a VM's Notes, None when there is none."""
    found = _BLOCK.search(description or "")
    if found is None:
        return (
            UnreadableLease(_marker_line(description))
            if "labctl-lease" in (description or "")
            else None
        )
    try:
        data = json.loads(found.group(1))
        return Lease(
            holder=str(data["holder"]),
            command=str(data["command"]),
            since=float(data["since"]),
            expires=float(data["expires"]),
            token=str(data["token"]),
        )
    except (ValueError, KeyError, TypeError):
        return UnreadableLease(found.group(0).strip())


def lease_holder(description: str, now: float) -> str | None:
    """For `labctl ls`: who holds the VM, or None when nobody (or only an expired lease) does."""
    current = read_lease(description)
    if isinstance(current, UnreadableLease):
        return f"unreadable lease {current.text[:60]!r}"
    if current is None or current.expired(now):
        return None
    return f"`labctl {current.command}` on {current.holder} since {_clock(current.since)}"


def with_lease(description: str, lease: Lease | None) -> str:
    """The Notes with this lease block (or none) instead of any earlier one; the rest kept."""
    text = _BLOCK.sub("", description or "")
    text = "\n".join(line for line in text.split("\n") if "labctl-lease" not in line)
    return (lease.block() if lease else "") + text


def parse_wait(value: str | None) -> float | None:
    """--wait's value: None (do not wait), or seconds >= 0 (a bare --wait waits up to 10 min)."""
    if value is None:
        return None
    if value == "":
        return 600.0
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"--wait takes a number of seconds, got {value!r}") from None
    if seconds < 0 or math.isnan(seconds):
        raise UsageError(f"--wait cannot be negative, got {value}")
    return seconds


class VmLease:
    """Hold a VM's lease for a `with` block: take (or wait for) it, renew it, give it back."""

    def __init__(
        self,
        api: ConfigApi,
        path: str,
        vm: str,
        command: str,
        reporter: Reporter,
        *,
        wait_s: float | None = None,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self.api, self.path, self.vm, self.command = api, path, vm, command
        self.reporter, self.wait_s, self.ttl_s = reporter, wait_s, ttl_s
        self.token = uuid.uuid4().hex
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._unreadable_since: dict[str, float] = {}

    def __enter__(self) -> Self:
        self.acquire()
        self._renewer = threading.Thread(
            target=self._renew_loop, daemon=True, name=f"lease-{self.vm}"
        )
        self._renewer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.ttl_s)
        self.release()

    # -- taking it

    def acquire(self) -> None:
        deadline = None if self.wait_s is None else time.monotonic() + self.wait_s
        while True:
            config = self.api.get(f"{self.path}/config")
            description = str(config.get("description") or "")
            blocker = self._blocker(read_lease(description), time.time())
            if blocker is None:
                if self._write(description, str(config.get("digest") or ""), self._mine()):
                    return
                continue  # someone wrote the config in between: read it again
            left = None if deadline is None else deadline - time.monotonic()
            if left is None or left <= 0:
                raise LeaseHeld(f"{self.vm} is {blocker}; try again later or add --wait")
            self.reporter.step(f"waiting for {self.vm}: {blocker} ({left:.0f} s left)")
            time.sleep(min(2.0, left))

    def _blocker(self, current: Lease | UnreadableLease | None, now: float) -> str | None:
        """Why the VM cannot be taken now, or None (free, expired or unreadable for too long)."""
        if current is None:
            return None
        if isinstance(current, UnreadableLease):
            first = self._unreadable_since.setdefault(current.text, now)
            if first == now:
                self.reporter.warn(
                    f"{self.vm}: its Notes hold a lease labctl cannot read "
                    f"({current.text[:120]!r}); treated as held for "
                    f"{self.ttl_s:.0f} s"
                )
            if now - first < self.ttl_s:
                return "held under a lease labctl cannot read"
            return None
        if current.token == self.token:
            return None
        if _holder_gone(current.holder):
            self.reporter.warn(
                f"{self.vm}: taking over the lease of `labctl {current.command}`"
                f" on {current.holder}: that process is gone from this machine"
            )
            return None
        if not current.expired(now):
            return current.describe()
        self.reporter.warn(
            f"{self.vm}: taking over the expired lease of `labctl "
            f"{current.command}` on {current.holder} (expired "
            f"{_clock(current.expires)}; its holder stopped renewing it)"
        )
        return None

    def _mine(self) -> Lease:
        now = time.time()
        return Lease(
            holder=self.holder,
            command=self.command,
            since=now,
            expires=now + self.ttl_s,
            token=self.token,
        )

    def _write(self, description: str, digest: str, lease: Lease | None) -> bool:
        """Compare-and-swap the Notes; False when the config changed since it was read."""
        try:
            self.api.put(
                f"{self.path}/config", description=with_lease(description, lease), digest=digest
            )
        except ProxmoxAPIError as error:
            if _MISMATCH in str(error):
                return False
            raise
        return True

    # -- keeping it

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / RENEW_EVERY):
            try:
                self.renew()
            except ProxmoxAPIError as error:  # a blip: the next renewal tries again
                self.reporter.warn(f"{self.vm}: lease renewal failed ({error})")

    def renew(self) -> None:
        for _ in range(5):
            config = self.api.get(f"{self.path}/config")
            description = str(config.get("description") or "")
            current = read_lease(description)
            if not isinstance(current, Lease) or current.token != self.token:
                self.lost = current.describe() if isinstance(current, Lease) else "no longer leased"
                self.reporter.warn(f"{self.vm}: lost its lease, now {self.lost}")
                self._stop.set()
                return
            renewed = Lease(
                holder=current.holder,
                command=current.command,
                since=current.since,
                expires=time.time() + self.ttl_s,
                token=self.token,
            )
            if self._write(description, str(config.get("digest") or ""), renewed):
                return

    # -- giving it back

    def release(self) -> None:
        """Remove our block (only ours); a VM destroyed meanwhile has nothing to release."""
        for _ in range(5):
            try:
                config = self.api.get(f"{self.path}/config")
            except ProxmoxAPIError:
                return
            description = str(config.get("description") or "")
            current = read_lease(description)
            if not isinstance(current, Lease) or current.token != self.token:
                return
            if self._write(description, str(config.get("digest") or ""), None):
                return


def _holder_gone(holder: str) -> bool:
    """True when the holder ran on this machine and its process no longer exists (killed with
    -9, crashed): no need to wait out the TTL. Holders on other machines expire by time only."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _marker_line(description: str) -> str:
    return next((line for line in description.split("\n") if "labctl-lease" in line), "")


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
