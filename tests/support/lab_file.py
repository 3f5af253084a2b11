"""A small lab file (two [vm.NAME] tables, no secret) and a way to write it with a file mode."""

from __future__ import annotations

from pathlib import Path

LAB = """
[proxmox]
host = "pve.lan"
token_id = "root@pam!labctl"
fingerprint = "AA:BB"

[ssh]
user = "ubuntu"

[vm.gemma]
cores = 8
ram = "16G"
disk = "40G"

[vm.tiny]
ram = "2G"
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "labctl.toml"
    path.write_text(text)
    path.chmod(mode)
    return path
