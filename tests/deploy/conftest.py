"""Fixtures for the deploy tests: the lab (real guest backend + Ollama double mirror)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One ContainerBackend on ldbr30 + the double's mirror on the bridge, for the session."""
    if os.geteuid() != 0:
        pytest.skip("deploying to guests needs root (netns, overlayfs, cgroups)")
    from provision.sim.guests.errors import GuestsUnavailable
    from tests.support.deploy_lab import lab as make_lab

    try:
        with make_lab(tmp_path_factory.mktemp("deploy-lab")) as the_lab:
            yield the_lab
    except GuestsUnavailable as exc:
        pytest.skip(f"guests unavailable: {exc}")
