"""Recording a probe as it runs: the probe row, its facts, each run the moment it ends."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from provision import __version__
from provision.probe.concurrency import LevelRound, ThreadLoad
from provision.probe.facts import GuestFacts
from provision.probe.parse import RunResult
from provision.probe.stats import Stat


@dataclass(frozen=True)
class VmRecord:
    """The VM a probe ran on, as plain values (the CLI fills it from Lab.find())."""

    name: str
    vmid: int | None = None
    node: str | None = None
    cores: int | None = None
    memory_mib: int | None = None
    cpu_type: str | None = None
    labctl_version: str = __version__


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def start_probe(
    conn: sqlite3.Connection, vm: VmRecord, model: str, options: Mapping[str, Any], cache_bust: str
) -> int:
    cursor = conn.execute(
        "INSERT INTO probes (started_at, vm_name, vmid, node, cores, memory_mib, cpu_type,"
        " labctl_version, model, options_json, cache_bust, runs_auto)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            _now(),
            vm.name,
            vm.vmid,
            vm.node,
            vm.cores,
            vm.memory_mib,
            vm.cpu_type,
            vm.labctl_version,
            model,
            json.dumps(dict(options), sort_keys=True),
            cache_bust,
            int(options.get("runs") == "auto"),
        ),
    )
    return int(cursor.lastrowid or 0)


def record_facts(conn: sqlite3.Connection, probe_id: int, facts: GuestFacts) -> None:
    conn.execute(
        "UPDATE probes SET vcpus=?, cpu_model=?, avx2=?, kernel=?, mem_total_bytes=?,"
        " ollama_version=?, model_digest=?, model_size_bytes=?, on_cpu=?, facts_json=?,"
        " cache_bust=COALESCE(?, cache_bust) WHERE id=?",
        (
            facts.vcpus,
            facts.cpu_model,
            facts.has_flag("avx2"),
            facts.kernel,
            facts.mem_total_bytes,
            facts.ollama_version,
            facts.model.digest,
            facts.model.size_bytes,
            facts.ps.on_cpu if facts.ps else None,
            json.dumps(facts.to_json(), sort_keys=True),
            facts.prompt_cache_bust,
            probe_id,
        ),
    )


def record_topology(conn: sqlite3.Connection, probe_id: int, facts: GuestFacts) -> None:
    topology = facts.topology
    if topology is None:
        return
    conn.execute(
        "UPDATE probes SET cpu_sockets=?, cpu_cores=?, cpu_threads_per_core=? WHERE id=?",
        (topology.sockets, topology.cores, topology.threads_per_core, probe_id),
    )


def record_thread_load(conn: sqlite3.Connection, probe_id: int, load: ThreadLoad) -> None:
    """One thread count's load, counted apart from the levels measured after it."""
    runner = load.runners[0] if load.runners else None
    conn.execute(
        "INSERT INTO probe_thread_loads (probe_id, num_thread, ok, error, load_s, wall_s,"
        " runner_argv_threads, runner_tasks, runner_parallel) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            probe_id,
            load.num_thread,
            load.ok,
            load.error,
            load.load_s,
            load.wall_s,
            runner.argv_threads if runner else None,
            runner.tasks if runner else None,
            runner.argv_parallel if runner else None,
        ),
    )


def record_level(conn: sqlite3.Connection, probe_id: int, level: LevelRound) -> int:
    """Commit one repeat of a concurrency level with its requests; returns its row id."""
    with _transaction(conn):
        cursor = conn.execute(
            "INSERT INTO probe_levels (probe_id, level_index, users, repeat, num_thread, wall_s,"
            " agent_cpu_s, sampler_cpu_s, sampler_wall_s, samples, peak_rss_bytes)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                probe_id,
                level.index,
                level.users,
                level.repeat,
                level.num_thread,
                level.wall_s,
                level.agent_cpu_s,
                level.sampler_cpu_s,
                level.sampler_wall_s,
                level.samples,
                level.peak_rss,
            ),
        )
        level_id = int(cursor.lastrowid or 0)
        conn.executemany(
            "INSERT INTO probe_level_requests (level_id, slot, ok, error, ttft_s, queue_wait_s,"
            " eval_count, eval_tps, tokens, gaps_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    level_id,
                    slot,
                    r.ok,
                    r.error,
                    r.ttft_s,
                    r.queue_wait_s,
                    r.eval_count,
                    r.eval_tps,
                    r.tokens,
                    json.dumps(list(r.gaps_s)),
                )
                for slot, r in enumerate(level.requests)
            ],
        )
    return level_id


