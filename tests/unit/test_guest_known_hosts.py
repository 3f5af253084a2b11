"""labctl's known_hosts: pin replaces, forget removes, aliases work, nonsense is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.errors import GuestError
from provision.guest import forget_host_key, pin_host_key, pinned_hosts

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA root@a"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB root@b"


def test_pin_writes_openssh_lines_with_aliases_and_mode_600(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    entry = pin_host_key(known, "10.0.0.5", KEY_A, aliases=["gemma"])
    assert entry == "10.0.0.5,gemma " + " ".join(KEY_A.split()[:2])
    assert known.read_text() == entry + "\n"
    assert known.stat().st_mode & 0o777 == 0o600


def test_pinning_again_replaces_the_old_key_for_that_host(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    pin_host_key(known, "10.0.0.5", KEY_A, aliases=["gemma"])
    pin_host_key(known, "10.0.0.6", KEY_A)
    pin_host_key(known, "10.0.0.5", KEY_B, aliases=["gemma"])
    lines = known.read_text().splitlines()
    assert len(lines) == 2 and lines[-1].split()[2] == KEY_B.split()[1]


def test_non_default_port_uses_brackets(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    pin_host_key(known, "127.0.0.1", KEY_A, port=2222)
    assert pinned_hosts(known) == ["[127.0.0.1]:2222"]


def test_forget_by_address_or_alias(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    pin_host_key(known, "10.0.0.5", KEY_A, aliases=["gemma"])
    pin_host_key(known, "10.0.0.6", KEY_B, aliases=["tiny"])
    assert forget_host_key(known, "gemma") is True
    assert pinned_hosts(known) == ["10.0.0.6", "tiny"]
    assert forget_host_key(known, "10.0.0.6") is True
    assert forget_host_key(known, "10.0.0.6") is False
    assert known.read_text() == ""


def test_something_that_is_not_a_public_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="not an SSH public key"):
        pin_host_key(tmp_path / "known_hosts", "10.0.0.5", "-----BEGIN OPENSSH PRIVATE KEY-----")
