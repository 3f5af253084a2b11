"""record_probe: one probe kept in the results database, its connection closed whatever happens."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from provision import store
from provision.errors import ModelDoesNotFit, ProbeError
from provision.probe import run as probe_run
from provision.probe.record import identity_options, kept_options, record_probe
from provision.probe.result import ProbeOptions, ProbeResult
from provision.progress import NullReporter

VM = store.VmRecord(name="gemma", vmid=101, node="pve1", cores=2, memory_mib=4096, cpu_type="host")


@pytest.fixture()
def connections(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Every connection store.connect opens, to check afterwards that it was closed."""
    opened: list[sqlite3.Connection] = []
    real_connect = store.connect

    def connect(state_dir: Path) -> sqlite3.Connection:
        opened.append(real_connect(state_dir))
        return opened[-1]

    monkeypatch.setattr(store, "connect", connect)
    return opened


def _closed(connection: sqlite3.Connection) -> bool:
    try:
        connection.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def _probe_status(state_dir: Path, probe_id: int) -> tuple[str, str | None]:
    with sqlite3.connect(store.db_path(state_dir)) as db:
        row = db.execute("SELECT status, error FROM probes WHERE id = ?", (probe_id,)).fetchone()
    return row[0], row[1]


def _probe_returns(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> None:
    def fake_probe(
        address: Any,
        options: ProbeOptions,
        reporter: Any,
        listener: Any = None,
        expected: Any = None,
    ) -> ProbeResult:
        if isinstance(outcome, BaseException):
            raise outcome
        return ProbeResult(vm="gemma", options=options, complete=True)

    monkeypatch.setattr(probe_run, "probe", fake_probe)


def test_a_successful_probe_is_kept_as_ok_and_its_connection_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connections: list[sqlite3.Connection]
) -> None:
    _probe_returns(monkeypatch, None)
    recorded = record_probe(tmp_path, VM, object(), ProbeOptions(), NullReporter())
    assert recorded.completed().vm == "gemma"
    assert _probe_status(tmp_path, recorded.probe_id) == ("ok", None)
    assert len(connections) == 1 and _closed(connections[0])


def test_a_model_that_does_not_fit_is_kept_as_oom_and_raised_by_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connections: list[sqlite3.Connection]
) -> None:
    _probe_returns(monkeypatch, ModelDoesNotFit("gemma2:2b does not fit", figure="1.2 GiB"))
    recorded = record_probe(tmp_path, VM, object(), ProbeOptions(), NullReporter())
    assert recorded.result is None and recorded.did_not_fit is not None
    assert _probe_status(tmp_path, recorded.probe_id) == ("oom", "gemma2:2b does not fit")
    with pytest.raises(ModelDoesNotFit):
        recorded.completed()
    assert _closed(connections[0])


@pytest.mark.parametrize(
    "error",
    [ProbeError("ollama is not running"), KeyboardInterrupt()],
    ids=["probe-error", "ctrl-c"],
)
def test_a_failed_probe_is_kept_as_failed_raised_and_its_connection_closed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    connections: list[sqlite3.Connection],
    error: BaseException,
) -> None:
    _probe_returns(monkeypatch, error)
    with pytest.raises(type(error)):
        record_probe(tmp_path, VM, object(), ProbeOptions(), NullReporter())
    assert _closed(connections[0])
    with sqlite3.connect(store.db_path(tmp_path)) as db:
        status, message = db.execute("SELECT status, error FROM probes").fetchone()
    assert status == "failed"
    assert message == (str(error) or "KeyboardInterrupt")


def test_an_unexpected_error_still_closes_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connections: list[sqlite3.Connection]
) -> None:
    _probe_returns(monkeypatch, RuntimeError("bug"))
    with pytest.raises(RuntimeError):
        record_probe(tmp_path, VM, object(), ProbeOptions(), NullReporter())
    assert _closed(connections[0])


def test_the_options_kept_name_the_prompt_by_length_and_the_sweep_identity_by_hash() -> None:
    short, other = ProbeOptions(prompt="abc"), ProbeOptions(prompt="xyz")
    assert kept_options(short)["prompt_chars"] == 3 and "prompt" not in kept_options(short)
    assert kept_options(short) == kept_options(other)
    assert identity_options(short) != identity_options(other)


@pytest.mark.parametrize("check", [True, False])
def test_the_vms_shape_is_what_the_guest_must_see_unless_the_check_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: bool
) -> None:
    from provision.probe.shape_check import ExpectedShape

    asked: list[Any] = []

    def fake_probe(
        address: Any,
        options: ProbeOptions,
        reporter: Any,
        listener: Any = None,
        expected: Any = None,
    ) -> ProbeResult:
        asked.append(expected)
        return ProbeResult(vm="gemma", options=options, complete=True)

    monkeypatch.setattr(probe_run, "probe", fake_probe)
    record_probe(tmp_path, VM, object(), ProbeOptions(check_shape=check), NullReporter())

    assert asked == [ExpectedShape(cores=2, memory_mib=4096) if check else None]


def test_an_invalid_shape_is_kept_as_invalid_and_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provision.errors import InvalidShape

    _probe_returns(monkeypatch, InvalidShape("invalid point: gemma does not see its shape"))
    with pytest.raises(InvalidShape):
        record_probe(tmp_path, VM, object(), ProbeOptions(), NullReporter())
    with sqlite3.connect(store.db_path(tmp_path)) as db:
        row = db.execute("SELECT status, shape_problem FROM probes").fetchone()
    assert tuple(row) == ("invalid", "invalid point: gemma does not see its shape")
