"""Building llama.cpp for the double: cache keys, pinned source, one-line errors (no build)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.doubles import engine
from tests.doubles.engine import EngineBuildError


def test_missing_build_tools_are_one_line_naming_the_debian_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        engine.shutil,
        "which",
        lambda tool: None if tool in ("cmake", "ninja") else real_which(tool),
    )
    with pytest.raises(EngineBuildError) as raised:
        engine.ensure_engine(tmp_path, log=lambda _m: None)
    message = str(raised.value)
    assert "\n" not in message
    assert message == (
        "building llama.cpp needs the Debian packages cmake ninja-build "
        "(apt-get install cmake ninja-build)"
    )


def test_a_source_that_is_not_the_pinned_sdist_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / engine.SDIST_NAME
    fake.write_bytes(b"not the llama-cpp-python sdist")
    monkeypatch.setenv("LABCTL_LLAMA_CPP_SDIST", str(fake))
    with pytest.raises(EngineBuildError, match="is not the pinned 832db069"):
        engine.fetch_sdist(tmp_path, lambda _m: None)


def test_the_cache_key_follows_the_source_the_flags_and_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = engine.engine_key()
    assert key == engine.engine_key() and len(key) == 16
    monkeypatch.setattr(engine, "CMAKE_FLAGS", (*engine.CMAKE_FLAGS, "-DGGML_AVX512=OFF"))
    assert engine.engine_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(engine, "_cpu_flags", lambda: "sse2")
    assert engine.engine_key() != key


def test_a_cache_without_a_finished_build_is_not_an_engine(tmp_path: Path) -> None:
    half = tmp_path / engine.engine_key() / "bin"
    half.mkdir(parents=True)
    (half / "llama-server").write_bytes(b"")
    assert engine.find_engine(tmp_path) is None  # no stamp: the build did not finish
