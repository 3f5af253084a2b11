"""The role's free-space check: what the state module reads (statvfs of the directories the role
writes to) and what the filter makes of it (filter_plugins/ollama_disk.py). The guest test in
test_deploy_guest.py runs both through the real role on a real small filesystem."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROLE = Path(__file__).resolve().parents[2] / "playbooks/roles/ollama"
GIB, MIB = 1 << 30, 1 << 20
MODELS_DIR = "/usr/share/ollama/.ollama/models"


def _load(relative: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROLE / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def disk_filter() -> ModuleType:
    return _load("filter_plugins/ollama_disk.py")


@pytest.fixture(scope="module")
def state() -> ModuleType:
    return _load("library/ollama_state.py")


def fs(mount: str, device: int, free: float, size: float = 30, used: float = 2) -> dict[str, Any]:
    return {
        "mount": mount,
        "device": device,
        "free": int(free * GIB),
        "size": int(size * GIB),
        "used": int(used * GIB),
    }


def shortage(module: ModuleType, disk: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The role's defaults (defaults/main.yml) for a fresh install of 0.32.15 + gemma2:2b."""
    args: dict[str, Any] = {
        "install": True,
        "version": "0.32.15",
        "download_dir": "/var/cache",
        "prefix": "/usr/local",
        "models_dir": MODELS_DIR,
        "tarball_bytes": 2 * GIB,
        "unpacked_bytes": 4_563_402_752,
        "models": ["gemma2:2b"],
        "model_bytes": {"gemma2:2b": 1_629_518_495},
        "default_model_bytes": 5 * GIB,
        "margin_bytes": GIB,
    }
    args.update(overrides)
    result: dict[str, Any] = module.ollama_disk_shortage(disk, **args)
    return result


def one_fs(free: float, **kwargs: Any) -> dict[str, Any]:
    root = fs("/", 1, free, **kwargs)
    return {"/var/cache": root, "/usr/local": root, MODELS_DIR: root}


def test_a_stock_cloud_image_disk_is_short_and_the_line_says_by_how_much_and_what_to_do(
    disk_filter: ModuleType,
) -> None:
    found = shortage(disk_filter, one_fs(0.45, size=2.3, used=1.74))
    assert found["text"] == (
        "not enough disk on /: 0.4 GiB free, Ollama 0.32.15 and gemma2:2b need 8.8 GiB there "
        "(tarball 2.0 + unpacked 4.3 + models 1.5 + margin 1.0 GiB)"
    )
    assert found["mount"] == "/" and found["need"] == 2 * GIB + 4_563_402_752 + 1_629_518_495 + GIB
    assert found["suggest_gib"] == 32  # labctl up's default is enough


def test_a_32g_disk_has_room_for_ollama_and_gemma2(disk_filter: ModuleType) -> None:
    # Ubuntu 24.04's cloud image grown to 32G: ~30.9 GiB root filesystem, ~2 GiB used
    assert shortage(disk_filter, one_fs(27.4, size=30.9, used=2.0)) == {}


def test_nothing_to_write_checks_nothing(disk_filter: ModuleType) -> None:
    assert shortage(disk_filter, one_fs(0.01), install=False, models=[]) == {}


def test_each_part_counts_on_its_own_filesystem(disk_filter: ModuleType) -> None:
    """The tarball on /var, the tree on a small /usr/local, the models on /: only /usr/local is
    short, and only what lands there is counted against it."""
    disk = {
        "/var/cache": fs("/var", 2, 3.5),
        "/usr/local": fs("/usr/local", 3, 5.0),
        MODELS_DIR: fs("/", 1, 20),
    }
    found = shortage(disk_filter, disk)
    assert found["text"] == (
        "not enough disk on /usr/local: 5.0 GiB free, Ollama 0.32.15 needs "
        "5.3 GiB there (unpacked 4.3 + margin 1.0 GiB)"
    )
    # the same directories, each with room: no shortage, although their sum would not fit one
    assert shortage(disk_filter, {**disk, "/usr/local": fs("/usr/local", 3, 5.5)}) == {}


def test_two_mount_points_of_one_device_are_one_filesystem(disk_filter: ModuleType) -> None:
    disk = {
        "/var/cache": fs("/var/cache", 1, 6),
        "/usr/local": fs("/", 1, 6),
        MODELS_DIR: fs("/", 1, 6),
    }
    assert "need 8.8 GiB there" in shortage(disk_filter, disk)["text"]


def test_models_only_count_their_own_size_and_unlisted_ones_the_default(
    disk_filter: ModuleType,
) -> None:
    disk = one_fs(3)
    pulls = shortage(
        disk_filter,
        disk,
        install=False,
        models=["gemma2:2b", "llama3.2:latest"],
        model_bytes={"gemma2:2b": 1_629_518_495, "llama3.2": 2_019_393_189},
    )
    assert pulls["text"] == (
        "not enough disk on /: 3.0 GiB free, 2 models need 4.4 GiB there "
        "(models 3.4 + margin 1.0 GiB)"
    )
    unlisted = shortage(disk_filter, disk, install=False, models=["qwen2.5:7b"])
    assert unlisted["text"].endswith("qwen2.5:7b needs 6.0 GiB there (models 5.0 + margin 1.0 GiB)")
    assert shortage(disk_filter, one_fs(2.6), install=False, models=["gemma2:2b"]) == {}


def test_small_needs_are_told_in_mib(disk_filter: ModuleType) -> None:
    small = {
        "mount": "/usr/local",
        "device": 7,
        "free": 47 * MIB + 5,
        "size": 48 * MIB,
        "used": MIB,
    }
    disk = {"/var/cache": fs("/", 1, 20), "/usr/local": small, MODELS_DIR: fs("/", 1, 20)}
    found = shortage(
        disk_filter, disk, tarball_bytes=26 * MIB, unpacked_bytes=64 * MIB + 1, margin_bytes=8 * MIB
    )
    assert found["text"] == (
        "not enough disk on /usr/local: 47 MiB free, Ollama 0.32.15 needs "
        "73 MiB there (unpacked 64 + margin 8 MiB)"
    )


@pytest.mark.parametrize(
    ("size", "used", "free", "need", "suggested"),
    [
        (2.3, 1.74, 0.45, 9.0, 32),  # the stock image: labctl's default does it
        (30.9, 20.0, 9.3, 14.0, 40),  # a 32G VM with models: used + need + 5 % reserve + /boot
        (61.0, 50.0, 8.0, 30.0, 88),
    ],
)
def test_the_suggested_disk_holds_what_is_used_plus_the_need(
    disk_filter: ModuleType,
    size: float,
    used: float,
    free: float,
    need: float,
    suggested: int,
) -> None:
    assert (
        disk_filter._suggested_disk_gib(fs("/", 1, free, size, used), int(need * GIB)) == suggested
    )


def test_the_state_module_reads_the_filesystem_of_a_directory_not_made_yet(
    state: ModuleType,
    tmp_path: Path,
) -> None:
    read = state.filesystem_of(str(tmp_path / "not" / "made" / "yet"))
    st, vfs = os.stat(tmp_path), os.statvfs(tmp_path)
    assert read["device"] == st.st_dev
    assert read["size"] == vfs.f_blocks * vfs.f_frsize
    assert abs(read["free"] - vfs.f_bavail * vfs.f_frsize) < 64 * MIB  # others write meanwhile
    assert str(tmp_path).startswith(read["mount"])
    assert os.stat(read["mount"]).st_dev == st.st_dev
    parent = os.path.dirname(read["mount"])
    assert read["mount"] == "/" or os.stat(parent).st_dev != st.st_dev
