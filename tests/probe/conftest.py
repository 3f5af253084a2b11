"""Probe test fixtures of this folder alone: a fixture-replay Ollama, sshds with extra config.

The Ollama TEST DOUBLE (`ollama_double`), a local sshd (`local_sshd`) and the API-only
simulator (`api_lab`) come from tests/support/fixtures. Everything listens on 127.0.0.1 only and
is stopped at the end of its scope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.replay_ollama import FixtureReplayOllama
from tests.support.sshd import LocalSshd, start_sshd, stop_sshd


@pytest.fixture
def replay_ollama() -> Iterator[FixtureReplayOllama]:
    replay = FixtureReplayOllama()
    try:
        yield replay
    finally:
        replay.close()


@pytest.fixture
def make_sshd(tmp_path: Path) -> Iterator[Callable[[str], LocalSshd]]:
    """An sshd with extra config lines (e.g. a session PATH without python3)."""
    started: list[LocalSshd] = []

    def make(extra: str) -> LocalSshd:
        sshd = start_sshd(tmp_path / f"sshd{len(started)}", extra)
        started.append(sshd)
        return sshd

    yield make
    for sshd in started:
        stop_sshd(sshd)
