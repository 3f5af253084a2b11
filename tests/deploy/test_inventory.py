"""The rendered inventory works with plain ansible-inventory and carries the pinned SSH setup."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from provision import paths
from provision.deploy import DeployHost, DeployOptions, SshSettings, forget_hosts
from provision.deploy.inventory import (
    render_ansible_cfg,
    render_inventory,
    update_registry,
    write_private,
)
from provision.errors import DeployError

HOSTS = [DeployHost("gemma", "10.0.0.5", "debian"), DeployHost("qwen", "10.0.0.6", "ops", 2222)]


def ssh(tmp_path: Path) -> SshSettings:
    return SshSettings(private_key=tmp_path / "id_ed25519", known_hosts=tmp_path / "known hosts")


def render(tmp_path: Path, options: DeployOptions | None = None) -> Path:
    target = tmp_path / "inventory" / "labctl.yml"
    text = render_inventory(
        paths.templates_dir(),
        HOSTS,
        ssh(tmp_path),
        {h.name: (options or DeployOptions()).to_role_vars() for h in HOSTS},
        inventory_path=target,
        playbook_path=paths.data_dir() / "playbooks" / "site.yml",
    )
    write_private(target, text)
    return target


def ansible_inventory(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ansible-inventory", "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return dict(json.loads(out))


def test_ansible_inventory_lists_the_vms_in_the_ollama_group(tmp_path: Path) -> None:
    listed = ansible_inventory(render(tmp_path))
    assert sorted(listed["ollama"]["hosts"]) == ["gemma", "qwen"]
    qwen = listed["_meta"]["hostvars"]["qwen"]
    assert (qwen["ansible_host"], qwen["ansible_port"], qwen["ansible_user"]) == (
        "10.0.0.6",
        2222,
        "ops",
    )


def test_ssh_is_pinned_to_labctls_known_hosts_with_pipelining(tmp_path: Path) -> None:
    gemma = ansible_inventory(render(tmp_path))["_meta"]["hostvars"]["gemma"]
    args = gemma["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in args
    assert f"UserKnownHostsFile='{tmp_path / 'known hosts'}'" in args  # quoted: has a space
    assert gemma["ansible_ssh_private_key_file"] == str(tmp_path / "id_ed25519")
    assert gemma["ansible_pipelining"] is True


def test_deploy_options_become_role_variables(tmp_path: Path) -> None:
    options = DeployOptions(
        models=("gemma2:2b", "qwen2.5:0.5b"),
        ollama_version="0.30.1",
        download_base_url="http://mirror.lan/download/",
        environment={"OLLAMA_CONTEXT_LENGTH": "8192"},
    )
    gemma = ansible_inventory(render(tmp_path, options))["_meta"]["hostvars"]["gemma"]
    assert gemma["ollama_models"] == ["gemma2:2b", "qwen2.5:0.5b"]
    assert gemma["ollama_version"] == "0.30.1"
    assert gemma["ollama_download_base_url"] == "http://mirror.lan/download"
    assert gemma["ollama_environment"] == {"OLLAMA_CONTEXT_LENGTH": "8192"}


def test_role_defaults_stay_in_the_role_when_not_overridden(tmp_path: Path) -> None:
    gemma = ansible_inventory(render(tmp_path))["_meta"]["hostvars"]["gemma"]
    assert not [name for name in gemma if name.startswith("ollama_")]


def test_inventory_file_is_private(tmp_path: Path) -> None:
    assert stat.S_IMODE(render(tmp_path).stat().st_mode) == 0o600


def test_a_vm_name_ansible_cannot_use_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="cannot be an Ansible inventory hostname"):
        render_inventory(
            paths.templates_dir(),
            [DeployHost("bad name", "10.0.0.5", "d")],
            ssh(tmp_path),
            {},
            inventory_path=tmp_path / "i.yml",
            playbook_path=tmp_path / "site.yml",
        )


def test_only_ollama_role_variables_are_accepted() -> None:
    with pytest.raises(DeployError, match="not an ollama_\\* variable"):
        DeployOptions(role_vars={"ansible_user": "root"}).to_role_vars()


def test_ansible_cfg_turns_pipelining_and_host_key_checking_on(tmp_path: Path) -> None:
    text = render_ansible_cfg(
        paths.templates_dir(), roles_path=tmp_path, forks=3, connect_timeout_s=20
    )
    assert "pipelining = True" in text and "host_key_checking = True" in text
    assert "forks = 3" in text


def test_a_recreated_vm_on_the_same_address_gets_a_fresh_ssh_master_dir(tmp_path: Path) -> None:
    from provision.deploy.inventory import control_path_dir

    settings = ssh(tmp_path)
    host = DeployHost("gemma", "10.0.0.5", "debian")
    settings.known_hosts.write_text("10.0.0.5 ssh-ed25519 AAAAold\n10.0.0.6 ssh-ed25519 AAAAx\n")
    before = control_path_dir(host, settings)
    assert before == control_path_dir(host, settings)
    settings.known_hosts.write_text("10.0.0.5 ssh-ed25519 AAAAnew\n10.0.0.6 ssh-ed25519 AAAAx\n")
    after = control_path_dir(host, settings)
    assert before != after and after.startswith("~/.ansible/cp/labctl-")


def test_the_shared_inventory_keeps_every_deployed_vm_until_it_is_forgotten(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    update_registry(state, [HOSTS[0]], {"ollama_models": ["gemma2:2b"]})
    known = update_registry(state, [HOSTS[1]], {"ollama_models": ["qwen2.5:0.5b"]})
    assert [k.host.name for k in known] == ["gemma", "qwen"]
    assert known[0].role_vars == {"ollama_models": ["gemma2:2b"]}
    target = tmp_path / "inventory.yml"
    forget_hosts(state, ["gemma"], ssh(tmp_path), inventory_out=target)
    listed = ansible_inventory(target)
    assert listed["ollama"]["hosts"] == ["qwen"]
    assert listed["_meta"]["hostvars"]["qwen"]["ollama_models"] == ["qwen2.5:0.5b"]
    forget_hosts(state, ["qwen"], ssh(tmp_path), inventory_out=target)
    assert not target.exists()


def test_a_run_with_its_own_state_dir_keeps_the_inventory_there(tmp_path: Path) -> None:
    from provision.deploy import default_inventory_path

    assert default_inventory_path(tmp_path) == tmp_path / "inventory" / "labctl.yml"


def test_the_default_state_dir_in_a_source_tree_uses_the_top_level_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provision.deploy import default_inventory_path

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    expected = paths.source_root() / "inventory" / "labctl.yml"  # type: ignore[operator]
    assert default_inventory_path(tmp_path / "labctl") == expected
