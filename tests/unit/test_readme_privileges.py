"""README's role for a non-root API token names only privileges PVE 9 knows.

PVE 9 dropped `VM.Monitor` (pve-access-control commit 0706945); `pveum role add` refuses the
whole list when one name is unknown (AccessControl.pm:1224-1238). The names PVE 9 knows are
`provision.sim.access.PVE_PRIVILEGES` (from AccessControl.pm:1057-1168 at 5ccd07d).
"""

from __future__ import annotations

from provision.sim.access import PVE_PRIVILEGES
from tests.support.readme_pveum import access_spec, readme_commands, role_privileges


def test_readme_role_names_only_privileges_pve9_knows() -> None:
    privileges = role_privileges()
    assert privileges, "README gives no `pveum role add LabctlRole --privs ...` line"
    unknown = sorted(set(privileges) - PVE_PRIVILEGES)
    assert unknown == [], f"PVE 9 refuses these: {unknown}"
    assert len(privileges) == len(set(privileges))


def test_readme_role_asks_for_the_guest_agent_privileges_of_pve9() -> None:
    privileges = set(role_privileges())
    assert {"VM.GuestAgent.Audit", "VM.GuestAgent.FileRead"} <= privileges
    assert "VM.Monitor" not in privileges


def test_readme_gives_the_token_and_its_user_the_same_acl_paths() -> None:
    spec = access_spec(readme_commands())
    ((token, info),) = spec["tokens"].items()
    assert info["privsep"] == 1 and token.split("!")[0] in spec["users"]
    for entry in spec["acl"]:  # privilege separation: the token holds the intersection
        assert entry["tokens"] == token and entry["users"] == token.split("!")[0]
    assert {e["path"] for e in spec["acl"]} == {
        "/vms",
        "/nodes",
        "/storage/local-lvm",
        "/sdn/zones/localnetwork/vmbr0",
    }


def test_pve9_privilege_list_is_the_one_from_pve_access_control() -> None:
    assert len(PVE_PRIVILEGES) == 47
    assert "VM.Monitor" not in PVE_PRIVILEGES
    assert {"VM.GuestAgent.Unrestricted", "Permissions.Modify", "Mapping.Use"} <= PVE_PRIVILEGES
