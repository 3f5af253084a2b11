"""The playbooks pass ansible-playbook --syntax-check and ansible-lint's production profile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("playbook", ["site.yml", "template.yml"])
def test_playbook_passes_syntax_check(playbook: str) -> None:
    result = subprocess.run(
        ["ansible-playbook", "--syntax-check", "-i", "localhost,", f"playbooks/{playbook}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_playbooks_pass_ansible_lint_production_profile() -> None:
    if shutil.which("ansible-lint") is None:
        pytest.skip("ansible-lint is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        ["ansible-lint", "--offline", "--profile", "production", "--nocolor", "playbooks/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_every_role_variable_is_documented_in_the_role_readme() -> None:
    import yaml

    role = ROOT / "playbooks/roles/ollama"
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    readme = (role / "README.md").read_text()
    assert all(name.startswith("ollama_") for name in defaults)
    missing = [name for name in defaults if f"`{name}`" not in readme]
    assert missing == []
