"""labctl's results database: SQLite at <state>/labctl.sqlite, schema versioned by migrations.

MIGRATIONS is an append-only list of SQL scripts; script i brings the schema from version i to
i + 1 and the version lives in `PRAGMA user_version`. Never edit a released migration: append a
new one. Each probe run is committed the moment it finishes, so an interrupted probe keeps the
runs it finished.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provision import __version__
from provision.errors import ConfigError
from provision.probe.parse import GuestFacts, RunResult, Stat

DB_NAME = "labctl.sqlite"

MIGRATIONS: list[str] = [
    # v1: probes and their runs
    """
    CREATE TABLE probes (
        id INTEGER PRIMARY KEY,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL DEFAULT 'running',  -- running | ok | failed | oom
        error TEXT,
        vm_name TEXT NOT NULL,
        vmid INTEGER,
        node TEXT,
        cores INTEGER,
        memory_mib INTEGER,
        cpu_type TEXT,
        labctl_version TEXT NOT NULL,
        model TEXT NOT NULL,
        options_json TEXT NOT NULL,
        cache_bust TEXT,
        vcpus INTEGER,
        cpu_model TEXT,
        avx2 INTEGER,
        kernel TEXT,
        mem_total_bytes INTEGER,
        ollama_version TEXT,
        model_digest TEXT,
        model_size_bytes INTEGER,
        on_cpu INTEGER,
        facts_json TEXT,
        summary_json TEXT
    );
    CREATE INDEX probes_by_vm ON probes (vm_name, started_at);
    CREATE TABLE probe_runs (
        id INTEGER PRIMARY KEY,
        probe_id INTEGER NOT NULL REFERENCES probes (id) ON DELETE CASCADE,
        run_index INTEGER NOT NULL,
        warmup INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT,
        oom INTEGER NOT NULL DEFAULT 0,
        recorded_at TEXT NOT NULL,
        started_at REAL,
        load_kind TEXT,
        done_reason TEXT,
        eval_count INTEGER,
        eval_duration_ns INTEGER,
        prompt_eval_count INTEGER,
        prompt_eval_duration_ns INTEGER,
        load_duration_ns INTEGER,
        total_duration_ns INTEGER,
        eval_tps REAL,
        prompt_tps REAL,
        ttft_s REAL,
        wall_s REAL,
        peak_mem_used_bytes INTEGER,
        min_mem_available_bytes INTEGER,
        peak_swap_used_bytes INTEGER,
        peak_rss_bytes INTEGER,
        peak_load1 REAL,
        mean_cpu_pct REAL,
        peak_busiest_core_pct REAL,
        samples INTEGER,
        sample_hz REAL,
        sampler_cpu_pct REAL,
        UNIQUE (probe_id, run_index)
    );
    """,
    # v2: the samples behind each run's peaks, for plots of a run over time
    """
    CREATE TABLE probe_samples (
        run_id INTEGER NOT NULL REFERENCES probe_runs (id) ON DELETE CASCADE,
        t REAL NOT NULL,
        load1 REAL,
        cpu_pct REAL,
        busiest_core_pct REAL,
        mem_used_bytes INTEGER,
        mem_available_bytes INTEGER,
        swap_used_bytes INTEGER,
        ollama_rss_bytes INTEGER
    );
    CREATE INDEX probe_samples_by_run ON probe_samples (run_id, t);
    """,
    # v3: sweeps (owner: provision/sweep/db.py) and each shape they measured
    """
    CREATE TABLE sweeps (
        id TEXT PRIMARY KEY,                 -- what users type: labctl report ID
        identity TEXT NOT NULL,              -- sha256 of vm + space + targets + probe options
        vm TEXT NOT NULL,
        spec_json TEXT NOT NULL,             -- space, targets, probe options, strategy
        original_shape TEXT,                 -- JSON shape of the VM before the sweep touched it
        status TEXT NOT NULL,                -- running | done | interrupted | failed
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        labctl_version TEXT NOT NULL
    );
    CREATE INDEX sweeps_by_identity ON sweeps (identity, created_at);
    CREATE TABLE sweep_points (
        sweep_id TEXT NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,                -- measurement order within the sweep
        cores INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        cpu_type TEXT NOT NULL,
        status TEXT NOT NULL,                -- ok | oom | failed
        eval_tps REAL,
        ttft_s REAL,
        mem_total_mib INTEGER,
        peak_used_mib INTEGER,
        error TEXT NOT NULL DEFAULT '',
        rebooted INTEGER NOT NULL DEFAULT 0,
        worker TEXT NOT NULL DEFAULT '',
        duration_s REAL,
        probe_id INTEGER REFERENCES probes (id) ON DELETE SET NULL,
        details_json TEXT NOT NULL DEFAULT '{}',
        measured_at TEXT NOT NULL,
        PRIMARY KEY (sweep_id, cores, memory_mib, cpu_type)
    );
    """,
]


def db_path(state_dir: Path) -> Path:
    return Path(state_dir) / DB_NAME


def connect(state_dir: Path) -> sqlite3.Connection:
    """Open (creating if needed) the results database and bring its schema up to date."""
    path = db_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        path.touch(mode=0o600)
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA journal_mode = WAL")  # probe and sweep may write at the same time
        migrate(conn, where=str(path))
    except sqlite3.DatabaseError as error:
        raise ConfigError(f"results database {path} is unusable: {error}") from None
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(
    conn: sqlite3.Connection,
    *,
    where: str = "the results database",
    migrations: list[str] | None = None,
) -> int:
    """Apply the migrations the database lacks, each atomically; returns the final version."""
    steps = MIGRATIONS if migrations is None else migrations
    while True:
        version = schema_version(conn)
        if version > len(steps):
            raise ConfigError(
                f"{where} has schema version {version}, newer than this labctl "
                f"({__version__}) knows ({len(steps)})",
                hint="upgrade labctl",
            )
        if version == len(steps):
            return version
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{steps[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
            )
        except sqlite3.OperationalError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if schema_version(conn) == version:  # not a concurrent migrator: a real failure
                raise


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
        " labctl_version, model, options_json, cache_bust) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
) -> None:
    summary_json = (
        json.dumps({k: asdict(v) if v else None for k, v in summary.items()})
        if summary is not None
        else None
    )
    conn.execute(
        "UPDATE probes SET finished_at=?, status=?, error=?, summary_json=? WHERE id=?",
        (_now(), status, error, summary_json, probe_id),
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

    def on_run(self, run: RunResult) -> None:
        record_run(self.conn, self.probe_id, run)

    def finish(
        self,
        status: str,
        error: str | None = None,
        summary: Mapping[str, Stat | None] | None = None,
    ) -> None:
        finish_probe(self.conn, self.probe_id, status, error, summary)


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
