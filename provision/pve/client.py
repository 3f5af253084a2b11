"""The Proxmox VE API client: the only module that imports proxmoxer (and talks HTTP to PVE).

What it adds on top of proxmoxer's https backend:
- TLS: CA verification (`verify`, `ca_bundle`) or a SHA-256 pin of the server certificate
  (`fingerprint`), enforced by urllib3's `assert_fingerprint` on the very session proxmoxer uses.
  Ticket logins go through the same pinned session: proxmoxer itself posts the password with a
  bare `requests.post`, outside its session, where no pin would apply.
- Parameters: booleans sent as 1/0 (PVE refuses `True`), None dropped.
- Errors: proxmoxer's ResourceException -> ProxmoxAPIError carrying PVE's message (the HTTP reason
  phrase) and the per-parameter `errors`; a 403 names who lacks which privilege on which ACL
  path; TLS and connection failures -> one-line errors.
- Retries: GETs on transient failures (5xx, 595/596, connection reset) with backoff; POST/PUT/DELETE
  only when the connection could not even be opened (nothing reached the server).
- Counting: every HTTP request, task-status polls apart, for `bench/up_floor.py`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from proxmoxer import ProxmoxAPI
from proxmoxer.backends.https import ProxmoxHTTPAuthBase
from proxmoxer.core import ResourceException
from requests.adapters import HTTPAdapter
from requests.cookies import cookiejar_from_dict

from provision.config import LabConfig, Secret
from provision.errors import ConfigError, ProxmoxAPIError, ProxmoxError, TLSVerifyError

log = logging.getLogger("labctl.pve")

# Retried for GETs: pveproxy's 5xx and AnyEvent's 595 (connect) / 596 (TLS, request sending).
TRANSIENT_STATUS = frozenset({500, 502, 503, 504, 595, 596})
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
# raise_perm_exc("$path, $priv") / ("$path, a|b") (pve-common src/PVE/Exception.pm:53-70,
# pve-access-control src/PVE/RPCEnvironment.pm:300,325)
_PERMISSION_RE = re.compile(r"^Permission check failed \((?P<path>/[^,]*), (?P<privs>.+)\)$")
# PVE's ['or', ...] permission checks fail with a bare "Permission check failed": what they want.
_UNNAMED_PRIVILEGE = {
    # clone: VM.Allocate on /vms/{newid} or on /pool/{pool} (qemu-server Qemu.pm:4343-4346)
    ("POST", "clone"): ("VM.Allocate", "/vms/{newid}"),
}
ROLE_HINT = 'labctl\'s role and ACL paths: README "A lab against a real Proxmox VE"'


@dataclass
class RequestStats:
    """HTTP requests made, with task/agent polls counted apart (the benchmark reports both)."""

    calls: int = 0
    polls: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, poll: bool) -> None:
        with self._lock:
            if poll:
                self.polls += 1
            else:
                self.calls += 1

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "polls": self.polls, "retries": self.retries}


@dataclass(frozen=True)
class ClientSettings:
    """How to reach and authenticate to the PVE API (from the [proxmox] table)."""

    host: str
    port: int = 8006
    token_id: str = ""
    token_secret: Secret = field(default_factory=lambda: Secret(""))
    user: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    verify: bool = True
    ca_bundle: str = ""
    fingerprint: str = ""
    timeout: float = 30.0

    @classmethod
    def from_config(cls, config: LabConfig) -> ClientSettings:
        host = str(config.get("proxmox.host")).strip()
        if not host:
            raise ConfigError("proxmox.host is not set",
                              hint="run `labctl init` or edit labctl.toml")
        return cls(
            host=host,
            port=int(config.get("proxmox.port")),
            token_id=str(config.get("proxmox.token_id")).strip(),
            token_secret=config.secret("proxmox.token_secret"),
            user=str(config.get("proxmox.user")).strip(),
            password=config.secret("proxmox.password"),
            verify=bool(config.get("proxmox.verify")),
            ca_bundle=str(config.get("proxmox.ca_bundle")).strip(),
            fingerprint=str(config.get("proxmox.fingerprint")).strip(),
            timeout=float(config.get("proxmox.timeout")),
        )

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"https://{host}:{self.port}/api2/json"

    def secrets(self) -> list[str]:
        return [s.reveal() for s in (self.token_secret, self.password) if s]


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
    return ":".join(upper[i:i + 2] for i in range(0, len(upper), 2))


def server_fingerprint(host: str, port: int, timeout: float = 10.0) -> str:
    """The SHA-256 fingerprint of the certificate the server presents (no verification)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (socket.create_connection((host, port), timeout=timeout) as raw,
          context.wrap_socket(raw, server_hostname=host) as tls):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise ProxmoxError(f"{host}:{port} presented no TLS certificate")
    return format_fingerprint(hashlib.sha256(der).hexdigest())


