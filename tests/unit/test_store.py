"""The results database: migrations from every older version, runs kept as they finish."""

from __future__ import annotations

import json
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from provision import __version__, store
from provision.errors import ConfigError
from provision.probe import stats
from provision.probe.facts import GuestFacts
from provision.probe.parse import OllamaMetrics, RunPeaks, RunResult, Sample

VM = store.VmRecord(name="gemma", vmid=9001, node="pve1", cores=4, memory_mib=8192, cpu_type="host")
FACTS = GuestFacts.from_event(
    {
        "vcpus": 4,
        "cpu_model": "AMD EPYC",
        "flags": {"avx2": True},
        "kernel": "6.8.0",
        "mem_total": 8 << 30,
        "ollama_version": "0.32.15",
        "tags_entry": {"name": "gemma2:2b", "digest": "8ccf136fdd52", "size": 1629518495},
    }
)


def a_run(index: int, *, warmup: bool = False, ok: bool = True) -> RunResult:
    samples = [
        Sample(
            t=0.1 * i,
            load1=1.0 + i,
            cpu_pct=90.0,
            busiest_core_pct=100.0,
            mem_total=8 << 30,
            mem_available=(6 << 30) - i * (1 << 20),
            swap_used=0,
            ollama_rss=(2 << 30) + i,
        )
        for i in range(5)
    ]
    return RunResult(
        index=index,
        warmup=warmup,
        ok=ok,
        error=None if ok else "SSH lost",
        metrics=OllamaMetrics(
            eval_count=128,
            eval_duration_ns=8 * 10**9,
            load_duration_ns=2 * 10**9,
            done_reason="length",
        )
        if ok
        else OllamaMetrics(),
        peaks=RunPeaks.from_samples(samples),
        ttft_s=0.4,
        wall_s=8.6,
        load_kind="cold",
        sampler_cpu_s=0.02,
        sampler_wall_s=8.6,
        samples=samples,
    )


def sample_count(conn: sqlite3.Connection, probe_id: int, run_index: int) -> int:
    """How many memory/load samples the database keeps for one run of a probe."""
    row = conn.execute(
        "SELECT count(*) FROM probe_samples s JOIN probe_runs r ON r.id = s.run_id"
        " WHERE r.probe_id = ? AND r.run_index = ?",
        (probe_id, run_index),
    ).fetchone()
    return int(row[0])


def test_a_new_database_is_created_private_at_the_latest_version(tmp_path: Path) -> None:
    conn = store.connect(tmp_path)

    assert store.schema_version(conn) == len(store.MIGRATIONS)
    mode = stat.S_IMODE((tmp_path / "labctl.sqlite").stat().st_mode)
    assert mode & 0o077 == 0


@pytest.mark.parametrize("start", range(len(store.MIGRATIONS)))
def test_every_older_schema_is_migrated_keeping_its_rows(tmp_path: Path, start: int) -> None:
    path = tmp_path / "labctl.sqlite"
    old = sqlite3.connect(path, isolation_level=None)
    store.migrate(old, migrations=store.MIGRATIONS[:start])
    assert store.schema_version(old) == start
    if start >= 1:  # a probe written by an older labctl must survive the upgrade
        old.execute(
            "INSERT INTO probes (started_at, vm_name, labctl_version, model, "
            "options_json) VALUES ('2026-01-01T00:00:00+00:00', 'old', '0.0.1', "
            "'gemma2:2b', '{}')"
        )
    old.close()

    conn = store.connect(tmp_path)

    assert store.schema_version(conn) == len(store.MIGRATIONS)
    names = [r[0] for r in conn.execute("SELECT vm_name FROM probes")]
    assert names == (["old"] if start >= 1 else [])
    store.record_run(conn, store.start_probe(conn, VM, "gemma2:2b", {}, "nonce"), a_run(0))


def test_connecting_again_changes_nothing(tmp_path: Path) -> None:
    store.connect(tmp_path).close()
    conn = store.connect(tmp_path)
    assert store.schema_version(conn) == len(store.MIGRATIONS)


