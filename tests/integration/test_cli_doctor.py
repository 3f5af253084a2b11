"""`labctl doctor` against the simulator: a healthy lab is all ok; each thing broken on its own
shows up in its own row, a problem exits 3, a warning alone exits 0."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.support.cli import CliResult, one_error_line
from tests.support.lab import Lab, clone_untagged, use_readme_token

TEMPLATE = "/nodes/pve/qemu/9000/config"


def rows(result: CliResult) -> dict[str, dict[str, Any]]:
    """The --json report's checks by name; the counts must match the rows."""
    document = result.json
    checks = {c["name"]: c for c in document["checks"]}
    statuses = [c["status"] for c in document["checks"]]
    assert document["problems"] == statuses.count("problem"), result
    assert document["warnings"] == statuses.count("warning"), result
    return checks


def only_problem(result: CliResult, name: str) -> dict[str, Any]:
    """The one row that is a problem is `name`; the command exits 3 with one error line."""
    assert result.code == 3, result
    assert "doctor found 1 problem" in one_error_line(result.stderr)
    checks = rows(result)
    assert [n for n, c in checks.items() if c["status"] == "problem"] == [name], result
    assert checks[name]["fix"], result
    return checks[name]


@contextmanager
def template_changed(lab: Lab, **values: Any) -> Iterator[None]:
    """The template's config changed for one test, and put back after it."""
    before = lab.api("GET", TEMPLATE)
    lab.api("PUT", TEMPLATE, data=values)
    try:
        yield
    finally:
        deleted = [k for k in str(values.get("delete", "")).split(",") if k]
        restore = {k: before[k] for k in [*values, *deleted] if k in before and k != "delete"}
        lab.api("PUT", TEMPLATE, data=restore)


def test_healthy_lab_is_all_ok_and_exits_0(api_lab: Lab) -> None:
    result = api_lab.run("doctor", "--json")
    assert result.code == 0, result
    checks = rows(result)
    assert {c["status"] for c in checks.values()} == {"ok"}, result
    assert list(checks) == [
        "TLS", "API", "privileges", "template", "guest agent", "cloud-init drive",
        "linked clone", "cpu type", "node AVX2", "node RAM", "storage space", "bridge", "SSH key",
    ]  # fmt: skip
    assert "pinned" in checks["TLS"]["detail"]
    assert "lvmthin" in checks["linked clone"]["detail"]
    human = api_lab.run("doctor")
    assert human.code == 0, human
    assert "0 problem(s), 0 warning(s)" in human.stdout
    assert all(line.startswith(("STATUS", "ok ", " ")) for line in human.stdout.splitlines()[:-1])


def test_readme_token_is_enough_and_one_missing_privilege_is_named(api_lab: Lab) -> None:
    try:
        use_readme_token(api_lab)
        result = api_lab.run("doctor", "--json")
        assert result.code == 0, result
        use_readme_token(api_lab, without="VM.GuestAgent.Audit")
        row = only_problem(api_lab.run("doctor", "--json"), "privileges")
        assert "VM.GuestAgent.Audit on /vms" in row["detail"], row
        assert "labctl@pve!labctl" in row["detail"], row
    finally:
        api_lab.api("DELETE", "/_sim/access")


def test_unknown_template(api_lab: Lab) -> None:
    api_lab.write(template={"name": "no-such-template"})
    row = only_problem(api_lab.run("doctor", "--json"), "template")
    assert "'no-such-template' not found" in row["detail"]


def test_template_that_is_a_plain_vm(api_lab: Lab) -> None:
    clone_untagged(api_lab, "plain-vm")
    api_lab.write(template={"name": "plain-vm"})
    row = only_problem(api_lab.run("doctor", "--json"), "template")
    assert "is a VM, not a template" in row["detail"] and "qm template" in row["fix"]


