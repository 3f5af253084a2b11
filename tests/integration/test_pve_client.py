"""PveClient over real HTTPS against the simulator: pinning, retries, errors, request counts."""

from __future__ import annotations

import pytest

from provision.config import Secret
from provision.errors import ProxmoxAPIError, TLSVerifyError
from provision.sim.server import SimServer
from tests.support.lab import Lab
from tests.support.pve import client_for


def test_pinned_client_reads_and_counts_requests(api_sim: SimServer) -> None:
    client = client_for(api_sim)
    assert int(client.get("cluster/nextid")) >= 100
    client.get("nodes", poll=True)
    assert client.stats.as_dict() == {"calls": 1, "polls": 1, "retries": 0}


def test_ca_bundle_verification_works_too(api_sim: SimServer) -> None:
    client = client_for(api_sim, fingerprint="", ca_bundle=str(api_sim.cert_path))
    assert client.get("version")


def test_pin_mismatch_is_a_tls_error(api_sim: SimServer) -> None:
    client = client_for(api_sim, fingerprint="00" * 32)
    with pytest.raises(TLSVerifyError, match="expected SHA-256 00:00"):
        client.get("version")


def test_get_is_retried_on_transient_errors(api_lab: Lab, api_sim: SimServer) -> None:
    api_lab.fault(kind="http", status=503, message="busy", times=2, method="GET", path="^/version")
    client = client_for(api_sim)
    assert client.get("version")
    assert client.stats.retries == 2


def test_a_vm_that_does_not_exist_is_not_retried(api_sim: SimServer) -> None:
    # PVE's 500 "Configuration file ... does not exist" is an answer, not a blip: the lease's
    # release after a destroy used to spend 3.7 s of retries on it per VM
    client = client_for(api_sim)
    with pytest.raises(ProxmoxAPIError, match="does not exist") as caught:
        client.get("nodes/pve/qemu/4242/config")
    assert caught.value.status == 500 and client.stats.retries == 0


def test_post_is_not_blindly_retried(api_lab: Lab, api_sim: SimServer) -> None:
    api_lab.fault(
        kind="http", status=500, message="proxy error", times=1, method="POST", path="status/start"
    )
    client = client_for(api_sim)
    with pytest.raises(ProxmoxAPIError, match="proxy error") as caught:
        client.post("nodes/pve/qemu/9000/status/start")
    assert caught.value.status == 500 and client.stats.retries == 0


def test_parameter_errors_carry_pves_errors_dict(api_sim: SimServer) -> None:
    client = client_for(api_sim)
    with pytest.raises(ProxmoxAPIError) as caught:
        client.post("nodes/pve/qemu/9000/clone", newid=101, name="web_01")
    assert caught.value.status == 400
    assert "name" in caught.value.errors and "DNS name" in caught.value.errors["name"]


def test_ticket_login_goes_through_the_pin(api_sim: SimServer) -> None:
    creds = api_sim.credentials
    good = client_for(
        api_sim,
        token_id="",
        token_secret=Secret(""),
        user=creds["user"],
        password=Secret(creds["password"]),
    )
    assert good.get("version")
    with pytest.raises(TLSVerifyError):
        client_for(
            api_sim,
            token_id="",
            token_secret=Secret(""),
            user=creds["user"],
            password=Secret(creds["password"]),
            fingerprint="11" * 32,
        )
    with pytest.raises(ProxmoxAPIError, match="refused the login"):
        client_for(
            api_sim,
            token_id="",
            token_secret=Secret(""),
            user=creds["user"],
            password=Secret("wrong"),
        )
