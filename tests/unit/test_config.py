"""The lab file: defaults, env overrides, [vm.NAME] tables, and how secrets are guarded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from provision.config import KEYS, Secret, load_config
from provision.config_values import check_value
from provision.config_vms import VM_KEYS
from provision.errors import ConfigError
from tests.support.lab_file import LAB, write


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LABCTL_"):
            monkeypatch.delenv(name)


def test_vm_tables_get_defaults_for_what_they_leave_out(tmp_path: Path) -> None:
    config = load_config(str(write(tmp_path, LAB)))
    assert config.vms["gemma"].shape.cores == 8
    assert config.vms["gemma"].shape.memory_mib == 16384
    assert config.vms["gemma"].shape.disk_gib == 40
    assert config.vms["tiny"].shape.cores == 4  # defaults.cores
    assert config.vms["tiny"].shape.cpu_type == "host"
    assert config.get("proxmox.port") == 8006


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABCTL_PROXMOX_PORT", "9443")
    monkeypatch.setenv("LABCTL_PROXMOX_VERIFY", "false")
    config = load_config(str(write(tmp_path, LAB)))
    assert config.get("proxmox.port") == 9443
    assert config.get("proxmox.verify") is False


def test_secret_from_env_never_shows_in_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABCTL_PROXMOX_TOKEN_SECRET", "s3cr3t-uuid")
    config = load_config(str(write(tmp_path, LAB, mode=0o644)))  # no secret in the file: ok
    secret = config.secret("proxmox.token_secret")
    assert secret.reveal() == "s3cr3t-uuid"
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in str(secret)


def test_world_readable_file_holding_a_secret_is_refused_with_the_fix(tmp_path: Path) -> None:
    text = LAB.replace('fingerprint = "AA:BB"', 'token_secret = "zq9-secret-value"')
    path = write(tmp_path, text, 0o644)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "chmod 600" in str(caught.value)
    assert "zq9-secret-value" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[proxmox]\nhots = 'x'\n", "unknown key proxmox.hots"),
        ("[bogus]\n", "unknown section"),
        ("[proxmox]\nport = 'x'\n", 'proxmox.port must be a whole number, got the string "x"'),
        ("[vm.a_b]\n", "invalid VM name"),
        ("[vm.x]\nram = '32X'\n", "vm.x"),
        ("[vm.x]\nsize = 3\n", "unknown key vm.x.size"),
        ("[proxmox\n", "invalid TOML"),
    ],
)
def test_bad_lab_files_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        load_config(str(write(tmp_path, text)))


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (
            'models = "gemma2:2b"',
            'vm.x.models must be a list of strings, got the string "gemma2:2b"',
        ),
        ("models = [1]", "vm.x.models must be a list of strings, got a list holding the number 1"),
        ('full = "false"', 'vm.x.full must be true or false, got the string "false"'),
        ("full = 1", "vm.x.full must be true or false, got the number 1"),
        ('cores = "8"', 'vm.x.cores must be a whole number, got the string "8"'),
        ("cores = true", "vm.x.cores must be a whole number, got the boolean true"),
        ("cores = 2.5", "vm.x.cores must be a whole number, got the number 2.5"),
        ("ram = 16384", "vm.x.ram must be a string, got the number 16384"),
        ("disk = 40", "vm.x.disk must be a string, got the number 40"),
        ("cpu_type = 1", "vm.x.cpu_type must be a string, got the number 1"),
        ("node = false", "vm.x.node must be a string, got the boolean false"),
        ('ip = ["dhcp"]', "vm.x.ip must be a string, got a list of strings"),
        ("gateway = { a = 1 }", "vm.x.gateway must be a string, got a table"),
    ],
)
def test_each_vm_key_is_type_checked_with_a_one_line_error(
    tmp_path: Path, line: str, says: str
) -> None:
    path = write(tmp_path, f"[vm.x]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    message = str(caught.value)
    assert message == f"{path}: {says}"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[vm.x]\nram = '32X'\n", "vm.x.ram: "),
        ("[vm.x]\ncores = 0\n", "vm.x.cores: core count must be at least 1"),
        ("[vm.x]\ndisk = '1.5G'\n", "vm.x.disk: "),
        ("[defaults]\nram = '32X'\n[vm.x]\n", "defaults.ram: "),
        ("vm = 3\n", "vm must hold [vm.NAME] tables, got the number 3"),
        ("[vm]\nx = 3\n", "vm.x must be a table, got the number 3"),
    ],
)
def test_bad_vm_values_name_the_file_and_the_key_they_came_from(
    tmp_path: Path, text: str, says: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(f"{path}: {says}")


def test_well_typed_vm_keys_reach_the_vm_spec(tmp_path: Path) -> None:
    text = (
        '[vm.x]\ncores = 2\nram = "2G"\ndisk = "40G"\ncpu_type = "x86-64-v3"\n'
        'node = "pve2"\nfull = true\nip = "10.0.0.5/24"\ngateway = "10.0.0.1"\n'
        'models = ["qwen2.5:0.5b"]\n'
    )
    spec = load_config(str(write(tmp_path, text))).vms["x"]
    assert (spec.shape.cores, spec.shape.memory_mib, spec.shape.disk_gib) == (2, 2048, 40)
    assert spec.shape.cpu_type == "x86-64-v3" and spec.node == "pve2" and spec.full is True
    assert (spec.ip, spec.gateway, spec.models) == ("10.0.0.5/24", "10.0.0.1", ("qwen2.5:0.5b",))


def test_lab_wide_list_keys_hold_strings_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="deploy.models must be a list of strings"):
        load_config(str(write(tmp_path, "[deploy]\nmodels = ['a', 2]\n")))


def test_a_mistyped_secret_is_not_quoted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(write(tmp_path, "[proxmox]\ntoken_secret = 12345678\n")))
    assert str(caught.value).endswith("proxmox.token_secret must be a string, got a number")


def test_missing_lab_file_points_at_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="labctl init"):
        load_config(None)


def test_every_key_is_declared_once_with_help() -> None:
    paths = [key.path for key in KEYS]
    assert len(paths) == len(set(paths))
    assert all(key.help for key in KEYS)
    assert all(
        check_value("defaults", key.path, key.type, key.default) == key.default for key in KEYS
    )


def test_secret_is_falsy_when_empty() -> None:
    assert not Secret("")


def reference_markdown() -> str:
    """The lab-file reference of the README, as KEYS and VM_KEYS declare it."""
    rows = ["| key | type | default | env | what |", "|---|---|---|---|---|"]
    for key in KEYS:
        default = "" if key.secret else shown_default(key.default)
        rows.append(
            f"| `{key.path}` | {getattr(key.type, 'shown', key.type.__name__)} | {default} | "
            f"`{key.env}` | "
            f"{key.help.replace('|', '/')} |"
        )
    rows += ["", "`[vm.NAME]` tables declare the lab's VMs; their keys:", ""]
    for vm_key in VM_KEYS:
        default = f", default `{vm_key.default_from}`" if vm_key.default_from else ""
        rows.append(f"- `{vm_key.name}` ({vm_key.type.__name__}{default}): {vm_key.help}")
    return "\n".join(rows)


def shown_default(value: Any) -> str:
    return f"`{json.dumps(value)}`" if value not in ("", [], {}) else ""


def test_readme_documents_every_key_and_exit_code() -> None:
    from provision.errors import EXIT_CODE_HELP

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert reference_markdown() in readme
    for code, meaning in EXIT_CODE_HELP.items():
        assert f"| {int(code)} | {meaning} |" in readme
