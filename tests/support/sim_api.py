"""The simulator seen from outside: real proxmoxer (token or ticket), raw HTTPS requests, task
waits and temporary settings (tests/sim). Timings are shortened so the suite stays fast; the clone
lasts long enough to be observed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.tools import Tasks

from provision.sim.server import SimServer

FAST: dict[str, Any] = {
    "agent_delay": 0.3,
    "agent_timeout": 0.05,
    "auth_failure_delay": 0.0,
    "default_task_duration": 0.05,
    "task_durations": {
        "qmclone": 0.4,
        "qmconfig": 0.05,
        "qmstart": 0.1,
        "qmstop": 0.05,
        "qmshutdown": 0.05,
        "qmreboot": 0.1,
        "qmdestroy": 0.05,
        "resize": 0.05,
    },
}


def token_api(server: SimServer, timeout: float = 5.0) -> Any:
    """proxmoxer on the simulator's root API token, its certificate verified."""
    creds = server.credentials
    user, token = creds["token_id"].split("!")
    return ProxmoxAPI(
        "127.0.0.1",
        port=server.port,
        user=user,
        token_name=token,
        token_value=creds["token_secret"],
        verify_ssl=str(server.cert_path),
        timeout=timeout,
    )


def ticket_api(server: SimServer) -> Any:
    creds = server.credentials
    return ProxmoxAPI(
        "127.0.0.1",
        port=server.port,
        user=creds["user"],
        password=creds["password"],
        verify_ssl=str(server.cert_path),
    )


class Raw:
    """requests against the simulator, for checking wire shapes proxmoxer hides."""

    def __init__(self, server: SimServer, authenticated: bool = True) -> None:
        self.base = f"{server.url}/api2/json"
        self.root = server.url
        self.session = requests.Session()
        self.verify = str(server.cert_path)
        if authenticated:
            creds = server.credentials
            self.session.headers["Authorization"] = (
                f"PVEAPIToken={creds['token_id']}={creds['token_secret']}"
            )

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.root + path if path.startswith("/_sim") else self.base + path
        # verify per request: a session-level value loses against REQUESTS_CA_BUNDLE
        return self.session.request(method, url, timeout=10, verify=self.verify, **kwargs)


@contextlib.contextmanager
def changed_settings(raw: Raw, **changes: Any) -> Iterator[None]:
    """Change simulator settings for one block, e.g. to make a clone last long enough to observe
    its lock even on a loaded machine, then restore them."""
    before = raw("GET", "/_sim/settings").json()["data"]
    assert raw("POST", "/_sim/settings", json=changes).status_code == 200
    try:
        yield
    finally:
        raw("POST", "/_sim/settings", json={k: before[k] for k in changes})


def wait(prox: Any, upid: str) -> dict[str, Any]:
    """Block until the task stops; returns its status (exitstatus included)."""
    status = Tasks.blocking_status(prox, upid, timeout=20, polling_interval=0.05)
    assert status is not None, f"task {upid} did not finish"
    result: dict[str, Any] = status
    return result
