"""Privileges of API tokens with privilege separation: PVE's 403s, its filtered listings and the
checks it makes inside handlers and tasks, through real proxmoxer and raw HTTPS.

Each test builds its own users, tokens, roles and ACLs through `POST /_sim/access`, the
simulator's stand-in for `pveum role add` / `user add` / `user token add` / `acl modify`.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import proxmoxer
import pytest
import requests
from proxmoxer import ProxmoxAPI

from provision.sim.access import PVE_PRIVILEGES
from provision.sim.guests.null import NoGuestBackend
from provision.sim.permissions import ENDPOINT_CHECKS
from provision.sim.server import SimServer
from provision.sim.urls import ROUTES
from tests.support.sim_api import FAST, Raw, token_api, wait

TOKEN = "labctl@pve!labctl"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"


class KeyBackend(NoGuestBackend):
    """Every guest has an SSH host key the agent can read."""

    def file_read(self, vmid: int, path: str) -> bytes:
        if path == HOST_KEY:
            return f"ssh-ed25519 AAAAC3Nz vm{vmid}\n".encode()
        raise FileNotFoundError(path)


class Token:
    """A user's API token: proxmoxer and raw requests authenticated with it."""

    def __init__(self, server: SimServer, token_id: str, secret: str) -> None:
        user, name = token_id.split("!")
        self.api = ProxmoxAPI(
            "127.0.0.1",
            port=server.port,
            user=user,
            token_name=name,
            token_value=secret,
            verify_ssl=str(server.cert_path),
        )
        self.raw = Raw(server, authenticated=False)
        self.raw.session.headers["Authorization"] = f"PVEAPIToken={token_id}={secret}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    settings = FAST | {"agent_delay": 0.0}
    with SimServer(tmp_path_factory.mktemp("perm-sim"), backend=KeyBackend(), **settings) as sim:
        yield sim


@pytest.fixture(scope="module")
def root(server: SimServer) -> Any:
    return token_api(server)


@pytest.fixture(scope="module")
def root_raw(server: SimServer) -> Raw:
    return Raw(server)


@pytest.fixture(scope="module")
def vmid(root: Any) -> int:
    """A running clone of the template, made by root."""
    newid = int(root.cluster.nextid.get())
    wait(root, root.nodes("pve").qemu(9000).clone.post(newid=newid))
    wait(root, root.nodes("pve").qemu(newid).status.start.post())
    return newid


def grant(
    server: SimServer,
    privs: str,
    *,
    user_privs: str | None = None,
    privsep: int = 1,
    acl: list[dict[str, Any]] | None = None,
) -> Token:
    """labctl@pve with role UserRole on /, its token with TokenRole on / (or `acl`)."""
    spec = {
        "roles": {"TokenRole": privs, "UserRole": privs if user_privs is None else user_privs},
        "users": ["labctl@pve"],
        "tokens": {TOKEN: {"privsep": privsep}},
        "acl": acl
        if acl is not None
        else [
            {"path": "/", "roles": "UserRole", "users": "labctl@pve"},
            {"path": "/", "roles": "TokenRole", "tokens": TOKEN},
        ],
    }
    answer = Raw(server)("POST", "/_sim/access", json=spec)
    assert answer.status_code == 200, answer.text
    return Token(server, TOKEN, answer.json()["data"]["tokens"][TOKEN]["value"])


@pytest.fixture(autouse=True)
def _no_leftover_access(server: SimServer) -> Iterator[None]:
    yield
    Raw(server)("DELETE", "/_sim/access")


def refused(response: requests.Response, what: str) -> None:
    """PVE's 403: the text in the reason phrase (proxmoxer's only source) and in `message`."""
    text = f"Permission check failed ({what})" if what else "Permission check failed"
    assert (response.status_code, response.reason) == (403, text), response.text
    assert response.json() == {"data": None, "message": text + "\n"}


# --- the agent's file-read: the privilege labctl's host-key pinning needs ----------------------


def test_file_read_without_file_read_privilege_is_pves_403(server: SimServer, vmid: int) -> None:
    token = grant(server, "VM.Audit VM.GuestAgent.Audit")
    answer = token.raw("GET", f"/nodes/pve/qemu/{vmid}/agent/file-read", params={"file": HOST_KEY})
    # Agent.pm:451-458: check_any, so both privileges that would do are named
    refused(answer, f"/vms/{vmid}, VM.GuestAgent.FileRead|VM.GuestAgent.Unrestricted")
    with pytest.raises(proxmoxer.ResourceException) as caught:
        token.api.nodes("pve").qemu(vmid).agent("file-read").get(file=HOST_KEY)
    assert caught.value.status_code == 403
    assert "VM.GuestAgent.FileRead" in str(caught.value.content)


