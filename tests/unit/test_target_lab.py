"""Which target the `real_pve` tests get: LABCTL_TEST_PVE's lab file, checked, or the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.target_lab import ENV, TargetLab, real_pve_config


def test_without_the_variable_the_tests_run_on_the_simulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert real_pve_config() is None
    monkeypatch.setenv(ENV, "  ")
    assert real_pve_config() is None


def test_the_variable_names_a_readable_toml_lab_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lab_file = tmp_path / "labctl.toml"
    lab_file.write_text('[proxmox]\nhost = "pve.lan"\n')
    monkeypatch.setenv(ENV, str(lab_file))
    assert real_pve_config() == lab_file
    monkeypatch.setenv(ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(RuntimeError, match="no such lab file"):
        real_pve_config()
    lab_file.write_text("[proxmox\n")
    monkeypatch.setenv(ENV, str(lab_file))
    with pytest.raises(ValueError):
        real_pve_config()


def test_every_vm_the_tests_make_is_named_labctl_test() -> None:
    assert TargetLab.vm("life") == "labctl-test-life"
