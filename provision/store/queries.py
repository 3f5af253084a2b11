"""Reading runs back: `labctl results`, CSV and JSON."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from provision.probe.concurrency import LevelRound, RequestResult, group_levels
from provision.store.schema import connect

RESULT_COLUMNS = (
    "probe_id",
    "vm_name",
    "node",
    "cores",
    "memory_mib",
    "cpu_type",
    "labctl_version",
    "model",
    "ollama_version",
    "started_at",
    "run_index",
    "ok",
    "error",
    "oom",
    "load_kind",
    "eval_tps",
    "prompt_tps",
    "ttft_s",
    "load_s",
    "eval_count",
    "prompt_eval_count",
    "done_reason",
    "peak_mem_used_bytes",
    "peak_rss_bytes",
    "peak_swap_used_bytes",
    "peak_load1",
    "mean_cpu_pct",
    "peak_busiest_core_pct",
    "sample_hz",
    "sampler_cpu_pct",
    "avx2",
    "cache_bust",
)


def list_runs(
    conn: sqlite3.Connection, vm: str | None = None, *, include_warmup: bool = False
) -> list[dict[str, Any]]:
    """Measured runs, oldest first, with their VM's shape: one dict per run (RESULT_COLUMNS)."""
    where, params = ["1 = 1"], []
    if vm:
        where.append("p.vm_name = ?")
        params.append(vm)
    if not include_warmup:
        where.append("r.warmup = 0")
    rows = conn.execute(
        "SELECT r.probe_id, p.vm_name, p.node, p.cores, p.memory_mib, p.cpu_type,"
        " p.labctl_version, p.model, p.ollama_version, p.started_at, r.run_index, r.ok,"
        " r.error, r.oom, r.load_kind, r.eval_tps, r.prompt_tps, r.ttft_s,"
        " r.load_duration_ns / 1e9 AS load_s, r.eval_count, r.prompt_eval_count,"
        " r.done_reason, r.peak_mem_used_bytes, r.peak_rss_bytes, r.peak_swap_used_bytes,"
        " r.peak_load1, r.mean_cpu_pct, r.peak_busiest_core_pct, r.sample_hz,"
        " r.sampler_cpu_pct, p.avx2, p.cache_bust"
        " FROM probe_runs r JOIN probes p ON p.id = r.probe_id"
        f" WHERE {' AND '.join(where)} ORDER BY p.id, r.run_index",
        params,
    ).fetchall()
    return [{k: _plain(k, row[k]) for k in RESULT_COLUMNS} for row in rows]


def kept_runs(
    state_dir: Path, vm: str | None = None, *, include_warmup: bool = False
) -> list[dict[str, Any]]:
    """list_runs on a connection of its own, closed before returning."""
    conn = connect(state_dir)
    try:
        return list_runs(conn, vm, include_warmup=include_warmup)
    finally:
        conn.close()


def _plain(key: str, value: Any) -> Any:
    if key in ("ok", "oom", "avx2") and value is not None:
        return bool(value)
    return value


# -- concurrency levels -------------------------------------------------------------------

_LEVEL_PROBE_FIELDS = (
    "vm_name",
    "cores",
    "memory_mib",
    "cpu_type",
    "model",
    "started_at",
    "status",
    "num_parallel",
    "cpu_sockets",
    "cpu_cores",
    "cpu_threads_per_core",
)
_LEVEL_STAT_FIELDS = (
    "users",
    "repeats",
    "completed",
    "failed",
    "aggregate_tps",
    "tps_per_user_p50",
    "ttft_p50_s",
    "ttft_p95_s",
    "ttft_max_s",
    "itl_p50_s",
    "itl_p95_s",
    "queue_wait_p50_s",
    "queue_wait_max_s",
    "agent_cpu_pct",
    "sampler_cpu_pct",
)
LEVEL_COLUMNS = (
    "probe_id",
    *_LEVEL_PROBE_FIELDS,
    "num_thread",
    "runner_threads",
    "load_s",
    *_LEVEL_STAT_FIELDS,
    "peak_rss_bytes",
)


def list_levels(conn: sqlite3.Connection, vm: str | None = None) -> list[dict[str, Any]]:
    """One row per concurrency level (users x thread count) of each probe, oldest first: the
    statistics of provision/probe/concurrency.level_stats over the level's stored repeats.

    This is the per-level data a capacity question starts from (LEVEL_COLUMNS)."""
    where, params = "", []
    if vm:
        where, params = " WHERE p.vm_name = ?", [vm]
    probes = conn.execute(
        "SELECT p.id, p.vm_name, p.cores, p.memory_mib, p.cpu_type, p.model, p.started_at,"
        " p.status, p.num_parallel, p.cpu_sockets, p.cpu_cores, p.cpu_threads_per_core"
        " FROM probes p WHERE EXISTS (SELECT 1 FROM probe_levels l WHERE l.probe_id = p.id)"
        + where.replace(" WHERE", " AND")
        + " ORDER BY p.id",
        params,
    ).fetchall()
    rows: list[dict[str, Any]] = []
    for probe in probes:
        loads = {
            load["num_thread"]: load
            for load in conn.execute(
                "SELECT num_thread, load_s, runner_argv_threads FROM probe_thread_loads"
                " WHERE probe_id = ? ORDER BY id",
                (probe["id"],),
            )
        }
        for stats in group_levels(_stored_rounds(conn, int(probe["id"]))):
            load = loads.get(stats.num_thread)
            row = {
                "probe_id": probe["id"],
                **{k: probe[k] for k in _LEVEL_PROBE_FIELDS},
                "num_thread": stats.num_thread,
                "runner_threads": load["runner_argv_threads"] if load else None,
                "load_s": load["load_s"] if load else None,
            }
            data = stats.to_json()
            row.update({k: data[k] for k in _LEVEL_STAT_FIELDS})
            row["peak_rss_bytes"] = stats.peak_rss
            rows.append(row)
    return rows


def _stored_rounds(conn: sqlite3.Connection, probe_id: int) -> list[LevelRound]:
    rounds = []
    for level in conn.execute(
        "SELECT * FROM probe_levels WHERE probe_id = ? ORDER BY level_index", (probe_id,)
    ).fetchall():
        requests = tuple(
            RequestResult(
                ok=bool(r["ok"]),
                error=r["error"],
                ttft_s=r["ttft_s"],
                queue_wait_s=r["queue_wait_s"],
                eval_count=r["eval_count"],
                eval_tps=r["eval_tps"],
                tokens=int(r["tokens"]),
                gaps_s=tuple(float(g) for g in json.loads(r["gaps_json"] or "[]")),
            )
            for r in conn.execute(
                "SELECT * FROM probe_level_requests WHERE level_id = ? ORDER BY slot",
                (level["id"],),
            )
        )
        rounds.append(
            LevelRound(
                index=int(level["level_index"]),
                users=int(level["users"]),
                repeat=int(level["repeat"]),
                num_thread=level["num_thread"],
                wall_s=float(level["wall_s"]),
                agent_cpu_s=level["agent_cpu_s"],
                sampler_cpu_s=level["sampler_cpu_s"],
                sampler_wall_s=level["sampler_wall_s"],
                samples=int(level["samples"] or 0),
                requests=requests,
                peak_rss=level["peak_rss_bytes"],
            )
        )
    return rounds


def kept_levels(state_dir: Path, vm: str | None = None) -> list[dict[str, Any]]:
    """list_levels on a connection of its own, closed before returning."""
    conn = connect(state_dir)
    try:
        return list_levels(conn, vm)
    finally:
        conn.close()
