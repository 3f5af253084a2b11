"""Cloud images on the simulator: download-url with PVE's checksum check, VM create with
import-from, template conversion, and an agent that answers only once it is installed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxmoxer.core import ResourceException

from provision.sim.server import SimServer
from tests.support.image_mirror import IMAGE, ImageMirror
from tests.support.sim_api import token_api, wait

NODE = "pve"


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[ImageMirror]:
    with ImageMirror(tmp_path / "mirror") as served:
        yield served


@pytest.fixture
def api(fresh_sim: SimServer) -> Any:
    return token_api(fresh_sim)


def log_of(api: Any, upid: str) -> list[str]:
    return [entry["t"] for entry in api.nodes(NODE).tasks(upid).log.get(limit=500)]


def download(api: Any, mirror: ImageMirror, checksum: str, name: str = "noble.qcow2") -> str:
    result: str = (
        api.nodes(NODE)
        .storage("local")("download-url")
        .post(
            url=mirror.image_url,
            content="import",
            filename=name,
            checksum=checksum,
            **{"checksum-algorithm": "sha256"},
        )
    )
    return result


def sha256_of_image(mirror: ImageMirror) -> str:
    return hashlib.sha256((mirror.directory / IMAGE).read_bytes()).hexdigest()


def test_download_url_verifies_the_checksum_and_lists_the_import_volume(
    api: Any, mirror: ImageMirror
) -> None:
    upid = download(api, mirror, sha256_of_image(mirror))
    assert wait(api, upid)["exitstatus"] == "OK"
    assert ":download:noble.qcow2:" in upid
    assert "calculating checksum...OK, checksum verified" in log_of(api, upid)
    content = api.nodes(NODE).storage("local").content.get(content="import")
    assert [c["volid"] for c in content] == ["local:import/noble.qcow2"]
    assert mirror.requests == [f"/noble/current/{IMAGE}"]


def test_download_url_checksum_mismatch_fails_the_task_with_pve_text(
    api: Any, mirror: ImageMirror
) -> None:
    wrong = "0" * 64
    upid = download(api, mirror, wrong)
    status = wait(api, upid)
    got = sha256_of_image(mirror)
    assert status["exitstatus"] == f"checksum mismatch: got '{got}' != expect '{wrong}'"
    assert api.nodes(NODE).storage("local").content.get() == []


def test_download_url_keeps_an_existing_file_with_the_right_checksum(
    api: Any, mirror: ImageMirror
) -> None:
    checksum = sha256_of_image(mirror)
    assert wait(api, download(api, mirror, checksum))["exitstatus"] == "OK"
    again = download(api, mirror, checksum)
    assert wait(api, again)["exitstatus"] == "OK"
    assert any("no need to download" in line for line in log_of(api, again))
    assert len(mirror.requests) == 1


@pytest.mark.parametrize(
    ("storage", "filename", "status", "text"),
    [
        ("local-lvm", "noble.qcow2", 500, "not a file based storage"),
        ("local", "noble.img", 400, "Parameter verification failed"),
    ],
)
def test_download_url_refuses_block_storage_and_a_wrong_extension(
    api: Any, mirror: ImageMirror, storage: str, filename: str, status: int, text: str
) -> None:
    with pytest.raises(ResourceException) as raised:
        api.nodes(NODE).storage(storage)("download-url").post(
            url=mirror.image_url, content="import", filename=filename
        )
    assert raised.value.status_code == status
    assert text in str(raised.value)


def imported_vm(api: Any, mirror: ImageMirror, vmid: int = 120) -> int:
    assert wait(api, download(api, mirror, sha256_of_image(mirror)))["exitstatus"] == "OK"
    upid = api.nodes(NODE).qemu.post(
        vmid=vmid,
        name="noble-template",
        agent=1,
        cpu="host",
        memory=2048,
        net0="virtio,bridge=vmbr0",
        scsihw="virtio-scsi-pci",
        scsi0="local-lvm:0,import-from=local:import/noble.qcow2",
        ide2="local-lvm:cloudinit",
        serial0="socket",
        ipconfig0="ip=10.0.0.5/24,gw=10.0.0.1",
    )
    assert ":qmcreate:" in upid
    assert wait(api, upid)["exitstatus"] == "OK"
    return vmid


def test_create_with_import_from_makes_the_disk_and_the_cloud_init_drive(
    api: Any, mirror: ImageMirror
) -> None:
    vmid = imported_vm(api, mirror)
    config = api.nodes(NODE).qemu(vmid).config.get()
    assert config["scsi0"] == "local-lvm:vm-120-disk-0,size=3584M"
    assert config["ide2"] == "local-lvm:vm-120-cloudinit,media=cdrom"
    assert config["agent"] == "1"


def test_create_over_an_existing_vmid_is_refused_at_once(api: Any) -> None:
    with pytest.raises(ResourceException) as raised:
        api.nodes(NODE).qemu.post(vmid=9000, name="again")
    assert raised.value.status_code == 500
    assert "unable to create VM 9000 - VM 9000 already exists on node 'pve'" in str(raised.value)


def test_import_from_a_missing_volume_fails_the_task(api: Any) -> None:
    upid = api.nodes(NODE).qemu.post(
        vmid=121, scsi0="local-lvm:0,import-from=local:import/absent.qcow2"
    )
    status = wait(api, upid)["exitstatus"]
    assert status == "unable to create VM 121 - volume 'local:import/absent.qcow2' does not exist"
    assert 121 not in [vm["vmid"] for vm in api.nodes(NODE).qemu.get()]


def test_template_conversion_renames_the_disk_and_refuses_twice(
    api: Any, mirror: ImageMirror
) -> None:
    vmid = imported_vm(api, mirror)
    upid = api.nodes(NODE).qemu(vmid).template.post()
    assert ":qmtemplate:" in upid
    assert wait(api, upid)["exitstatus"] == "OK"
    config = api.nodes(NODE).qemu(vmid).config.get()
    assert config["template"] == 1
    assert config["scsi0"].startswith("local-lvm:base-120-disk-0,")
    with pytest.raises(ResourceException) as raised:
        api.nodes(NODE).qemu(vmid).template.post()
    assert "you can't convert a template to a template" in str(raised.value)


def test_a_running_vm_cannot_become_a_template(api: Any, mirror: ImageMirror) -> None:
    vmid = imported_vm(api, mirror)
    assert wait(api, api.nodes(NODE).qemu(vmid).status.start.post())["exitstatus"] == "OK"
    with pytest.raises(ResourceException) as raised:
        api.nodes(NODE).qemu(vmid).template.post()
    assert "you can't convert a VM to template if VM is running" in str(raised.value)


def test_the_agent_of_an_imported_cloud_image_does_not_answer(
    api: Any, mirror: ImageMirror
) -> None:
    """A cloud image has no qemu-guest-agent; the homelab template 9000 has one."""
    vmid = imported_vm(api, mirror)
    assert wait(api, api.nodes(NODE).qemu(vmid).status.start.post())["exitstatus"] == "OK"
    with pytest.raises(ResourceException) as raised:
        api.nodes(NODE).qemu(vmid).agent.ping.post()
    assert "QEMU guest agent is not running" in str(raised.value)