@pytest.mark.parametrize("privs", ["VM.GuestAgent.FileRead", "VM.GuestAgent.Unrestricted"])
def test_file_read_with_the_privilege_answers_200(server: SimServer, vmid: int, privs: str) -> None:
    token = grant(server, privs)
    result = token.api.nodes("pve").qemu(vmid).agent("file-read").get(file=HOST_KEY)
    assert result["content"] == f"ssh-ed25519 AAAAC3Nz vm{vmid}\n"


def test_network_interfaces_need_guest_agent_audit_not_vm_monitor(
    server: SimServer, vmid: int
) -> None:
    path = f"/nodes/pve/qemu/{vmid}/agent/network-get-interfaces"
    refused(
        grant(server, "VM.Audit VM.GuestAgent.FileRead").raw("GET", path),
        f"/vms/{vmid}, VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted",
    )
    assert grant(server, "VM.GuestAgent.Audit").raw("GET", path).status_code == 200


def test_pve9_refuses_a_role_naming_vm_monitor(server: SimServer) -> None:
    spec = {"roles": {"Old": "VM.Audit VM.Monitor"}}
    answer = Raw(server)("POST", "/_sim/access", json=spec)
    assert answer.status_code == 400
    assert answer.json()["errors"] == {"privs": "invalid format - invalid privilege 'VM.Monitor'"}
    assert "VM.Monitor" not in PVE_PRIVILEGES


# --- how privileges are computed ------------------------------------------------------------------


def test_a_privsep_token_gets_the_intersection_with_its_user(server: SimServer, vmid: int) -> None:
    path = f"/nodes/pve/qemu/{vmid}/status/current"
    token = grant(server, "VM.Audit", user_privs="VM.PowerMgmt")
    refused(token.raw("GET", path), f"/vms/{vmid}, VM.Audit")
    token = grant(server, "VM.PowerMgmt", user_privs="VM.Audit", privsep=0)  # the user's own
    assert token.raw("GET", path).status_code == 200


def test_the_deepest_acl_entry_replaces_inherited_roles(server: SimServer, vmid: int) -> None:
    spec = {
        "roles": {"Audit": "VM.Audit", "Power": "VM.PowerMgmt", "Nodes": "Sys.Audit"},
        "users": ["labctl@pve"],
        "tokens": {TOKEN: {"privsep": 0}},
        "acl": [
            {"path": "/vms", "roles": "Audit", "users": "labctl@pve"},
            {"path": f"/vms/{vmid}", "roles": "Power", "users": "labctl@pve"},
            {"path": "/nodes", "roles": "Nodes", "users": "labctl@pve", "propagate": 0},
        ],
    }
    secret = Raw(server)("POST", "/_sim/access", json=spec).json()["data"]["tokens"][TOKEN]
    token = Token(server, TOKEN, secret["value"])
    refused(token.raw("GET", f"/nodes/pve/qemu/{vmid}/status/current"), f"/vms/{vmid}, VM.Audit")
    assert token.raw("GET", "/nodes/pve/qemu/9000/status/current").status_code == 200
    # propagate=0 on /nodes: nothing on /nodes/pve
    refused(token.raw("GET", "/nodes/pve/status"), "/nodes/pve, Sys.Audit")


def test_listings_are_filtered_not_refused(server: SimServer, vmid: int) -> None:
    token = grant(
        server,
        "VM.PowerMgmt",
        acl=[
            {"path": "/", "roles": "UserRole", "users": "labctl@pve"},
            {"path": f"/vms/{vmid}", "roles": "TokenRole", "tokens": TOKEN},
        ],
    )
    assert token.api.cluster.resources.get(type="vm") == []  # no VM.Audit anywhere
    nodes = token.api.nodes.get()
    assert nodes and all("maxmem" not in n and n["status"] == "online" for n in nodes)
    token = grant(server, "VM.Audit")
    assert {r["vmid"] for r in token.api.cluster.resources.get(type="vm")} >= {9000, vmid}


# --- checks inside handlers and tasks ---------------------------------------------------------


def test_clone_checks_source_newid_storage_and_bridge(server: SimServer, root: Any) -> None:
    newid = int(root.cluster.nextid.get())
    clone = f"/nodes/pve/qemu/9000/clone?newid={newid}"
    everything = "VM.Clone VM.Allocate Datastore.AllocateSpace SDN.Use"
    refused(
        grant(server, "VM.Allocate Datastore.AllocateSpace SDN.Use").raw("POST", clone),
        "/vms/9000, VM.Clone",
    )
    # the ['or', VM.Allocate on /vms/{newid}, ... on /pool/{pool}] check names nothing
    refused(grant(server, "VM.Clone Datastore.AllocateSpace SDN.Use").raw("POST", clone), "")
    refused(
        grant(server, "VM.Clone VM.Allocate SDN.Use").raw("POST", clone),
        "/storage/local-lvm, Datastore.AllocateSpace",
    )
    refused(
        grant(server, "VM.Clone VM.Allocate Datastore.AllocateSpace").raw("POST", clone),
        "/sdn/zones/localnetwork/vmbr0, SDN.Use",
    )
    assert newid not in {r["vmid"] for r in root.cluster.resources.get(type="vm")}
    token = grant(server, everything + " VM.Audit")
    upid = token.api.nodes("pve").qemu(9000).clone.post(newid=newid)
    assert wait(token.api, upid)["exitstatus"] == "OK"
    assert ":labctl@pve!labctl:" in upid


