"""The Proxmox VE API client: the door every other module uses to talk to PVE.

proxmoxer is imported only here and in the modules split off beside it: session (how labctl
reaches and authenticates to PVE: TLS pin, ticket login, proxmoxer's backend), api_errors (what
goes wrong, as one-line errors), fingerprint and redaction. What this module adds on top:
- Parameters: booleans sent as 1/0 (PVE refuses `True`), None dropped.
- Retries: GETs on transient failures (5xx, 595/596, connection reset) with backoff; POST/PUT/DELETE
  only when the connection could not even be opened (nothing reached the server). A 500 saying
  the VM's config file does not exist is PVE's answer, not a blip, and is not retried.
- Counting: every HTTP request, task-status polls apart, for `bench/up_floor.py`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from proxmoxer.core import ResourceException

from provision.config import LabConfig
from provision.errors import ProxmoxError
from provision.pve.api_errors import api_error, nothing_sent, tls_error, transport_error
from provision.pve.fingerprint import format_fingerprint, normalize_fingerprint
from provision.pve.redaction import RedactingFilter, register_secrets
from provision.pve.session import ClientSettings, open_api

# Callers import these from the client, the package's one door.
__all__ = [
    "ClientSettings",
    "PveClient",
    "RedactingFilter",
    "RequestStats",
    "encode_params",
    "format_fingerprint",
    "normalize_fingerprint",
]

log = logging.getLogger("labctl.pve")

# Retried for GETs: pveproxy's 5xx and AnyEvent's 595 (connect) / 596 (TLS, request sending).
TRANSIENT_STATUS = frozenset({500, 502, 503, 504, 595, 596})
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)
# A VM that is not there: load_config dies with this and pveproxy answers 500 (pve-guest-common
# src/PVE/AbstractConfig.pm:50-61, pve-api.md). Retrying cannot change the answer; it only cost
# 3.7 s per VM where labctl reads a VM it has just destroyed (the lease's release).
_NO_SUCH_VM_RE = re.compile(r"^Configuration file '[^']*' does not exist")


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


class PveClient:
    """A thin, typed door to the PVE API; paths are relative to /api2/json ('cluster/nextid')."""

    def __init__(
        self, settings: ClientSettings, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.settings = settings
        self.stats = RequestStats()
        self._sleep = sleep
        self._pin = normalize_fingerprint(settings.fingerprint) if settings.fingerprint else ""
        self._who = settings.token_id or settings.user
        register_secrets(settings.secrets())
        self._api = open_api(settings, self._pin)

    @classmethod
    def from_config(cls, config: LabConfig) -> PveClient:
        return cls(ClientSettings.from_config(config))

    def get(self, path: str, *, poll: bool = False, retry: bool = True, **params: Any) -> Any:
        return self.request("GET", path, params, poll=poll, retry=retry)

    def post(self, path: str, **data: Any) -> Any:
        return self.request("POST", path, data)

    def put(self, path: str, **data: Any) -> Any:
        return self.request("PUT", path, data)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params)

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        poll: bool = False,
        retry: bool = True,
    ) -> Any:
        """One API call; GETs retried on transient failures, others only if nothing was sent."""
        values = encode_params(params or {})
        call = getattr(self._api(path.strip("/")), method.lower())
        delays = iter(RETRY_DELAYS_S if retry else ())
        while True:
            self.stats.count(poll)
            log.debug("%s /%s %s", method, path.strip("/"), sorted(values))
            try:
                return call(**values)
            except ResourceException as error:
                why = f"HTTP {error.status_code}"
                if (
                    method == "GET"
                    and is_transient(error)
                    and self._retried(method, path, why, delays)
                ):
                    continue
                raise api_error(method, path, error, params=values, who=self._who) from error
            except requests.exceptions.SSLError as error:
                raise self._tls_error(error) from error
            except requests.exceptions.RequestException as error:
                why = type(error).__name__
                if (method == "GET" or nothing_sent(error)) and self._retried(
                    method, path, why, delays
                ):
                    continue
                raise transport_error(error, self.settings.base_url) from error

    def _retried(self, method: str, path: str, why: str, delays: Iterator[float]) -> bool:
        """Sleep before the next try and say so; False once the delays are used up."""
        delay = next(delays, None)
        if delay is None:
            return False
        self.stats.retries += 1
        log.info("retrying %s /%s after %s in %.1fs", method, path.strip("/"), why, delay)
        self._sleep(delay)
        return True

    def _tls_error(self, error: requests.exceptions.SSLError) -> ProxmoxError:
        return tls_error(error, self.settings.host, self.settings.port, pinned=bool(self._pin))


def is_transient(error: ResourceException) -> bool:
    """Worth asking again: a 5xx or 595/596 that is not PVE saying the VM does not exist."""
    if error.status_code not in TRANSIENT_STATUS:
        return False
    message = str(error.content or error.status_message or "").strip()
    return not _NO_SUCH_VM_RE.match(message)


def encode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """PVE wants booleans as 1/0 (a form-encoded True is refused); None means 'not sent'."""
    encoded: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        encoded[key] = int(value) if isinstance(value, bool) else value
    return encoded
