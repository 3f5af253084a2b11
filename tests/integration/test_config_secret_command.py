"""token_secret_cmd: labctl runs the password manager's command and reads the secret it prints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provision.config import load_config
from provision.errors import ConfigError
from tests.support.lab_file import LAB, write


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LABCTL_"):
            monkeypatch.delenv(name)


def test_secret_command_supplies_the_secret(tmp_path: Path) -> None:
    text = LAB.replace('fingerprint = "AA:BB"', 'token_secret_cmd = "echo from-manager"')
    config = load_config(str(write(tmp_path, text, 0o644)))
    assert config.secret("proxmox.token_secret").reveal() == "from-manager"


def test_failing_secret_command_is_a_config_error(tmp_path: Path) -> None:
    text = LAB.replace('fingerprint = "AA:BB"', 'token_secret_cmd = "false"')
    with pytest.raises(ConfigError, match="exited 1"):
        load_config(str(write(tmp_path, text)))
