"""The QEMU guest agent as labctl uses it: the guest's address, and its SSH host key read
through the agent (never trusted on first SSH use) and pinned into labctl's known_hosts.

Every agent endpoint runs in pvedaemon (3 workers per node, pve-manager
PVE/Service/pvedaemon.pm:18) and holds its worker up to 3 s while no agent answers
(qemu-server src/PVE/QemuServer/Agent.pm:82-89). So: one agent call per VM at a time, at most
AGENT_CALLS_IN_FLIGHT per node from all labctl processes of this machine (a worker stays free
for task polls, config calls and the web UI; 20 `labctl up` at once are 20 processes), and a
growing pause between the polls of one VM.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from pathlib import Path
from typing import Any

from provision.errors import AgentTimeout, GuestError, LabctlError, ProxmoxAPIError
from provision.guest.known_hosts import parse_public_key, pin_host_key, pinned_hosts
from provision.progress import Stopwatch
from provision.pve.cluster import Cluster, LocalLocks, Resource, UpContext
from provision.pve.shapes import pick_address

HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key.pub"
AGENT_NOT_UP = ("QEMU guest agent is not running", "guest agent is not running")
NOTE_EVERY_S = 5.0
AGENT_CALLS_IN_FLIGHT = 2
AGENT_BACKOFF_S = (0.25, 1.5, 2.0)  # first pause, growth factor, longest pause
# The host key read through the agent: cloud-init may not have written it yet (file-read 500)
# or may be about to replace it, so labctl pins it only once two reads this far apart agree.
KEY_SETTLE_S = 0.5
# How long an IPv6-only answer waits for DHCPv4 before labctl takes the IPv6 address.
IPV6_GRACE_S = 10.0
_NOT_RUNNING_RE = re.compile(r"VM \d+ is not running")


class GuestAgent:
    """Agent calls for the VMs of one Lab, at most AGENT_CALLS_IN_FLIGHT per node at once."""

    def __init__(self, cluster: Cluster, known_hosts: Path, locks: LocalLocks) -> None:
        self.cluster = cluster
        self.known_hosts = known_hosts
        self._locks = locks

    def call(self, res: Resource, command: str, *, poll: bool = False, **params: Any) -> Any:
        """One agent call, never retried here, in one of the node's AGENT_CALLS_IN_FLIGHT
        slots shared by every labctl process of this machine."""
        client = self.cluster.client
        slots = f"agent-{client.settings.host}-{client.settings.port}-{res.node}"
        with self._locks.one_of(slots, AGENT_CALLS_IN_FLIGHT):
            return client.get(f"{res.path}/agent/{command}", poll=poll, retry=False, **params)

    # -- the address -----------------------------------------------------------------------

    def address(self, res: Resource) -> str | None:
        """The address the agent reports now; None while it reports none (or cannot answer)."""
        try:
            data = self.call(res, "network-get-interfaces")
        except LabctlError as error:
            if isinstance(error, ProxmoxAPIError) and error.status == 403:
                raise  # a missing privilege is not "no address yet"
            return None
        return pick_address((data or {}).get("result"))

    def wait_for_address(self, ctx: UpContext, res: Resource, timeout: float | None = None) -> str:
        """Poll agent/network-get-interfaces until it reports a usable address (within
        `timeout`, by default timeouts.agent).

        One poll at a time, with a growing pause in between: while the agent is not up, PVE
        answers "QEMU guest agent is not running" only after its 3 s guest-ping timeout, and
        that poll holds one of pvedaemon's 3 workers meanwhile; two polls per VM (or a poll
        right after the last) would leave nothing for the other API calls of a parallel sweep.
        """
        ctx.stage = "agent"
        self.cluster.reporter.stage("agent")
        if timeout is None:
            timeout = self.cluster.seconds("timeouts.agent")
        poll = _AddressPoll(ctx, timeout)
        while True:
            ip = self._poll_address(ctx, poll, res)
            if ip is not None:
                self.cluster.reporter.step(f"address {ip} after {poll.watch.elapsed:.1f}s")
                return ip
            poll.check_timeout()
            note = poll.note_due()
            if note:
                self.cluster.reporter.step(note)
            poll.pause()

    def _poll_address(self, ctx: UpContext, poll: _AddressPoll, res: Resource) -> str | None:
        try:
            data = self.call(res, "network-get-interfaces", poll=True)
        except ProxmoxAPIError as error:
            poll.last = _agent_wait_error(ctx, error)
            return None
        except LabctlError as error:  # connection trouble: a transient failure of this poll
            poll.last = error.message
            return None
        return poll.accept(pick_address((data or {}).get("result") or []))

    # -- the host key ----------------------------------------------------------------------

    def is_pinned(self, ip: str) -> bool:
        return self.known_hosts.exists() and ip in pinned_hosts(self.known_hosts)

    def pin_host_key(self, res: Resource, ip: str) -> str:
        """Read the guest's ed25519 host key through the agent (not over SSH) and pin it.

        The agent can report an address before cloud-init's ssh module has run: the key is not
        there yet (file-read answers 500 "failed to open file ...") or is the image's, about to
        be deleted and regenerated (canonical/cloud-init cloudinit/config/cc_ssh.py:99-104,
        155-182). So the read is repeated until the key exists and two reads KEY_SETTLE_S apart
        agree, within timeouts.agent.
        """
        timeout = self.cluster.seconds("timeouts.agent")
        watch = Stopwatch()
        previous: str | None = None
        last = "no answer yet"
        while True:
            content, why_not = self._read_host_key(res)
            if why_not is not None:
                last = why_not
            if content is not None and content == previous:
                line = _decode_key_content(content)
                return pin_host_key(self.known_hosts, ip, line, aliases=[res.name])
            if content is not None and previous is not None:
                last = "the key changed between two reads"
            previous = content
            if watch.elapsed >= timeout:
                raise _key_error(res, f"no stable key within {timeout:g}s ({last})")
            # one call at a time: a missing file answers at once, a silent agent after 3 s
            time.sleep(min(KEY_SETTLE_S, max(0.0, timeout - watch.elapsed)))

    def _read_host_key(self, res: Resource) -> tuple[str | None, str | None]:
        """(the key file's content, None) or (None, why not yet); raises what reads cannot
        fix."""
        try:
            data = self.call(res, "file-read", file=HOST_KEY_PATH)
        except ProxmoxAPIError as error:
            if error.status == 403:
                raise  # Proxmox refused (a privilege), not the guest
            if (
                error.status < 500
                or "No QEMU guest agent configured" in error.message
                or _NOT_RUNNING_RE.search(error.message)
            ):
                raise _key_error(res, error.message) from error  # reads cannot fix it
            return None, error.message
        except LabctlError as error:  # connection trouble: try again
            return None, error.message
        return _file_content(data), None


class _AddressPoll:
    """The state of one wait for an address: time, pauses, progress notes, the last reason."""

    def __init__(self, ctx: UpContext, timeout: float) -> None:
        self.ctx = ctx
        self.timeout = timeout
        self.watch = Stopwatch()
        self.last = "no answer yet"
        self.next_note = NOTE_EVERY_S
        first, self.growth, self.longest = AGENT_BACKOFF_S
        self.delay = first
        self.v6_since: float | None = None

    def accept(self, ip: str | None) -> str | None:
        """The address to use, or None to keep polling (an IPv6 one waits a while for IPv4)."""
        if ip and ":" in ip and self.v6_since is None:
            self.v6_since = self.watch.elapsed  # give DHCPv4 a moment before taking IPv6
        if ip and (":" not in ip or self.watch.elapsed - (self.v6_since or 0.0) > IPV6_GRACE_S):
            return ip
        self.last = "the agent answers but reports no usable address yet"
        return None

    def check_timeout(self) -> None:
        if self.watch.elapsed >= self.timeout:
            raise AgentTimeout(
                f"the guest agent of {self.ctx.name} (vmid {self.ctx.vmid}) gave no IP address "
                f"within {self.timeout:g}s ({self.last})",
                hint="check that qemu-guest-agent is installed and enabled in the "
                "template and that the VM's agent option is on (Options > QEMU "
                "Guest Agent)",
            )

    def note_due(self) -> str | None:
        """A progress line every NOTE_EVERY_S, else None."""
        if self.watch.elapsed < self.next_note:
            return None
        self.next_note += NOTE_EVERY_S
        return (
            f"waiting for the guest agent "
            f"({self.timeout - self.watch.elapsed:.0f}s left: {self.last})"
        )

    def pause(self) -> None:
        time.sleep(min(self.delay, max(0.0, self.timeout - self.watch.elapsed)))
        self.delay = min(self.longest, self.delay * self.growth)


def _agent_wait_error(ctx: UpContext, error: ProxmoxAPIError) -> str:
    """Which agent errors mean 'keep waiting' (returned as text) and which end the wait."""
    if error.status == 500 and any(m in error.message for m in AGENT_NOT_UP):
        return "QEMU guest agent is not running"
    if "No QEMU guest agent configured" in error.message:
        raise AgentTimeout(
            f"VM {ctx.name} has no guest agent configured",
            hint="labctl sets agent=1; was the config changed?",
        )
    if _NOT_RUNNING_RE.search(error.message):
        raise GuestError(
            f"VM {ctx.name} stopped while labctl waited for its guest agent",
            hint="see the VM's console / task log in the PVE UI",
        )
    if error.status >= 500:
        return error.message  # transient; keep waiting
    raise error


def _key_error(res: Resource, why: str) -> GuestError:
    return GuestError(
        f"cannot read {HOST_KEY_PATH} of {res.name} through the guest agent: {why}",
        hint="labctl pins SSH host keys from the agent; the template needs an ed25519 host "
        "key (cloud-init makes one) and an agent that allows file-read",
    )


def _file_content(data: Any) -> str:
    """agent/file-read's `content` (PVE returns it bare; `result.content` is accepted too)."""
    content = (data or {}).get("content") if isinstance(data, dict) else None
    if content is None and isinstance(data, dict):
        content = (data.get("result") or {}).get("content")
    return str(content or "")


def _decode_key_content(content: str) -> str:
    """file-read gives the text (PVE decodes QGA's base64); accept base64 too, to be safe."""
    try:
        parse_public_key(content)
        return content
    except GuestError:
        pass
    try:
        decoded = base64.b64decode(content, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise GuestError(
            f"{HOST_KEY_PATH} read through the agent is not an SSH public key"
        ) from None
    parse_public_key(decoded)
    return decoded
