"""Concurrency levels in the results database: kept from every older schema, read back as the
per-level statistics `labctl results --levels`, CSV and JSON carry."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from provision import store
from provision.probe.concurrency import LevelRound, ThreadLoad, level_stats
from provision.probe.facts import GuestFacts

VM = store.VmRecord(name="gemma", vmid=9001, node="pve1", cores=2, memory_mib=4096, cpu_type="host")


def a_level(index: int, users: int, threads: int | None) -> LevelRound:
    reply = {
        "done": True,
        "total_duration": 3_000_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_duration": 400_000_000,
        "eval_duration": 2_000_000_000,
        "eval_count": 20,
    }
    requests = [
        {"ok": True, "ttft_s": 0.5 + i, "tokens": 20, "gaps_s": [0.1] * 19, "ollama": reply}
        for i in range(users)
    ]
    return LevelRound.from_event(
        {
            "index": index,
            "users": users,
            "repeat": 0,
            "num_thread": threads,
            "wall_s": 4.0,
            "agent_cpu_s": 0.01,
            "sampler": {"samples": 40, "cpu_s": 0.002, "wall_s": 4.0},
            "requests": requests,
        },
        peak_rss=2 << 30,
    )


def keep_levels(conn: sqlite3.Connection) -> int:
    recorder = store.ProbeRecorder(conn, VM, "gemma2:2b", {"concurrency": [1, 2]}, "nonce")
    recorder.on_facts(
        GuestFacts.from_event(
            {
                "vcpus": 2,
                "mem_total": 4 << 30,
                "topology": {"processors": 2, "sockets": 1, "cores": 2, "threads_per_core": 1},
            }
        )
    )
    recorder.on_thread_load(
        ThreadLoad.from_event(
            {
                "num_thread": 2,
                "ok": True,
                "load_duration": 5_000_000_000,
                "wall_s": 6.0,
                "runners": [{"pid": 7, "argv_threads": 2, "argv_parallel": 2, "tasks": 11}],
            }
        )
    )
    recorder.on_level(a_level(0, 1, 2))
    recorder.on_level(a_level(1, 2, 2))
    recorder.finish("ok", num_parallel=2)
    return recorder.probe_id


@pytest.mark.parametrize("start", range(len(store.MIGRATIONS)))
def test_levels_are_kept_in_a_database_migrated_from_every_older_version(
    tmp_path: Path, start: int
) -> None:
    old = sqlite3.connect(tmp_path / "labctl.sqlite", isolation_level=None)
    store.migrate(old, migrations=store.MIGRATIONS[:start])
    if start >= 1:
        old.execute(
            "INSERT INTO probes (started_at, vm_name, labctl_version, model, options_json)"
            " VALUES ('2026-01-01T00:00:00+00:00', 'old', '0.0.1', 'gemma2:2b', '{}')"
        )
    old.close()

    conn = store.connect(tmp_path)
    probe_id = keep_levels(conn)
    rows = store.list_levels(conn)

    assert [(r["probe_id"], r["users"]) for r in rows] == [(probe_id, 1), (probe_id, 2)]
    old_rows = conn.execute("SELECT num_parallel, cpu_cores FROM probes WHERE vm_name = 'old'")
    assert [tuple(r) for r in old_rows] == ([(None, None)] if start >= 1 else [])


def test_a_kept_level_reads_back_as_the_statistics_the_probe_showed(tmp_path: Path) -> None:
    conn = store.connect(tmp_path)
    keep_levels(conn)

    row = store.list_levels(conn, "gemma")[1]

    assert set(row) == set(store.LEVEL_COLUMNS)
    assert row["num_parallel"] == 2 and (row["cpu_sockets"], row["cpu_cores"]) == (1, 2)
    assert row["num_thread"] == 2 and row["runner_threads"] == 2 and row["load_s"] == 5.0
    shown = level_stats([a_level(1, 2, 2)]).to_json()
    for key in ("completed", "failed", "aggregate_tps", "ttft_p95_s", "itl_p50_s"):
        assert row[key] == pytest.approx(shown[key]), key
    assert row["queue_wait_p50_s"] == pytest.approx(0.599)
    assert store.list_levels(conn, "other") == []


def test_an_invalid_point_is_kept_with_its_reason_and_no_levels(tmp_path: Path) -> None:
    conn = store.connect(tmp_path)
    recorder = store.ProbeRecorder(conn, VM, "gemma2:2b", {}, "nonce")
    recorder.finish("invalid", "gemma does not see its shape (nproc says 1 vCPU(s))")

    row = conn.execute("SELECT status, shape_problem FROM probes").fetchone()
    assert tuple(row) == ("invalid", "gemma does not see its shape (nproc says 1 vCPU(s))")
    assert store.list_levels(conn) == []
