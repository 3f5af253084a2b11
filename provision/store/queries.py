"""Reading runs back: `labctl results`, CSV and JSON."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

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