def record_run(conn: sqlite3.Connection, probe_id: int, run: RunResult) -> int:
    """Commit one finished (or failed) run with its samples; returns its row id."""
    m, p = run.metrics, run.peaks
    row = {
        "probe_id": probe_id,
        "run_index": run.index,
        "warmup": run.warmup,
        "ok": run.ok,
        "error": run.error,
        "oom": run.oom_likely,
        "recorded_at": _now(),
        "started_at": run.started_at,
        "load_kind": run.load_kind,
        "done_reason": m.done_reason,
        "eval_count": m.eval_count,
        "eval_duration_ns": m.eval_duration_ns,
        "prompt_eval_count": m.prompt_eval_count,
        "prompt_eval_duration_ns": m.prompt_eval_duration_ns,
        "load_duration_ns": m.load_duration_ns,
        "total_duration_ns": m.total_duration_ns,
        "eval_tps": run.eval_tps,
        "prompt_tps": run.prompt_tps,
        "ttft_s": run.ttft_s,
        "wall_s": run.wall_s,
        "peak_mem_used_bytes": p.peak_mem_used,
        "min_mem_available_bytes": p.min_mem_available,
        "peak_swap_used_bytes": p.peak_swap_used,
        "peak_rss_bytes": p.peak_rss,
        "peak_load1": p.peak_load1,
        "mean_cpu_pct": p.mean_cpu_pct,
        "peak_busiest_core_pct": p.peak_busiest_core_pct,
        "samples": p.samples,
        "sample_hz": run.sample_hz,
        "sampler_cpu_pct": run.sampler_cpu_pct,
    }
    with _transaction(conn):
        cursor = conn.execute(
            f"INSERT INTO probe_runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
        run_id = int(cursor.lastrowid or 0)
        conn.executemany(
            "INSERT INTO probe_samples (run_id, t, load1, cpu_pct, busiest_core_pct,"
            " mem_used_bytes, mem_available_bytes, swap_used_bytes, ollama_rss_bytes)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    run_id,
                    s.t,
                    s.load1,
                    s.cpu_pct,
                    s.busiest_core_pct,
                    s.mem_used,
                    s.mem_available,
                    s.swap_used,
                    s.ollama_rss,
                )
                for s in run.samples
            ],
        )
    return run_id


class _transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def finish_probe(
    conn: sqlite3.Connection,
    probe_id: int,
    status: str,
    error: str | None,
    summary: Mapping[str, Stat | None] | None = None,
    *,
    num_parallel: int | None = None,
) -> None:
    summary_json = (
        json.dumps({k: asdict(v) if v else None for k, v in summary.items()})
        if summary is not None
        else None
    )
    eval_tps = summary.get("eval_tps") if summary is not None else None
    conn.execute(
        "UPDATE probes SET finished_at=?, status=?, error=?, summary_json=?, eval_tps_n=?, "
        "eval_tps_ci_low=?, eval_tps_ci_high=?, num_parallel=?, shape_problem=? WHERE id=?",
        (
            _now(),
            status,
            error,
            summary_json,
            eval_tps.n if eval_tps else None,
            eval_tps.ci_low if eval_tps else None,
            eval_tps.ci_high if eval_tps else None,
            num_parallel,
            error if status == "invalid" else None,
            probe_id,
        ),
    )


class ProbeRecorder:
    """A ProbeListener that writes facts and each run to the database as they arrive."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        vm: VmRecord,
        model: str,
        options: Mapping[str, Any],
        cache_bust: str,
    ) -> None:
        self.conn = conn
        self.probe_id = start_probe(conn, vm, model, options, cache_bust)

    def on_facts(self, facts: GuestFacts) -> None:
        record_facts(self.conn, self.probe_id, facts)
        record_topology(self.conn, self.probe_id, facts)

    def on_run(self, run: RunResult) -> None:
        record_run(self.conn, self.probe_id, run)

    def on_level(self, level: LevelRound) -> None:
        record_level(self.conn, self.probe_id, level)

    def on_thread_load(self, load: ThreadLoad) -> None:
        record_thread_load(self.conn, self.probe_id, load)

    def finish(
        self,
        status: str,
        error: str | None = None,
        summary: Mapping[str, Stat | None] | None = None,
        *,
        num_parallel: int | None = None,
    ) -> None:
        """status: ok | failed | oom | invalid (the guest did not see the VM's shape)."""
        finish_probe(self.conn, self.probe_id, status, error, summary, num_parallel=num_parallel)
