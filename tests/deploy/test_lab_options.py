"""Deploy settings come from the lab file ([deploy], [ssh], per-VM models) and the command line."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from provision.config import LabConfig, load_config
from provision.deploy import deploy_after_up, deploy_options, ssh_settings
from provision.errors import DeployError

LAB = """
[proxmox]
host = "pve.lan"
token_id = "root@pam!labctl"
fingerprint = "AA:BB"

[ssh]
user = "debian"
key = "~/.ssh/lab_ed25519"

[deploy]
models = ["gemma2:2b"]
ollama_version = "0.30.1"
ollama_base_url = "http://mirror.lan/ollama/releases/download"
extra_vars = { ollama_environment = { HTTPS_PROXY = "http://proxy.lan:3128" } }

[vm.gemma]
cores = 4

[vm.qwen]
models = ["qwen2.5:0.5b", "gemma2:2b"]
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabConfig:
    for name in list(os.environ):
        if name.startswith("LABCTL_"):
            monkeypatch.delenv(name)
    path = tmp_path / "labctl.toml"
    path.write_text(LAB)
    path.chmod(0o600)
    return load_config(str(path))


def test_lab_file_deploy_table_becomes_role_variables(config: LabConfig) -> None:
    role_vars = deploy_options(config, vm_name="gemma").to_role_vars()
    assert role_vars == {
        "ollama_models": ["gemma2:2b"],
        "ollama_version": "0.30.1",
        "ollama_download_base_url": "http://mirror.lan/ollama/releases/download",
        "ollama_environment": {"HTTPS_PROXY": "http://proxy.lan:3128"},
    }


def test_a_vms_own_models_win_over_the_lab_default(config: LabConfig) -> None:
    assert deploy_options(config, vm_name="qwen").models == ("qwen2.5:0.5b", "gemma2:2b")


def test_command_line_models_and_version_win_over_the_lab_file(config: LabConfig) -> None:
    options = deploy_options(
        config, vm_name="qwen", models=["phi3:mini"], ollama_version="0.32.15", check=True
    )
    assert options.models == ("phi3:mini",) and options.ollama_version == "0.32.15"
    assert options.check


def test_ssh_uses_the_lab_key_and_the_pinned_known_hosts(config: LabConfig, tmp_path: Path) -> None:
    ssh = ssh_settings(config, tmp_path)
    assert ssh.private_key == Path("~/.ssh/lab_ed25519").expanduser()
    assert ssh.known_hosts == tmp_path / "known_hosts"


def test_deploy_after_up_without_an_address_says_what_to_do(
    config: LabConfig, tmp_path: Path
) -> None:
    app = SimpleNamespace(config=config, state_dir=tmp_path, reporter=None)
    with pytest.raises(DeployError, match="has no address") as failure:
        deploy_after_up(app, SimpleNamespace(name="gemma", ip=None))
    assert "labctl deploy gemma" in str(failure.value)
