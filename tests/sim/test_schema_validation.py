"""The worked examples of pve-api.md section 12, checked against the PVE 9.2 schema capture."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from provision.sim.errors import PveError
from provision.sim.schema import load_schema, merge_path_params, validate

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx/k+abc= me@laptop"


def check(
    method: str, path: str, params: dict[str, Any], from_json: bool = False
) -> dict[str, str]:
    """Validate like the server does; returns the per-key errors ({} when valid)."""
    endpoint = load_schema().find(method, path)
    try:
        validate(endpoint.parameters, merge_path_params(params, endpoint.path_params), from_json)
    except PveError as exc:
        assert exc.status == 400
        assert exc.message == "Parameter verification failed."
        return exc.errors or {}
    return {}


def as_form(params: dict[str, Any]) -> dict[str, Any]:
    """What PVE sees from proxmoxer's form body: every value str()-ed."""
    return {k: str(v) for k, v in params.items()}


FORMAT_ERROR = "invalid format - format error\n"
UNDEFINED = "property is not defined in schema and the schema does not allow additional properties"
CLONE = "/nodes/pve/qemu/9000/clone"
CONFIG = "/nodes/pve/qemu/100/config"


def test_clone_with_valid_parameters_passes() -> None:
    params = {"newid": 101, "name": "web-01", "full": 1, "storage": "local-lvm"}
    assert check("POST", CLONE, as_form(params)) == {}


def test_python_bool_in_a_form_body_fails_the_boolean_type_check_with_other_errors() -> None:
    params = {"newid": 101, "full": True, "name": "web_01", "format": "qcow3"}
    assert check("POST", CLONE, as_form(params)) == {
        "full": "type check ('boolean') failed - got 'True'",
        "name": "invalid format - value does not look like a valid DNS name",
        "format": "value 'qcow3' does not have a value in the enumeration 'raw, qcow2, vmdk'",
    }


def test_json_true_is_a_valid_boolean_in_a_json_body() -> None:
    assert check("POST", CLONE, {"newid": 101, "full": True}, from_json=True) == {}


def test_clone_without_newid_reports_the_missing_property() -> None:
    assert check("POST", CLONE, {}) == {"newid": "property is missing and it is not optional"}


@pytest.mark.parametrize(
    ("method", "path"), [("GET", CLONE), ("POST", "/nodes/pve/qemu/100/bogus")]
)
def test_unknown_method_or_path_is_501(method: str, path: str) -> None:
    with pytest.raises(PveError) as caught:
        load_schema().find(method, path)
    assert caught.value.status == 501
    assert caught.value.message == f"Method '{method} {path}' not implemented"


def test_labctl_config_update_passes() -> None:
    params = {
        "cores": 4,
        "memory": 4096,
        "ipconfig0": "ip=10.0.0.5/24,gw=10.0.0.1",
        "nameserver": "1.1.1.1 8.8.8.8",
        "sshkeys": quote(KEY, safe=""),
        "net0": "virtio,bridge=vmbr0,firewall=1",
        "delete": "balloon,tablet",
        "digest": "a" * 40,
        "agent": "enabled=1,fstrim_cloned_disks=1",
        "hotplug": "network,disk,cpu,memory",
        "tags": "web;prod",
        "cpu": "host",
        "balloon": 0,
        "ciuser": "ubuntu",
    }
    assert check("POST", CONFIG, as_form(params)) == {}


@pytest.mark.parametrize("encoded", [KEY, quote(KEY), KEY.replace(" ", "+")])
def test_sshkeys_must_be_fully_percent_encoded(encoded: str) -> None:
    errors = check("POST", CONFIG, {"sshkeys": encoded})
    assert errors["sshkeys"].startswith("invalid format - invalid urlencoded string: ")


@pytest.mark.parametrize(
    ("params", "key", "message"),
    [
        (
            {"ipconfig0": "gw=10.0.0.1"},
            "ipconfig0",
            f"{FORMAT_ERROR}ipconfig0.ip: missing property required by 'ipconfig0.gw'",
        ),
        (
            {"memory": "abc"},
            "memory",
            f"{FORMAT_ERROR}memory.current: type check ('integer') failed - got 'abc'",
        ),
        ({"net32": "virtio,bridge=vmbr0"}, "net32", UNDEFINED),
        ({"bogus": "1"}, "bogus", UNDEFINED),
        ({"cores": "0"}, "cores", "value must have a minimum value of 1"),
        ({"hotplug": "net"}, "hotplug", "invalid format - invalid hotplug feature 'net'"),
        (
            {"net0": "virtio,bridge=vmbr0,firewall=maybe"},
            "net0",
            f"{FORMAT_ERROR}net0.firewall: type check ('boolean') failed - got 'maybe'",
        ),
    ],
)
def test_config_errors_carry_pves_messages(params: dict[str, str], key: str, message: str) -> None:
    assert check("POST", CONFIG, params)[key] == message


def test_property_string_booleans_accept_true_and_keyalias_sets_the_model() -> None:
    net0 = "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=true"
    assert check("POST", CONFIG, {"net0": net0}) == {}


def test_vmid_below_100_is_not_a_valid_vm_id() -> None:
    assert check("PUT", "/nodes/pve/qemu/99/config", {}) == {
        "vmid": "invalid format - value does not look like a valid VM ID"
    }


@pytest.mark.parametrize(("size", "ok"), [("+10G", True), ("10G", True), ("10GB", False)])
def test_resize_size_pattern(size: str, ok: bool) -> None:
    errors = check("PUT", "/nodes/pve/qemu/100/resize", {"disk": "scsi0", "size": size})
    assert errors == ({} if ok else {"size": "value does not match the regex pattern"})


def test_cluster_resources_type_is_an_enum_without_qemu() -> None:
    assert check("GET", "/cluster/resources", {"type": "qemu"}) == {
        "type": "value 'qemu' does not have a value in the enumeration 'vm, storage, node, sdn'"
    }


def test_upid_paths_resolve() -> None:
    upid = "UPID:pve:0001A2B3:0023C4D5:6650F00D:qmclone:9000:root@pam!labctl:"
    for leaf in ("status", "log"):
        endpoint = load_schema().find("GET", f"/nodes/pve/tasks/{upid}/{leaf}")
        assert endpoint.path_params == {"node": "pve", "upid": upid}


def test_a_body_value_conflicting_with_the_path_is_rejected() -> None:
    assert check("POST", CONFIG, {"vmid": "101", "cores": "2"}) == {
        "vmid": "duplicate parameter (already defined in URI) with conflicting values!"
    }


def test_repeated_keys_for_a_list_format_are_joined() -> None:
    endpoint = load_schema().find("POST", CONFIG)
    params = merge_path_params({"delete": ["balloon", "tablet"]}, endpoint.path_params)
    assert validate(endpoint.parameters, params, False)["delete"] == "balloon,tablet"
