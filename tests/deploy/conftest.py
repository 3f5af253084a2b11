"""Fixtures for the deploy tests: the lab (real guest backend + Ollama double mirror)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.*` importable however pytest is started
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One ContainerBackend on ldbr30 + the double's mirror on the bridge, for the session."""
    if os.geteuid() != 0:
        pytest.skip("deploying to guests needs root (netns, overlayfs, cgroups)")
    from provision.sim.guests.errors import GuestsUnavailable
    from tests.deploy.harness import lab as make_lab

    try:
        with make_lab(tmp_path_factory.mktemp("deploy-lab")) as the_lab:
            yield the_lab
    except GuestsUnavailable as exc:
        pytest.skip(f"guests unavailable: {exc}")
