"""The wheel carries the playbooks and templates labctl runs, and never the Ollama test double."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return next(out.glob("labctl-*.whl"))


def test_wheel_ships_playbooks_and_templates_but_no_test_double(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "provision/_data/playbooks/site.yml",
        "provision/_data/playbooks/roles/ollama/tasks/main.yml",
        "provision/_data/templates/inventory.yml.j2",
        "provision/probe/agent.py",
        "provision/cli/__init__.py",
    ):
        assert needed in names, needed
    assert not any(name.startswith("tests/") or "ollama_double" in name for name in names)


def test_installed_wheel_finds_its_playbooks_outside_the_source_tree(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-c", "from provision.paths import data_dir; print(data_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = Path(done.stdout.strip())
    assert found == target / "provision" / "_data"
    assert (found / "playbooks" / "site.yml").is_file()
