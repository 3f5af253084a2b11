"""The pure rules of `labctl doctor`: property strings, the template's drives, the storage rule
for linked clones, AVX2, the local checks, and the privilege list against README's role."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provision.config import KEYS, LabConfig
from provision.pve.doctor.base import NEEDED_PRIVILEGES, OK, PROBLEM, WARNING
from provision.pve.doctor.local import check_ssh_key, check_tls
from provision.pve.doctor.rules import (
    Volume,
    agent_enabled,
    boot_volume,
    cloudinit_drive,
    has_avx2,
    hides_avx2,
    parse_property_string,
    supports_linked_clone,
)
from tests.support.readme_pveum import role_privileges


def lab_config(**values: Any) -> LabConfig:
    return LabConfig(values={k.path: k.default for k in KEYS} | values)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", {"enabled": "1"}),
        ("enabled=1,fstrim_cloned_disks=1", {"enabled": "1", "fstrim_cloned_disks": "1"}),
        ("0,type=virtio", {"enabled": "0", "type": "virtio"}),
        ("", {}),
    ],
)
def test_parse_property_string(text: str, expected: dict[str, str]) -> None:
    assert parse_property_string(text, "enabled") == expected


def test_a_volume_id_is_the_default_key_even_with_a_colon() -> None:
    parsed = parse_property_string("local-lvm:base-9000-disk-0,size=3584M", "file")
    assert parsed == {"file": "local-lvm:base-9000-disk-0", "size": "3584M"}


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("1", True), ("enabled=1", True), ("enabled=1,type=isa", True), ("0", False),
     ("enabled=0", False), (None, False), ("", False)],
)  # fmt: skip
def test_agent_enabled(value: str | None, enabled: bool) -> None:
    assert agent_enabled(value) is enabled


def test_cloudinit_drive_and_boot_volume() -> None:
    config = {
        "boot": "order=scsi0;ide2;net0",
        "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
        "scsi0": "local-lvm:base-9000-disk-0,size=3584M",
    }
    assert cloudinit_drive(config) == "ide2"
    assert cloudinit_drive({"ide2": "none,media=cdrom", "scsi0": config["scsi0"]}) is None
    assert boot_volume(config) == Volume("scsi0", "local-lvm", "base-9000-disk-0", 3)
    assert boot_volume({"ide2": config["ide2"]}) is None


@pytest.mark.parametrize(
    ("kind", "volume", "linked"),
    [
        ("lvmthin", "base-9000-disk-0", True),
        ("zfspool", "base-9000-disk-0", True),
        ("rbd", "base-9000-disk-0", True),
        ("dir", "9000/base-9000-disk-0.qcow2", True),
        ("nfs", "9000/base-9000-disk-0.qcow2", True),
        ("dir", "9000/base-9000-disk-0.raw", False),
        ("lvm", "base-9000-disk-0", False),
        ("iscsi", "0.0.1.scsi-36001", False),
    ],
)
def test_linked_clone_storage_rule(kind: str, volume: str, linked: bool) -> None:
    assert supports_linked_clone(kind, volume) is linked


@pytest.mark.parametrize(
    ("cpu", "hidden"),
    [("host", False), ("x86-64-v3", False), ("kvm64", True), ("qemu64", True),
     ("x86-64-v2", True), ("x86-64-v2-AES", True), ("cputype=kvm64,flags=+aes", True),
     ("", True)],
)  # fmt: skip
def test_cpu_types_hiding_avx2(cpu: str, hidden: bool) -> None:
    assert hides_avx2(cpu) is hidden  # no cpu at all is PVE's kvm64


def test_node_flags() -> None:
    assert has_avx2("fpu sse sse2 avx avx2 fma")
    assert not has_avx2("fpu sse sse2 avx avx512f")


def test_needed_privileges_are_readmes_role() -> None:
    assert {n.privilege for n in NEEDED_PRIVILEGES} == set(role_privileges())


def test_tls_row_says_pinned_or_verified() -> None:
    pinned = check_tls(lab_config(**{"proxmox.fingerprint": "AB" * 32}))
    assert pinned.status == OK and "pinned" in pinned.detail
    assert "system's CAs" in check_tls(lab_config()).detail
    missing = check_tls(lab_config(**{"proxmox.ca_bundle": "/no/such/ca.pem"}))
    assert missing.status == PROBLEM
    assert check_tls(lab_config(**{"proxmox.verify": False})).status == WARNING


def test_ssh_key_row(tmp_path: Path) -> None:
    key = tmp_path / "id"
    config = lab_config(**{"ssh.key": str(key)})
    assert check_ssh_key(config).status == PROBLEM
    key.write_text("private")
    key.chmod(0o600)
    no_pub = check_ssh_key(config)
    assert no_pub.status == PROBLEM and ".pub" in no_pub.detail and "ssh-keygen -y" in no_pub.fix
    Path(f"{key}.pub").write_text("ssh-ed25519 AAAA")
    assert check_ssh_key(config).status == OK
    key.chmod(0o644)
    loose = check_ssh_key(config)
    assert loose.status == WARNING and "chmod 600" in loose.fix
