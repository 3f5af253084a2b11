"""Fixtures: the Ollama double extracted from its release tarball, served on 127.0.0.1."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doubles import OllamaMirror, prepare_mirror
from tests.support.double_server import (
    MODEL,
    MODEL_BYTES,
    Double,
    MirrorSetup,
    start_double,
    stop_double,
)


@pytest.fixture(scope="session")
def mirror_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MirrorSetup]:
    root = tmp_path_factory.mktemp("mirror")
    release, models = prepare_mirror(root, models={MODEL: MODEL_BYTES})
    with OllamaMirror(root) as mirror:
        yield MirrorSetup(mirror, release, models[0], root)


@pytest.fixture(scope="session")
def installed(mirror_setup: MirrorSetup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release tarball unpacked like the role does (zstd | tar into a prefix)."""
    prefix = tmp_path_factory.mktemp("usr-local")
    subprocess.run(
        ["tar", "--zstd", "-xf", str(mirror_setup.release.tarball), "-C", str(prefix)], check=True
    )
    return prefix


@pytest.fixture
def double(installed: Path, mirror_setup: MirrorSetup, tmp_path: Path) -> Iterator[Double]:
    """A fresh server with an empty models dir, pulling from the local mirror."""
    running = start_double(installed, tmp_path / "models", mirror_setup.mirror.url)
    yield running
    stop_double(running)


@pytest.fixture(scope="module")
def pulled(
    installed: Path, mirror_setup: MirrorSetup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Double]:
    """One server per module with the model already pulled (for the generate tests)."""
    running = start_double(installed, tmp_path_factory.mktemp("models"), mirror_setup.mirror.url)
    status, _ = running.json("POST", "/api/pull", {"model": MODEL, "stream": False})
    assert status == 200
    yield running
    stop_double(running)
