"""The role's state module (playbooks/roles/ollama/library/ollama_state.py): what it parses and
when it says a managed file differs. Any "differs" makes the role run its ordinary tasks."""

from __future__ import annotations

import grp
import hashlib
import importlib.util
import os
import pwd
from pathlib import Path
from types import ModuleType

import pytest

MODULE = Path(__file__).resolve().parents[2] / "playbooks/roles/ollama/library/ollama_state.py"


@pytest.fixture(scope="module")
def state() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ollama_state", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("ollama version is 0.32.15\n", "0.32.15"),
        (
            "Warning: could not connect to a running Ollama instance\n"
            + "Warning: client version is 0.5.1\n",
            "0.5.1",
        ),
        # a server of another version answers: the last line is the binary's own
        ("ollama version is 0.3.0\nWarning: client version is 0.4.0\n", "0.4.0"),
        ("ollama version is v0.6.2\n", "0.6.2"),
        ("", ""),
        ("bash: ollama: command not found\n", ""),
    ],
)
def test_the_binary_version_is_the_last_one_ollama_prints(
    state: ModuleType, output: str, version: str
) -> None:
    assert state.binary_version(output) == version


def test_systemd_properties_are_read_from_systemctl_show(state: ModuleType) -> None:
    out = (
        "LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n"
        "NeedDaemonReload=no\nOther=x\n"
    )
    assert state.systemd_state(out) == {
        "LoadState": "loaded",
        "ActiveState": "active",
        "SubState": "running",
        "UnitFileState": "enabled",
        "NeedDaemonReload": "no",
    }


def _me() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def _file_spec(path: Path, content: bytes, mode: str = "0644") -> dict[str, str]:
    owner, group = _me()
    return {
        "path": str(path),
        "checksum": hashlib.sha1(content).hexdigest(),
        "mode": mode,
        "owner": owner,
        "group": group,
    }


def test_a_file_with_the_wanted_content_owner_and_mode_does_not_differ(
    state: ModuleType, tmp_path: Path
) -> None:
    unit = tmp_path / "ollama.service"
    unit.write_bytes(b"[Service]\n")
    unit.chmod(0o644)
    assert state.differing_paths([_file_spec(unit, b"[Service]\n")], []) == []


def test_content_mode_or_absence_make_a_file_differ(state: ModuleType, tmp_path: Path) -> None:
    edited, loose, gone = tmp_path / "edited", tmp_path / "loose", tmp_path / "gone"
    edited.write_bytes(b"[Service]\n# local edit\n")
    edited.chmod(0o644)
    loose.write_bytes(b"[Service]\n")
    loose.chmod(0o666)
    specs = [_file_spec(path, b"[Service]\n") for path in (edited, loose, gone)]
    assert state.differing_paths(specs, []) == [str(edited), str(loose), str(gone)]


def test_a_file_of_another_owner_differs(state: ModuleType, tmp_path: Path) -> None:
    unit = tmp_path / "unit"
    unit.write_bytes(b"x")
    unit.chmod(0o644)
    spec = {**_file_spec(unit, b"x"), "owner": "nosuchuser-labctl"}
    assert state.differing_paths([spec], []) == [str(unit)]


def test_directories_differ_by_mode_kind_or_absence(state: ModuleType, tmp_path: Path) -> None:
    owner, group = _me()
    good, loose, afile = tmp_path / "good", tmp_path / "loose", tmp_path / "afile"
    good.mkdir(mode=0o755)
    good.chmod(0o755)
    loose.mkdir()
    loose.chmod(0o777)
    afile.write_text("")
    afile.chmod(0o755)
    specs = [
        {"path": str(p), "owner": owner, "group": group, "mode": "0755"}
        for p in (good, loose, afile, tmp_path / "missing")
    ]
    assert state.differing_paths([], specs) == [str(loose), str(afile), str(tmp_path / "missing")]
