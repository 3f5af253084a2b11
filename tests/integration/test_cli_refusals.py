"""labctl's refusals and error reports, through the real CLI against the API-only simulator.

Nothing here needs a guest: each case fails (or is refused) before SSH, or checks what the user
sees when Proxmox says no.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provision.sim.models import TEMPLATE_NAME
from provision.sim.server import SimServer
from tests.support.cli import one_error_line, run_on_terminal
from tests.support.lab import FAST, Lab, clone_untagged


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--ram", "32X"], "unknown unit"),
        (["--cores", "0"], "at least 1"),
        (["--cores", "-2"], "at least 1"),
        (["--ram", "-1G"], "positive"),
        (["--ram", "0"], "positive"),
        (["--ram", "256M"], "below the minimum of 512 MiB"),
        (["--cores", "two"], "invalid core count"),
        (["--cores", "17"], "more than node pve has (16)"),
        (["--ram", "100G"], "more than node pve has free"),
        (["--disk", "1G"], "smaller than the template"),
    ],
)
def test_bad_shape_is_a_usage_error_and_creates_nothing(
    api_lab: Lab, flags: list[str], says: str
) -> None:
    result = api_lab.run("up", "shape-test", *flags, "--no-deploy")
    assert result.code == 2, result
    assert says in one_error_line(result.stderr)
    assert api_lab.vm_named("shape-test") is None


def test_allow_overcommit_lets_a_shape_larger_than_the_node_through(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 5})
    result = api_lab.run(
        "up", "big", "--cores", "17", "--ram", "100G", "--allow-overcommit", "--no-deploy"
    )
    # Past the shape check, clone and boot: the API-only simulator has no SSH host key to read.
    assert result.code == 5, result
    vm = api_lab.vm_named("big")
    assert vm is not None and vm["maxmem"] == 100 * 2**30


def test_wrong_tls_pin_names_both_fingerprints(api_lab: Lab) -> None:
    wrong = ":".join(["AB"] * 32)
    api_lab.write(proxmox={"fingerprint": wrong})
    result = api_lab.run("ls")
    assert result.code == 4, result
    line = one_error_line(result.stderr)
    assert "TLS pin mismatch" in line
    assert wrong in line and api_lab.server.fingerprint.upper() in line


def test_unpinned_self_signed_certificate_is_refused_with_its_fingerprint(api_lab: Lab) -> None:
    api_lab.write(proxmox={"fingerprint": None})
    result = api_lab.run("ls")
    assert result.code == 4, result
    line = one_error_line(result.stderr)
    assert api_lab.server.fingerprint.upper() in line and "proxmox.fingerprint" in line


def test_bad_token_is_an_authentication_error_without_the_secret(api_lab: Lab) -> None:
    bogus = "0badc0de-dead-beef-0000-123456789abc"
    api_lab.write(proxmox={"token_secret": bogus})
    result = api_lab.run("-vv", "ls")
    assert result.code == 4, result
    assert "authentication failed" in one_error_line(result.stderr)
    assert bogus not in result.output


def test_ticket_auth_with_password_works(api_lab: Lab) -> None:
    creds = api_lab.server.credentials
    api_lab.write(
        proxmox={
            "token_id": None,
            "token_secret": None,
            "user": creds["user"],
            "password": creds["password"],
        }
    )
    result = api_lab.run("--json", "ls")
    assert result.code == 0, result
    assert result.json == {"vms": []}


def test_failing_clone_task_reports_the_task_log(api_lab: Lab) -> None:
    api_lab.fault(kind="task", type="qmclone", message="clone failed: no space left on device")
    result = api_lab.run("up", "clonefail", "--no-deploy")
    assert result.code == 4, result
    line = one_error_line(result.stderr)
    assert "clone of" in line and "no space left on device" in line
    assert "task log:" in line and "TASK ERROR" in line
    assert api_lab.vm_named("clonefail") is None  # PVE removes a VM whose clone failed


def test_agent_timeout_says_what_to_check_and_how_to_clean_up(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 2})
    api_lab.fault(kind="agent")
    result = api_lab.run("up", "noagent", "--no-deploy")
    assert result.code == 5, result
    line = one_error_line(result.stderr)
    assert "gave no IP address within 2s" in line
    assert "qemu-guest-agent is installed" in line
    assert "`labctl down noagent` removes it" in line
    assert "waiting for the guest agent" in result.stderr or "agent ..." in result.stderr
    vm = api_lab.vm_named("noagent")
    assert vm is not None and "labctl" in vm.get("tags", "")


def test_rollback_destroys_the_vm_when_a_later_step_fails(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 1})
    api_lab.fault(kind="agent")
    result = api_lab.run("up", "rolled", "--rollback", "--no-deploy")
    assert result.code == 5, result
    assert "rolled back" in one_error_line(result.stderr)
    assert api_lab.vm_named("rolled") is None


def test_down_refuses_a_vm_without_the_labctl_tag_even_with_yes(api_lab: Lab) -> None:
    clone_untagged(api_lab, "foreign")
    result = api_lab.run("down", "foreign", "--yes")
    assert result.code == 4, result
    assert "lacks the 'labctl' tag" in one_error_line(result.stderr)
    assert api_lab.run("down", "--all", "--yes").code == 0
    assert api_lab.vm_named("foreign") is not None
    listing = api_lab.run("--json", "ls", "--all").json["vms"]
    assert [(v["name"], v["managed"]) for v in listing] == [("foreign", False)]
    # up must not adopt it either
    taken = api_lab.run("up", "foreign", "--no-deploy")
    assert taken.code == 4 and "labctl did not create it" in one_error_line(taken.stderr)


@pytest.mark.parametrize(
    "args", [["down", "foreign", "--yes"], ["resize", "foreign", "--cores", "4"]]
)
def test_down_and_resize_of_an_untagged_vm_say_it_exists_but_is_not_labctls(
    api_lab: Lab, args: list[str]
) -> None:
    vmid = clone_untagged(api_lab, "foreign")
    result = api_lab.run(*args)
    assert result.code == 4, result  # the exit code of every refused VM
    line = one_error_line(result.stderr)
    assert f"VM foreign exists (vmid {vmid} on pve) but lacks the 'labctl' tag" in line
    assert "will not touch it" in line and "no VM named" not in line
    vm = api_lab.vm_named("foreign")
    assert vm is not None and vm["maxcpu"] == 2  # neither destroyed nor resized


@pytest.mark.parametrize("command", [["down", "--yes"], ["resize", "--cores", "4"]])
def test_down_and_resize_of_a_template_refuse_it_rather_than_call_it_missing(
    api_lab: Lab, command: list[str]
) -> None:
    verb, *flags = command
    result = api_lab.run(verb, TEMPLATE_NAME, *flags)
    assert result.code == 4, result
    line = one_error_line(result.stderr)
    assert f"{TEMPLATE_NAME} (vmid 9000 on pve) is a template" in line
    assert "labctl will not touch it" in line


def test_down_of_a_name_no_vm_has_says_there_is_none(api_lab: Lab) -> None:
    result = api_lab.run("down", "ghost", "--yes")
    assert result.code == 4, result
    assert "no VM named ghost" in one_error_line(result.stderr)


def test_down_without_terminal_or_yes_refuses_then_yes_destroys(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 1})
    api_lab.fault(kind="agent")
    assert api_lab.run("up", "leftover", "--no-deploy").code == 5  # leaves a tagged VM
    api_lab.clear_faults()
    refused = api_lab.run("down", "leftover")
    assert refused.code == 2, refused
    assert "pass --yes" in one_error_line(refused.stderr)
    assert api_lab.vm_named("leftover") is not None
    done = api_lab.run("--json", "down", "leftover", "--yes")
    assert done.code == 0, done
    assert [d["name"] for d in done.json["destroyed"]] == ["leftover"]
    assert api_lab.vm_named("leftover") is None


def test_resize_of_a_running_vm_stays_pending_and_says_so(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 1})
    api_lab.fault(kind="agent")
    assert api_lab.run("up", "sizes", "--cores", "2", "--ram", "1G", "--no-deploy").code == 5
    api_lab.clear_faults()
    result = api_lab.run("resize", "sizes", "--cores", "4", "--ram", "2G")
    assert result.code == 0, result
    assert "pending until the next reboot" in result.stdout
    assert re.search(r"cores\s+2\s+4", result.stdout)
    listed = api_lab.run("--json", "ls").json["vms"][0]
    assert listed["pending"] is True and listed["cores"] == 2
    assert listed["pending_shape"]["cores"] == 4
    too_big = api_lab.run("resize", "sizes", "--cores", "64")
    assert too_big.code == 2 and "more than node" in one_error_line(too_big.stderr)


def test_secret_is_never_printed_at_debug_verbosity(api_lab: Lab) -> None:
    creds = api_lab.server.credentials
    api_lab.write(timeouts={"agent": 1})
    api_lab.fault(kind="agent")
    up = api_lab.run("-vv", "up", "chatty", "--no-deploy")
    listed = api_lab.run("-vv", "ls")
    api_lab.write(
        proxmox={
            "token_id": None,
            "token_secret": None,
            "user": creds["user"],
            "password": creds["password"],
        }
    )
    ticket = api_lab.run("-vv", "--json", "ls")
    assert up.code == 5 and listed.code == 0 and ticket.code == 0
    for result in (up, listed, ticket):
        assert "DEBUG" in result.stderr  # -vv really is verbose...
        assert creds["token_secret"] not in result.output  # ...and still keeps the secrets
        assert creds["password"] not in result.output
        assert "PVEAuthCookie=PVE:" not in result.output


def test_json_output_is_one_document_and_progress_goes_to_stderr(api_lab: Lab) -> None:
    result = api_lab.run("--json", "ls")
    assert result.code == 0
    assert result.json == {"vms": []}
    empty_down = api_lab.run("--json", "down", "--all", "--yes")
    assert empty_down.code == 0 and empty_down.json == {"destroyed": []}


def test_down_needs_a_name_or_all(api_lab: Lab) -> None:
    result = api_lab.run("down")
    assert result.code == 2
    assert "give a VM name or --all" in one_error_line(result.stderr)


def test_up_without_name_and_without_vm_tables_is_a_usage_error(api_lab: Lab) -> None:
    result = api_lab.run("up")
    assert result.code == 2
    assert "declares no [vm.NAME]" in one_error_line(result.stderr)


def test_disk_grows_when_asked_for_more_than_the_template(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 1})
    api_lab.fault(kind="agent")
    result = api_lab.run("up", "bigdisk", "--disk", "10G", "--no-deploy")
    assert result.code == 5, result
    assert "grown from" in result.stderr
    vm = api_lab.vm_named("bigdisk")
    assert vm is not None and vm["maxdisk"] == 10 * 2**30


def test_resize_of_a_stopped_vm_applies_at_once(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 1})
    api_lab.fault(kind="agent")
    assert api_lab.run("up", "cold", "--cores", "1", "--ram", "1G", "--no-deploy").code == 5
    vm = api_lab.vm_named("cold")
    assert vm is not None
    api_lab.api("POST", f"/nodes/pve/qemu/{vm['vmid']}/status/stop")
    for _ in range(100):
        stopped = api_lab.vm_named("cold")
        if stopped is not None and stopped["status"] == "stopped":
            break
    result = api_lab.run("--json", "resize", "cold", "--cores", "3", "--cpu-type", "x86-64-v3")
    assert result.code == 0, result
    assert result.json["pending_keys"] == [] and result.json["after"]["cores"] == 3
    listed = api_lab.run("--json", "ls").json["vms"][0]
    assert (listed["cores"], listed["cpu_type"], listed["pending"]) == (3, "x86-64-v3", False)


def test_auto_node_falls_back_to_the_templates_node_for_local_storage(
    tmp_path: Path, ssh_key: Path
) -> None:
    with SimServer(tmp_path / "sim", nodes=2, **FAST) as server:
        lab = Lab(server, tmp_path, ssh_key)
        lab.write(timeouts={"agent": 1})
        # make pve2 the node with most free memory: a VM runs on pve
        newid = int(lab.api("GET", "/cluster/nextid"))
        lab.api("POST", "/nodes/pve/qemu/9000/clone", data={"newid": newid, "name": "hog"})
        for _ in range(100):
            hog = lab.vm_named("hog")
            if hog is not None and not hog.get("lock"):
                break
        lab.api("POST", f"/nodes/pve/qemu/{newid}/config", data={"memory": 32768})
        lab.api("POST", f"/nodes/pve/qemu/{newid}/status/start")
        lab.fault(kind="agent")
        result = lab.run("up", "placed", "--no-deploy")
        assert result.code == 5, result
        assert "local storage of pve; creating placed there instead of pve2" in result.stderr
        placed = lab.vm_named("placed")
        assert placed is not None and placed["node"] == "pve"
        explicit = lab.run("up", "pinned-node", "--node", "pve2", "--no-deploy")
        assert explicit.code == 4
        assert "use --node pve" in one_error_line(explicit.stderr)


def test_down_asks_on_a_terminal_and_only_yes_destroys(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 1})
    api_lab.fault(kind="agent")
    assert api_lab.run("up", "asked", "--no-deploy").code == 5
    api_lab.clear_faults()
    code, text = run_on_terminal(api_lab, ["down", "asked"], "n")
    assert code == 0 and "Destroy asked (vmid" in text and "nothing destroyed" in text
    assert api_lab.vm_named("asked") is not None
    code, text = run_on_terminal(api_lab, ["down", "asked"], "y")
    assert code == 0 and "destroyed" in text
    assert api_lab.vm_named("asked") is None


def test_full_clone_goes_to_the_configured_storage(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 1})
    api_lab.fault(kind="agent")
    linked = api_lab.run("up", "linked", "--no-deploy")
    full = api_lab.run("up", "fullcopy", "--full", "--no-deploy")
    assert linked.code == 5 and full.code == 5, (linked, full)
    assert "(linked clone)" in linked.stderr and "(full clone)" in full.stderr
    disks = {}
    for name in ("linked", "fullcopy"):
        vm = api_lab.vm_named(name)
        assert vm is not None
        config = api_lab.api("GET", f"/nodes/pve/qemu/{vm['vmid']}/config")
        disks[name] = next(
            v
            for k, v in config.items()
            if k.startswith(("scsi", "virtio")) and "media=cdrom" not in str(v)
        )
    assert "base-9000" in disks["linked"]  # a linked clone's disk sits on the template's base
    assert "base-9000" not in disks["fullcopy"] and disks["fullcopy"].startswith("local-lvm:")


def test_down_stops_a_guest_that_ignores_the_graceful_shutdown(api_lab: Lab) -> None:
    api_lab.write(timeouts={"agent": 1, "shutdown": 1})
    api_lab.fault(kind="agent")
    assert api_lab.run("up", "stubborn", "--no-deploy").code == 5
    vm = api_lab.vm_named("stubborn")
    assert vm is not None
    api_lab.fault(kind="ignore_shutdown", vmid=vm["vmid"])
    result = api_lab.run("down", "stubborn", "--yes")
    assert result.code == 0, result
    assert "graceful shutdown failed" in result.stderr and "stopped in" in result.stderr
    assert api_lab.vm_named("stubborn") is None