def test_config_keys_need_their_own_privilege(server: SimServer, vmid: int) -> None:
    path = f"/nodes/pve/qemu/{vmid}/config"
    token = grant(server, "VM.Config.Memory")
    refused(
        token.raw("PUT", path, data={"memory": 2048, "cores": 2}), f"/vms/{vmid}, VM.Config.CPU"
    )
    refused(
        grant(server, "VM.Audit").raw("PUT", path, data={"memory": 2048}),
        f"/vms/{vmid}, VM.Config.Disk|VM.Config.CDROM|VM.Config.CPU|VM.Config.Memory|"
        "VM.Config.Network|VM.Config.HWType|VM.Config.Options|VM.Config.Cloudinit",
    )
    token = grant(server, "VM.Config.Cloudinit")
    assert token.raw("PUT", path, data={"ciuser": "lab", "ipconfig0": "ip=dhcp"}).ok
    refused(token.raw("PUT", path, data={"tags": "labctl"}), f"/vms/{vmid}, VM.Config.Options")
    answer = grant(server, "VM.Config.Options").raw("PUT", path, data={"args": "-no-reboot"})
    assert (answer.status_code, answer.reason) == (500, "only root can set 'args' config")


def test_resize_checks_the_storage_inside_its_task(server: SimServer, vmid: int) -> None:
    token = grant(server, "VM.Config.Disk")
    upid = token.api.nodes("pve").qemu(vmid).resize.put(disk="scsi0", size="+1G")
    status = wait(token.api, upid)
    assert (
        status["exitstatus"] == "Permission check failed (/storage/local-lvm, "
        "Datastore.AllocateSpace)"
    )


def test_tasks_are_seen_by_their_owner_or_with_sys_audit(
    server: SimServer, root: Any, vmid: int
) -> None:
    upid = root.nodes("pve").qemu(vmid).status.reboot.post()
    wait(root, upid)
    token = grant(server, "VM.PowerMgmt VM.Audit")
    refused(token.raw("GET", f"/nodes/pve/tasks/{upid}/status"), "/nodes/pve, Sys.Audit")
    own = token.api.nodes("pve").qemu(vmid).status.reboot.post()
    assert wait(token.api, own)["exitstatus"] == "OK"
    listed = token.api.nodes("pve").tasks.get(source="all", vmid=vmid, typefilter="qmreboot")
    assert [t["upid"] for t in listed] == [own]
    auditor = grant(server, "Sys.Audit")
    assert auditor.raw("GET", f"/nodes/pve/tasks/{upid}/log").status_code == 200


# --- the simulator's own side -----------------------------------------------------------------


def test_every_simulated_method_has_a_privilege_row() -> None:
    assert set(ENDPOINT_CHECKS) == set(ROUTES)


def test_the_default_token_keeps_roots_rights_and_runs_the_control_api(root_raw: Raw) -> None:
    assert root_raw("GET", "/_sim/access").json()["data"]["tokens"] == {}
    assert root_raw("GET", "/cluster/status").status_code == 200


def test_a_privsep_token_may_not_use_the_control_api(server: SimServer) -> None:
    token = grant(server, " ".join(sorted(PVE_PRIVILEGES)))
    answer = token.raw("POST", "/_sim/access", json={})
    assert answer.status_code == 403


def test_a_wrong_token_secret_is_an_authentication_failure(server: SimServer) -> None:
    grant(server, "VM.Audit")
    answer = Token(server, TOKEN, "0badc0de-0000-0000-0000-000000000000").raw("GET", "/version")
    assert (answer.status_code, answer.reason) == (401, "Authentication failed!")


def test_access_survives_a_restart_in_a_private_file(tmp_path: Path) -> None:
    with SimServer(tmp_path, **FAST) as first:
        assert grant(first, "VM.Audit").api.version.get()["release"] == "9.2"
        shown = Raw(first)("GET", "/_sim/access").json()["data"]
        assert "value" not in json.dumps(shown)  # GET never shows token secrets
    access = tmp_path / "access.json"
    assert stat.S_IMODE(access.stat().st_mode) == 0o600
    with SimServer(tmp_path, **FAST) as second:
        saved = json.loads(access.read_text())["tokens"][TOKEN]["value"]
        token = Token(second, TOKEN, saved)
        assert token.raw("GET", "/nodes/pve/qemu/9000/config").status_code == 200
        refused(token.raw("GET", "/nodes/pve/status"), "/nodes/pve, Sys.Audit")
