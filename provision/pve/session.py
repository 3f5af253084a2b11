"""How labctl reaches and authenticates to the PVE API through proxmoxer's https backend.

labctl brings its own requests session to proxmoxer, through the backend's `get_session()`:
- TLS: CA verification (`verify`, `ca_bundle`) or a SHA-256 pin of the server certificate
  (`fingerprint`), enforced by urllib3's `assert_fingerprint` on every connection of that session.
- Auth: an API token (proxmoxer's own token auth), or a ticket whose login goes through a pinned
  session too: proxmoxer's password auth posts the password with a bare `requests.post`, outside
  any session, where no pin would apply.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from proxmoxer.backends.https import Backend, ProxmoxHTTPApiTokenAuth, ProxmoxHTTPAuthBase
from proxmoxer.core import ProxmoxResource
from requests.adapters import HTTPAdapter
from requests.cookies import cookiejar_from_dict

from provision.config import LabConfig, Secret
from provision.errors import ConfigError, ProxmoxAPIError
from provision.pve.api_errors import transport_error


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
            raise ConfigError(
                "proxmox.host is not set", hint="run `labctl init` or edit labctl.toml"
            )
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


class PinnedAdapter(HTTPAdapter):
    """Pins the server certificate's SHA-256 on every connection of the session."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        # One TLS context for every connection, without the system's CA store: urllib3 would
        # build a context and load that store (~25 ms of CPU) for each new connection, and
        # pveproxy closes a connection after every answer >= 400. CA checks add nothing here:
        # the certificate's SHA-256 is what is trusted, and urllib3 asserts it after every
        # handshake. (create_default_context() is this context plus the CA store.)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["assert_fingerprint"] = self._fingerprint
        pool_kwargs["ssl_context"] = self._context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def pinned(session: requests.Session, pin: str) -> requests.Session:
    """The session with the pin on its https connections (as it is without a pin)."""
    if pin:
        session.mount("https://", PinnedAdapter(pin))
    return session


class TicketAuth(ProxmoxHTTPAuthBase):
    """Ticket (user + password) auth whose login goes through labctl's pinned session."""

    renew_age_s = 3600.0

    def __init__(
        self,
        login_session: requests.Session,
        base_url: str,
        username: str,
        password: Secret,
        *,
        timeout: float,
        verify: bool | str,
    ) -> None:
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
                self._url,
                data={"username": self._username, "password": password},
                timeout=self.timeout,
                verify=self.verify_ssl,
            )
        except requests.exceptions.RequestException as error:
            raise transport_error(error, self._url) from error
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


class LabctlBackend(Backend):
    """proxmoxer's https backend with labctl's auth, its session pinned to the certificate.

    Backend.__init__ is not run: it makes the auth from the credentials itself, and for a
    password logs in at once, unpinned. This sets what the backend's own methods read instead
    (base_url, mode, auth, cert, proxies); get_session() is proxmoxer's session (its headers,
    auth, keep-alive) with labctl's pin mounted on it.
    """

    def __init__(self, base_url: str, auth: ProxmoxHTTPAuthBase, pin: str) -> None:
        self.base_url = base_url
        self.mode = "json"
        self.auth = auth
        self.cert = None
        self.proxies = None
        self.pin = pin

    def get_session(self) -> requests.Session:
        return pinned(super().get_session(), self.pin)


def open_api(settings: ClientSettings, pin: str) -> Any:
    """The API's root resource (proxmoxer's ProxmoxResource), built from labctl's backend the
    way ProxmoxAPI builds it from a backend it names."""
    backend = LabctlBackend(settings.base_url, _auth(settings, pin), pin)
    return ProxmoxResource(
        base_url=backend.get_base_url(),
        session=backend.get_session(),
        serializer=backend.get_serializer(),
    )


def verify_setting(settings: ClientSettings, pin: str) -> bool | str:
    """requests' `verify`: off under a pin (it replaces CA checks of PVE's self-signed
    certificates), else the CA bundle, else proxmox.verify."""
    if pin:
        return False
    if settings.ca_bundle:
        return settings.ca_bundle
    return settings.verify


def _auth(settings: ClientSettings, pin: str) -> ProxmoxHTTPAuthBase:
    if settings.token_id:
        return _token_auth(settings, pin)
    if settings.user:
        if not settings.password:
            raise ConfigError(
                "proxmox.password is empty",
                hint="set LABCTL_PROXMOX_PASSWORD, password_cmd or password",
            )
        login = pinned(requests.Session(), pin)
        return TicketAuth(
            login,
            settings.base_url,
            settings.user,
            settings.password,
            timeout=settings.timeout,
            verify=verify_setting(settings, pin),
        )
    raise ConfigError(
        "no Proxmox credentials: set proxmox.token_id (+ secret) or proxmox.user (+ password)"
    )


def _token_auth(settings: ClientSettings, pin: str) -> ProxmoxHTTPAuthBase:
    user, sep, name = settings.token_id.partition("!")
    if not sep or "@" not in user or not name:
        raise ConfigError(
            f"proxmox.token_id {settings.token_id!r} is not USER@REALM!TOKENNAME",
            hint="e.g. root@pam!labctl",
        )
    if not settings.token_secret:
        raise ConfigError(
            "proxmox.token_secret is empty",
            hint="set LABCTL_PROXMOX_TOKEN_SECRET, token_secret_cmd or token_secret",
        )
    return ProxmoxHTTPApiTokenAuth(
        user,
        name,
        settings.token_secret.reveal(),
        verify_ssl=verify_setting(settings, pin),
        timeout=settings.timeout,
        service="PVE",
    )
