"""A 403 from PVE becomes one line naming who lacks which privilege on which ACL path."""

from __future__ import annotations

from proxmoxer.core import ResourceException

from provision.errors import ExitCode, ProxmoxAPIError, exit_code_for
from provision.pve.api_errors import api_error

WHO = "labctl@pve!labctl"


def refused(method: str, path: str, text: str, **params: object) -> ProxmoxAPIError:
    return api_error(
        method, path, ResourceException(403, "Forbidden", text), params=params, who=WHO
    )


def test_a_privilege_check_names_the_privilege_the_path_and_readme() -> None:
    error = refused(
        "GET",
        "nodes/pve/qemu/101/agent/file-read",
        "Permission check failed (/vms/101, VM.GuestAgent.FileRead)",
    )
    assert error.message.startswith(f"Proxmox: {WHO} lacks VM.GuestAgent.FileRead on /vms/101 ")
    assert "[GET /nodes/pve/qemu/101/agent/file-read, HTTP 403]" in error.message
    assert error.hint and "README" in error.hint and "A lab against a real Proxmox VE" in error.hint
    assert error.status == 403 and exit_code_for(error) == ExitCode.PROXMOX
    assert "\n" not in str(error)


def test_check_any_names_every_privilege_that_would_do() -> None:
    error = refused(
        "GET",
        "nodes/pve/qemu/101/agent/network-get-interfaces",
        "Permission check failed (/vms/101, VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted)",
    )
    assert (
        f"{WHO} lacks VM.GuestAgent.Audit (or VM.GuestAgent.Unrestricted) on /vms/101"
        in error.message
    )


def test_clones_unnamed_privilege_is_named_by_labctl() -> None:
    # ['or', VM.Allocate on /vms/{newid}, ... on /pool/{pool}] fails without naming anything
    error = refused("POST", "nodes/pve/qemu/9000/clone", "Permission check failed", newid=123)
    assert f"{WHO} lacks VM.Allocate on /vms/123 (PVE: Permission check failed)" in error.message


def test_other_403s_keep_pves_text() -> None:
    text = "URI '/access/ticket' not available with API token, need proper ticket."
    error = refused("POST", "access/ticket", text)
    assert f"{WHO} was refused: {text}" in error.message
    bare = api_error("GET", "nodes", ResourceException(403, "Forbidden", "Permission check failed"))
    assert "the API user was refused: Permission check failed" in bare.message