def test_a_database_from_a_newer_labctl_is_refused_with_one_line(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "labctl.sqlite")
    conn.execute(f"PRAGMA user_version = {len(store.MIGRATIONS) + 5}")
    conn.close()

    with pytest.raises(ConfigError, match="newer than this labctl") as raised:
        store.connect(tmp_path)
    assert "upgrade labctl" in str(raised.value)


def test_a_broken_migration_leaves_the_old_version_intact(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None)
    steps = ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y INTEGER); CREATE TABLE a (z);"]

    with pytest.raises(sqlite3.OperationalError):
        store.migrate(conn, migrations=steps)

    assert store.schema_version(conn) == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchone() is None


def test_runs_are_kept_with_the_vm_shape_and_labctl_version(tmp_path: Path) -> None:
    conn = store.connect(tmp_path)
    recorder = store.ProbeRecorder(conn, VM, "gemma2:2b", {"runs": 2}, "nonce")
    recorder.on_facts(FACTS)
    recorder.on_run(a_run(0, warmup=True))
    recorder.on_run(a_run(1))

    # visible to another connection before the probe finishes: each run is committed
    other = store.connect(tmp_path)
    rows = store.list_runs(other, "gemma")
    assert len(rows) == 1
    row = rows[0]
    assert (row["vm_name"], row["node"], row["cores"], row["memory_mib"], row["cpu_type"]) == (
        "gemma",
        "pve1",
        4,
        8192,
        "host",
    )
    assert row["labctl_version"] == __version__ and row["ollama_version"] == "0.32.15"
    assert row["eval_tps"] == 16.0 and row["load_s"] == 2.0 and row["ok"] is True
    assert row["peak_rss_bytes"] == (2 << 30) + 4 and row["peak_load1"] == 5.0
    assert row["avx2"] is True
    assert len(store.list_runs(other, "gemma", include_warmup=True)) == 2
    assert store.list_runs(other, "other-vm") == []
    assert sample_count(other, recorder.probe_id, 1) == 5


def test_a_failed_run_is_kept_with_its_reason_and_no_invented_numbers(tmp_path: Path) -> None:
    conn = store.connect(tmp_path)
    recorder = store.ProbeRecorder(conn, VM, "gemma2:2b", {}, "nonce")
    recorder.on_run(a_run(0))
    recorder.on_run(a_run(1, ok=False))
    recorder.finish("failed", "SSH connection to gemma lost during run 2/2")

    rows = store.list_runs(conn)
    assert [(r["ok"], r["error"]) for r in rows] == [(True, None), (False, "SSH lost")]
    assert rows[1]["eval_tps"] is None and rows[1]["eval_count"] is None
    status = conn.execute("SELECT status, error FROM probes").fetchone()
    assert tuple(status) == ("failed", "SSH connection to gemma lost during run 2/2")


def test_the_agents_cache_bust_method_replaces_the_hosts_guess_when_facts_arrive(
    tmp_path: Path,
) -> None:
    conn = store.connect(tmp_path)
    recorder = store.ProbeRecorder(conn, VM, "gemma2:2b", {}, "nonce")
    recorder.on_facts(replace(FACTS, prompt_cache_bust="nonce-first"))
    recorder.on_run(a_run(0))

    assert store.list_runs(conn)[0]["cache_bust"] == "nonce-first"


def test_an_auto_probe_keeps_how_many_runs_its_median_rests_on_and_their_interval(
    tmp_path: Path,
) -> None:
    conn = store.connect(tmp_path)
    recorder = store.ProbeRecorder(conn, VM, "gemma2:2b", {"runs": "auto", "max_runs": 20}, "n")
    eval_tps = stats.stat([9.0, 9.5, 10.0, 10.2, 10.4, 11.0, 10.1])
    recorder.finish("ok", None, {"eval_tps": eval_tps})
    row = conn.execute(
        "SELECT runs_auto, eval_tps_n, eval_tps_ci_low, eval_tps_ci_high, summary_json"
        " FROM probes WHERE id = ?",
        (recorder.probe_id,),
    ).fetchone()
    assert tuple(row)[:4] == (1, 7, 9.0, 11.0)
    assert json.loads(row["summary_json"])["eval_tps"]["ci_low"] == 9.0