def test_agent_off(api_lab: Lab) -> None:
    with template_changed(api_lab, agent="enabled=0"):
        row = only_problem(api_lab.run("doctor", "--json"), "guest agent")
    assert "enabled=0" in row["detail"] and "--agent enabled=1" in row["fix"]


def test_no_cloudinit_drive(api_lab: Lab) -> None:
    with template_changed(api_lab, delete="ide2"):
        row = only_problem(api_lab.run("doctor", "--json"), "cloud-init drive")
    assert "cloudinit" in row["fix"]


def test_cpu_type_hiding_avx2_is_a_warning(api_lab: Lab) -> None:
    api_lab.write(defaults={"cpu_type": "kvm64"})
    result = api_lab.run("doctor", "--json")
    assert result.code == 0, result
    checks = rows(result)
    assert checks["cpu type"]["status"] == "warning", result
    assert "kvm64 hides AVX2" in checks["cpu type"]["detail"]
    assert result.json["problems"] == 0 and result.json["warnings"] == 1


def test_missing_bridge(api_lab: Lab) -> None:
    api_lab.write(template={"bridge": "vmbr9"})
    row = only_problem(api_lab.run("doctor", "--json"), "bridge")
    assert "'vmbr9' does not exist on pve (bridges: vmbr0)" in row["detail"]


def test_missing_ssh_key(api_lab: Lab) -> None:
    missing = api_lab.dir / "no-such-key"
    api_lab.write(ssh={"key": str(missing)})
    row = only_problem(api_lab.run("doctor", "--json"), "SSH key")
    assert str(missing) in row["detail"] and "ssh-keygen" in row["fix"]


def test_vms_needing_more_ram_than_the_node_has_free(api_lab: Lab) -> None:
    api_lab.write()
    text = api_lab.config.read_text()
    api_lab.config.write_text(text + '\n[vm.big]\nram = "40G"\n\n[vm.bigger]\nram = "40G"\n')
    row = only_problem(api_lab.run("doctor", "--json"), "node RAM")
    assert "pve: 80 GiB wanted" in row["detail"], row


def test_unreachable_api_is_a_problem_and_the_local_checks_still_run(api_lab: Lab) -> None:
    api_lab.write(proxmox={"port": 1, "timeout": 2})
    result = api_lab.run("doctor", "--json")
    row = only_problem(result, "API")
    assert list(rows(result)) == ["TLS", "API", "SSH key"]
    assert row["detail"]


def test_a_wrong_pin_is_the_api_rows_problem_and_no_traceback(api_lab: Lab) -> None:
    api_lab.write(proxmox={"fingerprint": ":".join(["AB"] * 32)})
    result = api_lab.run("doctor", "--json")
    row = only_problem(result, "API")
    assert "Traceback" not in result.stderr
    assert "TLS pin mismatch" in row["detail"] and "pvenode cert info" in row["fix"], row


def test_a_bad_token_is_the_api_rows_problem_and_the_local_checks_still_run(
    api_lab: Lab,
) -> None:
    api_lab.write(proxmox={"token_secret": "00000000-0000-0000-0000-000000000000"})
    result = api_lab.run("doctor", "--json")
    row = only_problem(result, "API")
    assert "Traceback" not in result.stderr
    assert "401" in row["detail"] or "authentication" in row["detail"].lower(), row
    assert "SSH key" in rows(result)


def test_disks_beyond_a_thin_storages_free_space_are_a_warning(api_lab: Lab) -> None:
    # local-lvm is LVM-thin: PVE lets its volumes overcommit, so this is a warning, not a problem
    api_lab.write()
    text = api_lab.config.read_text()
    api_lab.config.write_text(text + '\n[vm.huge]\ndisk = "9000G"\n')
    result = api_lab.run("doctor", "--json")
    assert result.code == 0, result
    row = rows(result)["storage space"]
    assert row["status"] == "warning", row
    assert "local-lvm on pve: 9000 GiB of disks" in row["detail"], row
    assert "smaller disks" in row["fix"]
