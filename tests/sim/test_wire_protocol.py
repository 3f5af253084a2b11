"""PVE's HTTP conventions: envelopes, reason phrases, auth failures, body parsing."""

from __future__ import annotations

from typing import Any

import proxmoxer
import pytest
import requests

from provision.sim.server import SimServer
from tests.support.sim_api import Raw, ticket_api


def test_success_is_wrapped_in_a_data_envelope(raw: Raw) -> None:
    response = raw("GET", "/version")
    assert response.status_code == 200
    assert response.json()["data"]["release"] == "9.2"


def test_unknown_method_is_501_with_the_method_in_the_reason(raw: Raw) -> None:
    response = raw("GET", "/nodes/pve/qemu/9000/clone")
    assert response.status_code == 501
    assert response.reason == "Method 'GET /nodes/pve/qemu/9000/clone' not implemented"


def test_parameter_errors_are_400_with_errors_and_message(raw: Raw) -> None:
    response = raw("POST", "/nodes/pve/qemu/9000/clone", data={"name": "x"})
    assert response.status_code == 400
    assert response.reason == "Parameter verification failed."
    assert response.json() == {
        "data": None,
        "errors": {"newid": "property is missing and it is not optional"},
        "message": "Parameter verification failed.\n",
    }


def test_handler_errors_are_500_with_the_message_as_reason_and_in_the_body(raw: Raw) -> None:
    response = raw("GET", "/nodes/pve/qemu/4242/config")
    message = "Configuration file 'nodes/pve/qemu-server/4242.conf' does not exist"
    assert (response.status_code, response.reason) == (500, message)
    assert response.json() == {"data": None, "message": message + "\n"}


def test_a_node_outside_the_cluster_is_a_500(raw: Raw) -> None:
    response = raw("GET", "/nodes/nowhere/qemu")
    assert response.status_code == 500
    assert response.reason == "unable to get remote IP address for node 'nowhere'"


def test_proxmoxer_sees_the_pve_message_in_its_exception(prox: Any) -> None:
    with pytest.raises(proxmoxer.ResourceException) as caught:
        prox.nodes("pve").qemu(4242).status.current.get()
    assert caught.value.status_code == 500
    assert caught.value.content == (
        "Configuration file 'nodes/pve/qemu-server/4242.conf' does not exist"
    )


def test_python_true_sent_by_proxmoxer_is_rejected_like_pve_does(prox: Any) -> None:
    with pytest.raises(proxmoxer.ResourceException) as caught:
        prox.nodes("pve").qemu(9000).clone.post(newid=777, full=True)
    assert caught.value.status_code == 400
    assert caught.value.errors == {"full": "type check ('boolean') failed - got 'True'"}


def test_a_json_body_may_use_real_booleans(raw: Raw, prox: Any) -> None:
    vmid = int(prox.cluster.nextid.get())
    response = raw("POST", "/nodes/pve/qemu/9000/clone", json={"newid": vmid, "full": False})
    assert response.status_code == 200
    assert response.json()["data"].startswith("UPID:pve:")


def test_query_parameters_are_merged_for_post_too(raw: Raw) -> None:
    response = raw("POST", "/nodes/pve/qemu/9000/clone?name=bad_name", data={"newid": "778"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"name"}


def test_missing_credentials_are_401_no_ticket_with_an_empty_body(sim: SimServer) -> None:
    response = Raw(sim, authenticated=False)("GET", "/nodes")
    assert (response.status_code, response.reason, response.content) == (401, "No ticket", b"")


def test_a_wrong_api_token_is_401_authentication_failed(sim: SimServer) -> None:
    raw = Raw(sim, authenticated=False)
    raw.session.headers["Authorization"] = "PVEAPIToken=root@pam!labctl=not-the-secret"
    response = raw("GET", "/nodes")
    assert (response.status_code, response.reason, response.content) == (
        401,
        "Authentication failed!",
        b"",
    )


def test_a_failed_login_is_401_with_a_json_body(sim: SimServer) -> None:
    response = Raw(sim, authenticated=False)(
        "POST", "/access/ticket", data={"username": "root@pam", "password": "wrong"}
    )
    assert response.status_code == 401
    assert response.json()["data"] is None


def test_proxmoxer_reports_a_failed_login_as_authentication_error(sim: SimServer) -> None:
    with pytest.raises(proxmoxer.AuthenticationError):
        proxmoxer.ProxmoxAPI(
            "127.0.0.1",
            port=sim.port,
            user="root@pam",
            password="wrong",
            verify_ssl=str(sim.cert_path),
        )


def test_ticket_login_works_and_a_ticket_renews_itself(sim: SimServer) -> None:
    api = ticket_api(sim)
    assert [n["node"] for n in api.nodes.get()] == ["pve", "pve2"]
    raw = Raw(sim, authenticated=False)
    first = raw(
        "POST",
        "/access/ticket",
        data={"username": "root@pam", "password": sim.credentials["password"]},
    )
    ticket = first.json()["data"]["ticket"]
    assert ticket.startswith("PVE:root@pam:")
    renewed = raw("POST", "/access/ticket", data={"username": "root@pam", "password": ticket})
    assert renewed.json()["data"]["username"] == "root@pam"


def test_writes_with_a_ticket_need_the_csrf_token(sim: SimServer) -> None:
    raw = Raw(sim, authenticated=False)
    login = raw(
        "POST",
        "/access/ticket",
        data={"username": "root@pam", "password": sim.credentials["password"]},
    )
    data = login.json()["data"]
    raw.session.cookies.set("PVEAuthCookie", data["ticket"])
    assert raw("GET", "/cluster/nextid").status_code == 200
    refused = raw("POST", "/nodes/pve/qemu/9000/status/stop")
    assert (refused.status_code, refused.reason) == (401, "Permission denied - invalid csrf token")
    raw.session.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]
    assert raw("POST", "/nodes/pve/qemu/9000/status/stop").status_code == 200


def test_the_certificate_is_pinned_by_its_sha256_fingerprint(sim: SimServer) -> None:
    assert len(sim.fingerprint.split(":")) == 32
    assert sim.fingerprint == sim.fingerprint.upper()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{sim.url}/api2/json/version", timeout=5)  # not trusted by default


def test_the_ticket_endpoint_refuses_api_tokens(raw: Raw) -> None:
    response = raw("POST", "/access/ticket", data={"username": "root@pam", "password": "x"})
    assert response.status_code == 403
    assert response.reason == (
        "URI '/access/ticket' not available with API token, need proper ticket."
    )
