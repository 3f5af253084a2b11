"""labctl's session reaches proxmoxer through its https backend's get_session(): every API
request and the ticket login go through the pinned adapter, with proxmoxer's own auth objects
doing what they do (token header, ticket cookie, CSRF token)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import requests
from proxmoxer.backends.https import ProxmoxHTTPAuthBase

from provision.config import Secret
from provision.pve.client import ClientSettings, PveClient
from provision.pve.session import LabctlBackend, PinnedAdapter

PIN = "ab" * 32
BASE = "https://127.0.0.1:8006/api2/json"


class Sent:
    """What reached the pinned adapter, answered from `replies` by path."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.requests: list[tuple[str, requests.PreparedRequest]] = []

    def send(
        self, adapter: PinnedAdapter, request: requests.PreparedRequest, **_kwargs: Any
    ) -> requests.Response:
        self.requests.append((adapter._fingerprint, request))
        path = str(request.url).removeprefix(BASE).split("?")[0]
        response = requests.Response()
        response.status_code = 200
        response.reason = "OK"
        response.url = str(request.url)
        response.request = request
        response.raw = io.BytesIO(json.dumps({"data": self.replies[path]}).encode())
        return response


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    recorder = Sent(
        {
            "/version": {"version": "9.0"},
            "/nodes/pve/qemu/100/status/start": "UPID",
            "/access/ticket": {"ticket": "PVE:u@pve:T1", "CSRFPreventionToken": "C1"},
        }
    )
    monkeypatch.setattr(
        PinnedAdapter, "send", lambda self, request, **kw: recorder.send(self, request, **kw)
    )
    return recorder


def settings(**values: Any) -> ClientSettings:
    return ClientSettings(host="127.0.0.1", fingerprint=PIN, **values)


def test_token_requests_go_through_the_pinned_session_with_proxmoxers_token_header(
    sent: Sent,
) -> None:
    client = PveClient(settings(token_id="root@pam!labctl", token_secret=Secret("s3cr3t-v")))
    assert client.get("version") == {"version": "9.0"}
    [(pin, request)] = sent.requests
    assert pin == PIN and request.url == f"{BASE}/version"
    assert request.headers["Authorization"] == "PVEAPIToken=root@pam!labctl=s3cr3t-v"


def test_ticket_login_and_requests_go_through_the_pin_with_cookie_and_csrf(sent: Sent) -> None:
    client = PveClient(settings(user="u@pve", password=Secret("pw-1234")))
    assert client.post("nodes/pve/qemu/100/status/start") == "UPID"
    (login_pin, login), (call_pin, call) = sent.requests
    assert login_pin == call_pin == PIN
    assert login.url == f"{BASE}/access/ticket" and login.method == "POST"
    assert call.headers["Cookie"] == "PVEAuthCookie=PVE:u@pve:T1"
    assert call.headers["CSRFPreventionToken"] == "C1"


def test_backend_session_carries_our_auth_and_the_pin_only_when_one_is_set() -> None:
    auth = ProxmoxHTTPAuthBase()
    pinned = LabctlBackend(BASE, auth, PIN).get_session()
    plain = LabctlBackend(BASE, auth, "").get_session()
    assert pinned.auth is auth and plain.auth is auth
    assert isinstance(pinned.get_adapter(f"{BASE}/version"), PinnedAdapter)
    assert not isinstance(plain.get_adapter(f"{BASE}/version"), PinnedAdapter)
    assert "application/json" in pinned.headers["accept"]
    assert LabctlBackend(BASE, auth, PIN).get_base_url() == BASE
