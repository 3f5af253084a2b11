"""Connections as pveproxy keeps them: HTTP/1.1 keep-alive for up to 100 requests, closed after an
answer >= 400, on the client's `Connection: close`, after 5 s idle; chunked bodies refused."""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Iterator

import pytest
from requests.adapters import HTTPAdapter

from provision.sim import httpd
from provision.sim.server import SimServer
from tests.support.sim_api import Raw


@pytest.fixture
def conn(sim: SimServer) -> Iterator[http.client.HTTPSConnection]:
    context = ssl.create_default_context(cafile=str(sim.cert_path))
    connection = http.client.HTTPSConnection("127.0.0.1", sim.port, context=context, timeout=10)
    yield connection
    connection.close()


def _auth(sim: SimServer) -> dict[str, str]:
    creds = sim.credentials
    return {"Authorization": f"PVEAPIToken={creds['token_id']}={creds['token_secret']}"}


def _get(
    conn: http.client.HTTPSConnection, sim: SimServer, path: str, **headers: str
) -> http.client.HTTPResponse:
    conn.request("GET", "/api2/json" + path, headers={**_auth(sim), **headers})
    response = conn.getresponse()
    response.read()
    return response


def test_successful_answers_keep_one_connection_open(
    conn: http.client.HTTPSConnection, sim: SimServer
) -> None:
    first = _get(conn, sim, "/version")
    socket_after_first = conn.sock
    second = _get(conn, sim, "/nodes")
    assert (first.status, second.status) == (200, 200)
    assert first.getheader("Connection") == "Keep-Alive"
    assert socket_after_first is not None and conn.sock is socket_after_first
    assert first.getheader("Server") == "pve-api-daemon/3.0"


def test_an_error_answer_closes_the_connection(
    conn: http.client.HTTPSConnection, sim: SimServer
) -> None:
    response = _get(conn, sim, "/nodes/pve/qemu/4242/config")
    assert response.status == 500
    assert response.getheader("Connection") == "close"
    assert conn.sock is None  # http.client closed its side as the server asked


def test_the_client_asking_to_close_is_honoured(
    conn: http.client.HTTPSConnection, sim: SimServer
) -> None:
    response = _get(conn, sim, "/version", Connection="close")
    assert response.status == 200
    assert response.getheader("Connection") == "close"


def test_a_connection_serves_at_most_100_requests(
    conn: http.client.HTTPSConnection, sim: SimServer
) -> None:
    answers = [_get(conn, sim, "/version").getheader("Connection") for _ in range(100)]
    assert answers[:99] == ["Keep-Alive"] * 99
    assert answers[99] == "close"


def test_an_idle_connection_is_closed_by_the_server(
    conn: http.client.HTTPSConnection, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpd.PveRequestHandler, "timeout", 0.3)
    assert _get(conn, sim, "/version").status == 200
    assert conn.sock is not None
    conn.sock.settimeout(5)
    time.sleep(0.6)
    assert conn.sock.recv(1) == b""  # the server hung up


def test_a_chunked_request_body_is_refused_with_501(
    conn: http.client.HTTPSConnection, sim: SimServer
) -> None:
    conn.request(
        "POST",
        "/api2/json/nodes/pve/qemu/9000/clone",
        body=iter([b"newid=123"]),
        headers={**_auth(sim), "Content-Type": "application/x-www-form-urlencoded"},
        encode_chunked=True,
    )
    response = conn.getresponse()
    response.read()
    assert response.status == 501
    assert response.getheader("Connection") == "close"


def test_a_requests_session_makes_its_calls_over_one_connection(sim: SimServer) -> None:
    raw = Raw(sim)
    before = raw("GET", "/version")
    for _ in range(5):
        assert raw("GET", "/nodes").status_code == 200
    adapter = raw.session.get_adapter(raw.base)
    assert isinstance(adapter, HTTPAdapter)
    pool = adapter.poolmanager
    connections = sum(p.num_connections for p in pool.pools._container.values())
    assert before.status_code == 200
    assert connections == 1