class _TlsAdapter(HTTPAdapter):
    """Pins the server certificate's SHA-256 on every connection of the session."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        super().__init__()

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False,
                         **pool_kwargs: Any) -> None:
        pool_kwargs["assert_fingerprint"] = self._fingerprint
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


class _TicketAuth(ProxmoxHTTPAuthBase):
    """Ticket (user + password) auth whose login goes through labctl's pinned session."""

    renew_age_s = 3600.0

    def __init__(self, login_session: requests.Session, base_url: str, username: str,
                 password: Secret, *, timeout: float, verify: bool | str) -> None:
        super().__init__(timeout=timeout, service="PVE", verify_ssl=verify)
        self._session = login_session
        self._url = base_url + "/access/ticket"
        self._username = username
        self._ticket = ""
        self._csrf = ""
        self._birth = 0.0
        self._login(password.reveal())

    def _login(self, password: str) -> None:
        try:
            response = self._session.post(
                self._url, data={"username": self._username, "password": password},
                timeout=self.timeout, verify=self.verify_ssl,
            )
        except requests.exceptions.RequestException as error:
            raise _transport_error(error, self._url) from error
        if response.status_code != 200:
            raise ProxmoxAPIError(
                f"Proxmox refused the login of {self._username}: "
                f"{response.reason or response.status_code}",
                status=response.status_code,
                hint="check proxmox.user and the password",
            )
        data = response.json().get("data") or {}
        if data.get("NeedTFA"):
            raise ProxmoxAPIError(
                f"user {self._username} needs two-factor authentication",
                hint="use an API token (proxmox.token_id / token_secret) instead",
            )
        self._ticket = data["ticket"]
        self._csrf = data["CSRFPreventionToken"]
        self._birth = time.monotonic()

    def get_cookies(self) -> Any:
        return cookiejar_from_dict({"PVEAuthCookie": self._ticket})

    def get_tokens(self) -> tuple[str, str]:
        return self._ticket, self._csrf

    def __call__(self, request: Any) -> Any:
        if time.monotonic() - self._birth >= self.renew_age_s:
            self._login(self._ticket)  # PVE renews a still-valid ticket posted as the password
        if request.method != "GET":
            request.headers["CSRFPreventionToken"] = self._csrf
        return request


class PveClient:
    """A thin, typed door to the PVE API; paths are relative to /api2/json ('cluster/nextid')."""

    def __init__(self, settings: ClientSettings, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.stats = RequestStats()
        self._sleep = sleep
        self._pin = normalize_fingerprint(settings.fingerprint) if settings.fingerprint else ""
        self._who = settings.token_id or settings.user
        register_secrets(settings.secrets())
        self._api = self._connect()

    @classmethod
    def from_config(cls, config: LabConfig) -> PveClient:
        return cls(ClientSettings.from_config(config))

    # -- connection ------------------------------------------------------------------------

    def _verify(self) -> bool | str:
        if self._pin:
            return False  # the pin replaces CA verification (PVE's certificates are self-signed)
        if self.settings.ca_bundle:
            return self.settings.ca_bundle
        return self.settings.verify

    def _new_session(self, session: requests.Session) -> requests.Session:
        if self._pin:
            session.mount("https://", _TlsAdapter(self._pin))
        return session

    def _connect(self) -> Any:
        s = self.settings
        common: dict[str, Any] = {"port": s.port, "verify_ssl": self._verify(),
                                  "timeout": s.timeout}
        if s.token_id:
            user, sep, name = s.token_id.partition("!")
            if not sep or "@" not in user or not name:
                raise ConfigError(
                    f"proxmox.token_id {s.token_id!r} is not USER@REALM!TOKENNAME",
                    hint="e.g. root@pam!labctl",
                )
            if not s.token_secret:
                raise ConfigError(
                    "proxmox.token_secret is empty",
                    hint="set LABCTL_PROXMOX_TOKEN_SECRET, token_secret_cmd or token_secret",
                )
            api = ProxmoxAPI(s.host, user=user, token_name=name,
                             token_value=s.token_secret.reveal(), **common)
            self._new_session(api._store["session"])
            return api
        if s.user:
            if not s.password:
                raise ConfigError(
                    "proxmox.password is empty",
                    hint="set LABCTL_PROXMOX_PASSWORD, password_cmd or password",
                )
            # Placeholder token auth only to build proxmoxer's session without it logging in
            # by itself (unpinned); the real auth object is swapped in right below.
            api = ProxmoxAPI(s.host, user=s.user, token_name="-", token_value="-", **common)
            session = self._new_session(api._store["session"])
            login = self._new_session(requests.Session())
            session.auth = _TicketAuth(login, s.base_url, s.user, s.password,
                                       timeout=s.timeout, verify=self._verify())
            return api
        raise ConfigError(
            "no Proxmox credentials: set proxmox.token_id (+ secret) or proxmox.user (+ password)"
        )

    # -- requests --------------------------------------------------------------------------

    def get(self, path: str, *, poll: bool = False, retry: bool = True, **params: Any) -> Any:
        return self.request("GET", path, params, poll=poll, retry=retry)

    def post(self, path: str, **data: Any) -> Any:
        return self.request("POST", path, data)

    def put(self, path: str, **data: Any) -> Any:
        return self.request("PUT", path, data)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params)

    def request(self, method: str, path: str, params: Mapping[str, Any] | None = None, *,
                poll: bool = False, retry: bool = True) -> Any:
        """One API call; GETs retried on transient failures, others only if nothing was sent."""
        values = encode_params(params or {})
        resource = self._api(path.strip("/"))
        call = getattr(resource, method.lower())
        delays = iter(RETRY_DELAYS_S if retry else ())
        while True:
            self.stats.count(poll)
            log.debug("%s /%s %s", method, path.strip("/"), sorted(values))
            try:
                return call(**values)
            except ResourceException as error:
                if method == "GET" and error.status_code in TRANSIENT_STATUS:
                    delay = next(delays, None)
                    if delay is not None:
                        self._note_retry(method, path, f"HTTP {error.status_code}", delay)
                        continue
                raise api_error(method, path, error, params=values, who=self._who) from error
            except requests.exceptions.SSLError as error:
                raise self._tls_error(error) from error
            except requests.exceptions.RequestException as error:
                if method == "GET" or _nothing_sent(error):
                    delay = next(delays, None)
                    if delay is not None:
                        self._note_retry(method, path, type(error).__name__, delay)
                        continue
                raise _transport_error(error, self.settings.base_url) from error

    def _note_retry(self, method: str, path: str, why: str, delay: float) -> None:
        self.stats.retries += 1
        log.info("retrying %s /%s after %s in %.1fs", method, path.strip("/"), why, delay)
        self._sleep(delay)

    def _tls_error(self, error: requests.exceptions.SSLError) -> TLSVerifyError:
        text = str(error)
        where = f"{self.settings.host}:{self.settings.port}"
        match = re.search(r'Fingerprints did not match\. Expected "([0-9a-f]+)", got "([0-9a-f]+)"',
                          text)
        if match:
            expected, got = (format_fingerprint(x) for x in match.groups())
            return TLSVerifyError(
                f"TLS pin mismatch for {where}: expected SHA-256 {expected}, server presented {got}"
            )
        if self._pin:
            return TLSVerifyError(f"TLS failure talking to {where}: {_short(text)}")
        try:
            seen = server_fingerprint(self.settings.host, self.settings.port)
        except (OSError, ProxmoxError):
            seen = "unknown"
        return TLSVerifyError(
            f"cannot verify the TLS certificate of {where} (self-signed?); its SHA-256 is {seen}",
            hint="compare with `pvenode cert info` on the host, then set proxmox.fingerprint",
        )


