"""Waiting for cloud-init in a guest: `cloud-init status --wait` over SSH.

A fresh clone's cloud-init keeps working after SSH answers: its final stage runs after
multi-user.target (canonical/cloud-init `systemd/cloud-final.service:5`), e.g. the package
upgrade PVE asks for on first boot (ciupgrade, default on), holding the dpkg lock and a CPU.
`labctl up` waits for it before deploying and probing. `cloud-init status --wait` prints a dot
every 0.25 s, then `status: ...`; it exits 0 when done, 1 on errors and 2 when done with
recoverable errors ("degraded", e.g. a failed package upgrade) (`cloudinit/cmd/status.py:
232-256`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provision.guest.types import CommandResult, GuestAddress

STATUS_COMMAND = "cloud-init status --wait --long"
_STATUS_RE = re.compile(r"(?:^|\.)status: ([a-z][a-z ]*)$", re.MULTILINE)
_EXTENDED_RE = re.compile(r"^extended_status: (.+)$", re.MULTILINE)
_ITEM_RE = re.compile(r"^\s+- (.+)$", re.MULTILINE)
_NOT_FOUND = 127


@dataclass(frozen=True)
class CloudInitStatus:
    """The outcome of `cloud-init status --wait`: done, degraded, error, disabled or absent
    (the guest has no cloud-init), or unknown (anything else, with the output in `detail`)."""

    state: str
    exit_code: int
    detail: str = ""
    waited_s: float = 0.0

    @property
    def finished_cleanly(self) -> bool:
        return self.state in ("done", "disabled", "absent")


def parse_status(result: CommandResult) -> CloudInitStatus:
    """Read `cloud-init status --wait --long` (tabular output) and its exit code."""
    out = result.stdout
    code = result.exit_code
    if code == _NOT_FOUND or (code != 0 and "not found" in result.stderr and "status:" not in out):
        return CloudInitStatus("absent", code, waited_s=result.duration_s)
    found = _STATUS_RE.findall(out)
    shown = found[-1].strip() if found else ""
    extended = _EXTENDED_RE.search(out)
    problems = "; ".join(item.strip() for item in _ITEM_RE.findall(out))
    detail = problems or (extended.group(1).strip() if extended else "")
    if code == 0 and shown in ("done", "disabled"):
        return CloudInitStatus(shown, code, detail, result.duration_s)
    if code == 2:
        return CloudInitStatus("degraded", code, detail or "recoverable errors", result.duration_s)
    if code == 1 or shown == "error":
        return CloudInitStatus(
            "error", code, detail or "cloud-init reported an error", result.duration_s
        )
    tail = (result.stderr.strip() or out.strip()).splitlines()[-3:]
    return CloudInitStatus(
        "unknown", code, " | ".join(tail) or f"exit code {code}", result.duration_s
    )


def wait_for_cloud_init(address: GuestAddress, timeout_s: float) -> CloudInitStatus:
    """Block until cloud-init has finished in the guest (CommandFailed after timeout_s)."""
    from provision.guest.ssh import connect

    with connect(address, timeout=min(10.0, max(1.0, timeout_s))) as session:
        return parse_status(session.run(STATUS_COMMAND, timeout=timeout_s))
