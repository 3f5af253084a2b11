"""`labctl template create` through the real CLI on the API-only simulator: bad input, a
checksum mismatch, a foreign VM of that name, a re-run over a labctl template, and the clean-up
of a VM whose build fails half-way. (The whole build, boot and role included, is in
tests/integration/test_template_guests.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provision.pve.template import MARKER
from tests.support.cli import one_error_line
from tests.support.image_mirror import IMAGE, ImageMirror
from tests.support.lab import Lab, clone_untagged, wait_gone

ADDRESS = ["--ip", "192.0.2.50/24", "--gateway", "192.0.2.1"]  # TEST-NET-1: never answers


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[ImageMirror]:
    with ImageMirror(tmp_path / "mirror") as served:
        yield served


@pytest.fixture
def lab(api_lab: Lab, mirror: ImageMirror) -> Iterator[Lab]:
    """The API-only lab pointed at the mirror; every VM but the template 9000 removed after."""
    api_lab.write(template={"image_base_url": mirror.url}, timeouts={"ssh": 2, "shutdown": 2})
    yield api_lab
    time.sleep(0.2)  # a create task labctl gave up on ends (its VM is then removable)
    api_lab.empty()
    for vm in api_lab.api("GET", "/cluster/resources", params={"type": "vm"}):
        if vm["vmid"] != 9000 and vm.get("template"):
            api_lab.api("DELETE", f"/nodes/{vm['node']}/qemu/{vm['vmid']}")
    wait_gone(api_lab)


def vm_ids(lab: Lab) -> set[int]:
    return {int(v["vmid"]) for v in lab.api("GET", "/cluster/resources", params={"type": "vm"})}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--flavor", "desktop", *ADDRESS], "--flavor must be one of server, kubuntu"),
        (["--ip", "192.0.2.50"], "needs a prefix length"),
        (["--gateway", "192.0.2.1"], "--gateway needs --ip"),
        (["--image", "ubuntu-22.04", *ADDRESS], "--image must be ubuntu-24.04 or an http"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(lab: Lab, args: list[str], says: str) -> None:
    before = vm_ids(lab)
    result = lab.run("template", "create", "noble", *args)
    assert result.code == 2, result
    assert says in one_error_line(result.stderr)
    assert vm_ids(lab) == before


def test_a_checksum_mismatch_fails_with_the_task_log_tail_and_leaves_no_vm(
    lab: Lab, mirror: ImageMirror
) -> None:
    real = mirror.publish(b"QFI\xfb" + bytes(1000), listed_sha256="0" * 64)
    before = vm_ids(lab)
    result = lab.run("template", "create", "noble", *ADDRESS)
    assert result.code == 4, result
    line = one_error_line(result.stderr)
    assert f"checksum mismatch: got '{real}' != expect '{'0' * 64}'" in line
    assert "task log:" in line
    assert "downloading http://127.0.0.1" in line
    assert vm_ids(lab) == before
    assert mirror.requests == ["/noble/current/SHA256SUMS", f"/noble/current/{IMAGE}"]


def test_a_vm_of_that_name_that_labctl_did_not_make_is_refused_and_untouched(lab: Lab) -> None:
    vmid = clone_untagged(lab, "noble")
    before = lab.api("GET", f"/nodes/pve/qemu/{vmid}/config")
    result = lab.run("template", "create", "noble", *ADDRESS)
    assert result.code == 4, result
    assert "is not a template labctl made: labctl will not touch it" in one_error_line(
        result.stderr
    )
    assert lab.api("GET", f"/nodes/pve/qemu/{vmid}/config") == before


def labctl_made_template(lab: Lab, mirror: ImageMirror, name: str) -> int:
    """A template as `template create` leaves it, made straight through the API."""
    import hashlib

    from tests.support.sim_api import token_api, wait

    api = token_api(lab.server)
    checksum = hashlib.sha256((mirror.directory / IMAGE).read_bytes()).hexdigest()
    wait(api, api.nodes("pve").storage("local")("download-url").post(
        url=mirror.image_url, content="import", filename="n.qcow2", checksum=checksum,
        **{"checksum-algorithm": "sha256"}))  # fmt: skip
    vmid = int(api.cluster.nextid.get())
    params: dict[str, Any] = {
        "vmid": vmid, "name": name, "tags": "labctl", "agent": "enabled=1",
        "description": f"{MARKER} (server) from {mirror.image_url} sha256:{checksum}",
        "scsi0": "local-lvm:0,import-from=local:import/n.qcow2", "ide2": "local-lvm:cloudinit",
    }  # fmt: skip
    assert wait(api, api.nodes("pve").qemu.post(**params))["exitstatus"] == "OK"
    assert wait(api, api.nodes("pve").qemu(vmid).template.post())["exitstatus"] == "OK"
    mirror.requests.clear()
    return vmid


def test_running_again_checks_the_template_instead_of_rebuilding_it(
    lab: Lab, mirror: ImageMirror
) -> None:
    vmid = labctl_made_template(lab, mirror, "noble")
    before = vm_ids(lab)
    result = lab.run("--json", "template", "create", "noble", *ADDRESS)
    assert result.code == 0, result
    document = result.json
    assert (document["vmid"], document["created"]) == (vmid, False)
    assert document["checks"] == ["template", "agent=1", "cloud-init drive", "made by labctl"]
    assert mirror.requests == []
    assert vm_ids(lab) == before


def test_a_labctl_template_that_lost_its_agent_setting_is_reported_not_rebuilt(
    lab: Lab, mirror: ImageMirror
) -> None:
    vmid = labctl_made_template(lab, mirror, "noble")
    lab.api("PUT", f"/nodes/pve/qemu/{vmid}/config", data={"agent": "0"})
    result = lab.run("template", "create", "noble", *ADDRESS)
    assert result.code == 4, result
    assert "its guest agent is not enabled (agent=1)" in one_error_line(result.stderr)
    assert mirror.requests == []


def test_a_build_that_fails_after_the_vm_exists_destroys_that_vm(lab: Lab) -> None:
    """No guest answers SSH on the API-only simulator: the first contact times out."""
    before = vm_ids(lab)
    result = lab.run("template", "create", "noble", *ADDRESS)
    assert result.code == 5, result
    assert "did not answer within 2s" in one_error_line(result.stderr)
    assert "template create failed" in result.stderr
    assert "destroyed" in result.stderr
    wait_gone(lab)
    assert vm_ids(lab) == before


def test_the_same_image_is_not_downloaded_twice_and_a_rebuilt_one_gets_its_own_file(
    lab: Lab, mirror: ImageMirror
) -> None:
    """`current` on cloud-images.ubuntu.com changes; PVE refuses to overwrite a file of the
    same name with another checksum, so each build of the image has its own file name."""
    image = f"/noble/current/{IMAGE}"
    mirror.publish(b"QFI\xfb" + bytes(3000))  # a build no earlier test left on the storage
    assert lab.run("template", "create", "noble", *ADDRESS).code == 5  # no guest: fails at SSH
    assert lab.run("template", "create", "noble", *ADDRESS).code == 5
    assert mirror.requests.count(image) == 1
    rebuilt = mirror.publish(b"QFI\xfb" + bytes(2000))
    result = lab.run("template", "create", "noble", *ADDRESS)
    assert result.code == 5, result
    assert mirror.requests.count(image) == 2
    assert f"noble-server-cloudimg-amd64-{rebuilt[:12]}.qcow2" in result.stderr


def test_bad_input_is_refused_before_the_lab_file_is_read(tmp_path: Path) -> None:
    from tests.support.cli import labctl

    result = labctl("template", "create", "noble", "--flavor", "desktop", "--ip", "192.0.2.5/24",
                    config=tmp_path / "absent.toml", state=tmp_path / "state")  # fmt: skip
    assert result.code == 2, result
    assert "--flavor must be one of server, kubuntu" in one_error_line(result.stderr)


def test_a_create_task_that_fails_leaves_nothing_to_clean_up(lab: Lab) -> None:
    """PVE's qmcreate removes its own VM on an error (here: a storage without `images`)."""
    before = vm_ids(lab)
    result = lab.run("template", "create", "noble", "--storage", "local", *ADDRESS)
    assert result.code == 4, result
    line = one_error_line(result.stderr)
    assert "unable to create VM" in line and "storage 'local' does not support vm images" in line
    assert "destroying" not in result.stderr
    assert vm_ids(lab) == before


def test_a_create_that_labctl_stops_waiting_for_is_destroyed(lab: Lab, mirror: ImageMirror) -> None:
    """The VM exists from the create request on: a create task that outlives timeouts.task
    is not left behind."""
    lab.api("POST", "/_sim/settings", json={"task_durations": {"qmcreate": 4.0}})
    lab.write(template={"image_base_url": mirror.url}, timeouts={"task": 1, "ssh": 2})
    before = vm_ids(lab)
    try:
        result = lab.run("template", "create", "noble", *ADDRESS)
    finally:
        lab.api("POST", "/_sim/settings", json={"task_durations": {"qmcreate": 0.05}})
    assert result.code == 4, result
    assert "did not finish within 1s" in one_error_line(result.stderr)
    assert "destroying vmid" in result.stderr and "destroyed" in result.stderr
    time.sleep(4.0)  # the create task's end must not bring the VM back
    assert vm_ids(lab) == before