def encode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """PVE wants booleans as 1/0 (a form-encoded True is refused); None means 'not sent'."""
    encoded: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        encoded[key] = int(value) if isinstance(value, bool) else value
    return encoded


def api_error(method: str, path: str, error: ResourceException, *,
              params: Mapping[str, Any] | None = None, who: str = "") -> ProxmoxAPIError:
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
    return ProxmoxAPIError(f"Proxmox: {message} [{where}, HTTP {status}]", status=status,
                           errors=errors, hint=hint)


def _permission_message(method: str, path: str, message: str, params: Mapping[str, Any],
                        who: str) -> str:
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


def _nothing_sent(error: requests.exceptions.RequestException) -> bool:
    """True when the TCP connection itself failed, so the request never reached PVE."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    reason = error.args[0] if error.args else None
    inner = getattr(reason, "reason", None)
    return isinstance(inner, urllib3.exceptions.NewConnectionError) or isinstance(
        reason, urllib3.exceptions.NewConnectionError)


def _transport_error(error: requests.exceptions.RequestException, url: str) -> ProxmoxError:
    if isinstance(error, requests.exceptions.SSLError):
        return TLSVerifyError(f"TLS failure talking to {url}: {_short(str(error))}")
    if isinstance(error, requests.exceptions.Timeout):
        return ProxmoxError(f"Proxmox API at {url} did not answer in time",
                            hint="raise proxmox.timeout or check the host")
    return ProxmoxError(f"cannot reach the Proxmox API at {url}: {_short(str(error))}",
                        hint="check proxmox.host / proxmox.port and that pveproxy runs")


def _short(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:240]


# -- secrets never reach a log line ------------------------------------------------------------

_SECRETS: set[str] = set()
_SECRET_HEADER_RE = re.compile(r"(PVEAPIToken[= ]\S+?=)[^\s'\",;]+|(PVEAuthCookie=)[^\s'\",;]+")


def register_secrets(values: Iterable[str]) -> None:
    _SECRETS.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "********")
    return _SECRET_HEADER_RE.sub(lambda m: (m.group(1) or m.group(2)) + "********", text)


class RedactingFilter(logging.Filter):
    """Attach to every log handler labctl installs: rewrites any record holding a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
