"""What goes wrong talking to PVE, as labctl's one-line errors: proxmoxer's ResourceException
becomes ProxmoxAPIError carrying PVE's message (the HTTP reason phrase) and its per-parameter
`errors`; a 403 names who lacks which privilege on which ACL path; TLS and connection failures
become one line each, a certificate that cannot be verified naming its fingerprint."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import requests
import urllib3
from proxmoxer.core import ResourceException

from provision.errors import ProxmoxAPIError, ProxmoxError, TLSVerifyError
from provision.pve.fingerprint import format_fingerprint, server_fingerprint

# raise_perm_exc("$path, $priv") / ("$path, a|b") (pve-common src/PVE/Exception.pm:53-70,
# pve-access-control src/PVE/RPCEnvironment.pm:300,325)
_PERMISSION_RE = re.compile(r"^Permission check failed \((?P<path>/[^,]*), (?P<privs>.+)\)$")
# PVE's ['or', ...] permission checks fail with a bare "Permission check failed": what they want.
_UNNAMED_PRIVILEGE = {
    # clone: VM.Allocate on /vms/{newid} or on /pool/{pool} (qemu-server Qemu.pm:4343-4346)
    ("POST", "clone"): ("VM.Allocate", "/vms/{newid}"),
}
_PIN_MISMATCH_RE = re.compile(
    r'Fingerprints did not match\. Expected "([0-9a-f]+)", got "([0-9a-f]+)"'
)
ROLE_HINT = 'labctl\'s role and ACL paths: README "A lab against a real Proxmox VE"'


def api_error(
    method: str,
    path: str,
    error: ResourceException,
    *,
    params: Mapping[str, Any] | None = None,
    who: str = "",
) -> ProxmoxAPIError:
    """PVE puts its message in the HTTP reason phrase (proxmoxer's `content`)."""
    status = int(error.status_code)
    message = str(error.content or error.status_message or "").strip()
    errors = error.errors if isinstance(error.errors, dict) else {}
    errors = {str(k): str(v).strip() for k, v in errors.items() if k != "errors"}
    if errors:
        message += " " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
    where = f"{method} /{path.strip('/')}"
    hint = None
    if status == 401:
        hint = "check proxmox.token_id and the token secret (or user/password)"
        message = f"authentication failed ({message or 'HTTP 401'})"
    elif status == 403:
        hint = ROLE_HINT
        message = _permission_message(method, path, message, params or {}, who)
    elif status == 501:
        hint = "this Proxmox VE version does not offer that endpoint"
    return ProxmoxAPIError(
        f"Proxmox: {message} [{where}, HTTP {status}]", status=status, errors=errors, hint=hint
    )


def _permission_message(
    method: str, path: str, message: str, params: Mapping[str, Any], who: str
) -> str:
    """`Permission check failed (/vms/101, VM.GuestAgent.FileRead|VM.GuestAgent.Unrestricted)`
    -> `labctl@pve!labctl lacks VM.GuestAgent.FileRead (or VM.GuestAgent.Unrestricted) on
    /vms/101`; PVE's text as it is when it is not a privilege check."""
    who = who or "the API user"
    match = _PERMISSION_RE.match(message)
    if match:
        first, *others = match.group("privs").split("|")
        alternatives = f" (or {', '.join(others)})" if others else ""
        return f"{who} lacks {first}{alternatives} on {match.group('path')}"
    unnamed = _UNNAMED_PRIVILEGE.get((method, path.strip("/").rsplit("/", 1)[-1]))
    if message == "Permission check failed" and unnamed:
        privilege, acl_path = unnamed
        acl_path = re.sub(r"\{(\w+)\}", lambda m: str(params.get(m.group(1), "?")), acl_path)
        return f"{who} lacks {privilege} on {acl_path} (PVE: {message})"
    return f"{who} was refused: {message or 'HTTP 403'}"


def nothing_sent(error: requests.exceptions.RequestException) -> bool:
    """True when the TCP connection itself failed, so the request never reached PVE."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    reason = error.args[0] if error.args else None
    inner = getattr(reason, "reason", None)
    return isinstance(inner, urllib3.exceptions.NewConnectionError) or isinstance(
        reason, urllib3.exceptions.NewConnectionError
    )


def transport_error(error: requests.exceptions.RequestException, url: str) -> ProxmoxError:
    if isinstance(error, requests.exceptions.SSLError):
        return TLSVerifyError(f"TLS failure talking to {url}: {_short(str(error))}")
    if isinstance(error, requests.exceptions.Timeout):
        return ProxmoxError(
            f"Proxmox API at {url} did not answer in time",
            hint="raise proxmox.timeout or check the host",
        )
    return ProxmoxError(
        f"cannot reach the Proxmox API at {url}: {_short(str(error))}",
        hint="check proxmox.host / proxmox.port and that pveproxy runs",
    )


def tls_error(
    error: requests.exceptions.SSLError, host: str, port: int, *, pinned: bool
) -> TLSVerifyError:
    """A pin mismatch names both fingerprints; an unverifiable certificate names its own."""
    text = str(error)
    where = f"{host}:{port}"
    match = _PIN_MISMATCH_RE.search(text)
    if match:
        expected, got = (format_fingerprint(x) for x in match.groups())
        return TLSVerifyError(
            f"TLS pin mismatch for {where}: expected SHA-256 {expected}, server presented {got}",
            hint="the node's certificate changed or proxmox.fingerprint is wrong: compare with "
            "`pvenode cert info` on the node before pinning the new one",
        )
    if pinned:
        return TLSVerifyError(f"TLS failure talking to {where}: {_short(text)}")
    try:
        seen = server_fingerprint(host, port)
    except (OSError, ProxmoxError):
        seen = "unknown"
    return TLSVerifyError(
        f"cannot verify the TLS certificate of {where} (self-signed?); its SHA-256 is {seen}",
        hint="compare with `pvenode cert info` on the host, then set proxmox.fingerprint",
    )


def _short(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:240]
